"""What an evaluation returns: each model's lm-eval result blocks, and the trade-off between
them (the figures :mod:`mergemed.evaluation.scores` computes)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from mergemed.evaluation.scores import Score, TradeOff
from mergemed.evaluation.suites import Member


@dataclass
class ModelEvaluation:
    """One model's results: lm-eval's own result blocks per task, and where they came from."""

    label: str
    role: str
    source: str
    weights_hash: str
    lm_eval: dict[str, Any] = field(default_factory=dict)
    """``{"results", "versions", "n-samples", "configs", "higher_is_better"}`` as lm-eval
    returns them, merged over the tasks evaluated now and those read from the store."""
    cached: list[str] = field(default_factory=list)
    evaluated: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)
    """task -> what was adapted or is worth knowing (capped new tokens, truncated prompts)."""
    settings: dict[str, Any] = field(default_factory=dict)
    task_seconds: dict[str, float | None] = field(default_factory=dict)
    """task -> seconds its scoring took: now, or (a task read from the store) when it was
    computed; None where the store has no timing. What a cold run of these tasks costs."""

    def score(self, task: str) -> Score | None:
        """The task's primary metric, or None if it was not scored."""
        if task not in self.lm_eval.get("results", {}):
            return None
        return primary_score(
            self.lm_eval["results"][task], self.lm_eval.get("configs", {}).get(task, {})
        )

    def size(self, task: str) -> int | None:
        """How many documents the task was scored on (lm-eval's effective ``n-samples``)."""
        counts = self.lm_eval.get("n-samples", {}).get(task) or {}
        value = (
            counts.get("effective", counts.get("original")) if isinstance(counts, dict) else None
        )
        return int(value) if isinstance(value, int) and value > 0 else None

    def samples(self, task: str) -> tuple[list[int], list[Any]] | None:
        """``(doc_ids, values)`` of the task's primary metric per document, or None when
        per-sample results were not kept (results stored by an older mergemed)."""
        per_sample = self.lm_eval.get("per_sample", {}).get(task) or {}
        config = self.lm_eval.get("configs", {}).get(task) or {}
        metrics = [m.get("metric") for m in config.get("metric_list") or [] if isinstance(m, dict)]
        keys = [k for k in per_sample if k != "doc_id"]
        for metric in [*metrics, None]:
            for key in keys:
                if metric is None or key.partition(",")[0] == metric:
                    return list(per_sample["doc_id"]), list(per_sample[key])
        return None


@dataclass
class EvaluationReport:
    """Everything ``mergemed evaluate`` shows and writes."""

    models: list[ModelEvaluation]
    members: list[Member]
    trade_off: TradeOff
    seconds: float
    store_path: str | None
    prompt_format: str = ""
    """How the comparison's prompts were formatted (one line; see :mod:`prompt_format`)."""

    def as_dict(self) -> dict[str, Any]:
        return {
            "models": {
                m.label: {
                    "role": m.role,
                    "source": m.source,
                    "weights_sha256": m.weights_hash,
                    "settings": m.settings,
                    "cached_tasks": m.cached,
                    "evaluated_tasks": m.evaluated,
                    "skipped_tasks": m.skipped,
                    "notes": m.notes,
                    "task_seconds": {
                        t: None if v is None else round(v, 3) for t, v in m.task_seconds.items()
                    },
                    "lm_eval": m.lm_eval,
                }
                for m in self.models
            },
            "members": [
                {"name": m.name, "kind": m.kind, "suite": m.suite, "tasks": list(m.tasks)}
                for m in self.members
            ],
            "summary": self.trade_off.as_dict(),
            "seconds": round(self.seconds, 3),
            "results_store": self.store_path,
            "prompt_format": self.prompt_format,
        }


def primary_score(block: Mapping[str, Any], config: Mapping[str, Any]) -> Score | None:
    """A task's headline number: the first metric of its ``metric_list`` (first filter)."""
    metrics = [
        m["metric"] for m in config.get("metric_list") or [] if isinstance(m.get("metric"), str)
    ]
    keys = [k for k in block if "," in k and not k.split(",", 1)[0].endswith("_stderr")]
    keys = [k for k in keys if isinstance(block[k], (int, float))]
    for metric in [*metrics, None]:
        for key in keys:
            name, _, filter_name = key.partition(",")
            if metric is None or name == metric:
                stderr = block.get(f"{name}_stderr,{filter_name}")
                known = isinstance(stderr, (int, float))
                return Score(float(block[key]), float(stderr) if known else None)
    return None
