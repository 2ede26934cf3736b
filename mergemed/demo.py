"""``mergemed demo``: the whole workflow on tiny models, on a CPU, offline, in a few minutes.

1. a tokenizer trained on the shipped general text and a tiny Llama-style base;
2. ``train cpt``: the base continually pretrained on PubMedQA abstracts mixed 1:9 with general
   text -> the "clinical" parent;
3. ``train sft``: the base instruction-tuned (LoRA) on PubMedQA question -> answer records in
   a chat template -> the "instruct" parent;
4. ``grid``: layer-wise SLERP schedules from instruct (t = 0) towards clinical, scored on
   PubMedQA (domain gain) and an instruction-following set (forgetting) against both parents;
5. ``evaluate``: the best candidate, merged, against both parents;
6. ``card``: its model card, with the numbers of step 5.

Every step calls the library function of its command (no demo-only code path). Tiny models
score near chance: the demo shows the workflow, not medical skill.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console

STAGES = (
    "tokenizer and base model",
    "continual pretraining (train cpt)",
    "instruction tuning (train sft)",
    "schedule search (grid)",
    "evaluation of the best candidate",
    "model card",
)
TASKS = ["mm_pubmedqa", "ifeval_general"]


def tiny_example_recipe_text() -> str:
    """The bundled tiny recipe (also shipped as ``recipes/tiny_example.yaml``)."""
    return resources.files("mergemed").joinpath("data/tiny_example.yaml").read_text()


def _data(*parts: str) -> Path:
    return Path(str(resources.files("mergemed").joinpath(*parts)))


@dataclass
class DemoResult:
    """What the demo made, and how long each stage took."""

    folder: Path
    seconds: dict[str, float] = field(default_factory=dict)
    outputs: dict[str, Path] = field(default_factory=dict)
    best: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> str:
        width = max(len(stage) for stage in self.seconds)
        lines = [f"  {stage:<{width}}  {seconds:6.1f} s" for stage, seconds in self.seconds.items()]
        lines.append(f"  {'total':<{width}}  {sum(self.seconds.values()):6.1f} s")
        where = [f"  {name}: {path}" for name, path in self.outputs.items()]
        gain = (self.best.get("domain_gain") or {}).get("value")
        forgetting = (self.best.get("forgetting") or {}).get("value")
        chosen = (
            f"best schedule: trial {self.best.get('trial')} ({self.best.get('choice')}), "
            f"domain gain {gain:+.3f}, forgetting {forgetting:+.3f}"
            if gain is not None and forgetting is not None
            else f"best schedule: trial {self.best.get('trial')}"
        )
        caveat = (
            "These models are tiny and trained for seconds: they score near chance. The demo "
            "shows the workflow (train -> merge -> search -> evaluate -> card), not medical skill."
        )
        return "\n".join(["stages:", *lines, chosen, "outputs:", *where, caveat])


def _cpt_config(base: Path, output: Path, steps: int) -> dict[str, Any]:
    return {
        "kind": "cpt",
        "model": {"path": str(base)},
        "data": {
            "sources": [
                {
                    "name": "general",
                    "path": str(_data("data", "devils_dictionary.txt")),
                    "weight": 9,
                },
                {
                    "name": "medical",
                    "path": str(_data("evaluations", "data", "pubmedqa", "train.jsonl")),
                    "text_field": "contexts",
                    "weight": 1,
                },
            ],
            "sequence_length": 256,
            "held_out_fraction": 0.05,
        },
        "training": {
            "max_steps": steps,
            "micro_batch_size": 4,
            "learning_rate": 1.0e-3,
            "eval_steps": steps,
            "save_steps": steps,
            "logging_steps": max(1, steps // 4),
        },
        "output": {"dir": str(output)},
    }


def _sft_config(base: Path, output: Path, steps: int) -> dict[str, Any]:
    return {
        "kind": "sft",
        "model": {"path": str(base)},
        "data": {
            "path": str(_data("evaluations", "data", "pubmedqa", "train.jsonl")),
            "format": "pubmedqa",
            "sequence_length": 1024,
            "held_out_fraction": 0.02,
        },
        "training": {
            "max_steps": steps,
            "micro_batch_size": 2,
            "learning_rate": 1.0e-3,
            "eval_steps": steps,
            "save_steps": steps,
            "logging_steps": max(1, steps // 3),
        },
        "lora": {"r": 8, "alpha": 16},
        "output": {"dir": str(output)},
    }


def _space(instruct: Path, clinical: Path, limit: int) -> dict[str, Any]:
    return {
        "recipe": {
            "merge_method": "slerp",
            "base_model": str(instruct),
            "models": [{"model": str(instruct)}, {"model": str(clinical)}],
            "parameters": {
                "t": [{"filter": "self_attn", "value": [0.1, 0.5, 0.1]}, {"value": 0.5}]
            },
        },
        "vary": {
            "attention_t": {
                "path": "parameters.t.0.value",
                "values": [[0.1, 0.5, 0.1], [0.5, 0.9, 0.5]],
            },
            "rest_t": {"path": "parameters.t.1.value", "values": [0.3, 0.7]},
        },
        "score": {
            "tasks": TASKS,
            "limit": limit,
            "clinical": str(clinical),
            "instruct": str(instruct),
            "settings": {"gen_kwargs": "max_gen_toks=32"},
        },
        "objectives": ["domain_gain", "forgetting"],
        "strategy": "grid",
    }


def run_demo(
    workdir: str | Path = "demo_out",
    console: Console | None = None,
    *,
    cpt_steps: int = 40,
    sft_steps: int = 12,
    limit: int = 24,
) -> DemoResult:
    """Run the whole workflow in ``workdir`` (reusing any stage already finished there).

    Returns:
        A :class:`DemoResult`: per-stage seconds, the outputs and the chosen schedule.
    """
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    console = console or Console(stderr=True)
    folder = Path(workdir).absolute()
    folder.mkdir(parents=True, exist_ok=True)
    result = DemoResult(folder)
    steps: list[Callable[[], None]] = []
    state: dict[str, Any] = {}

    def base_model() -> None:
        from mergemed.testing import build_tokenizer, make_random_model

        if not (folder / "base" / "config.json").is_file():
            tokenizer = build_tokenizer(
                folder / "tokenizer", text_path=_data("data", "devils_dictionary.txt")
            )
            make_random_model(
                folder / "base", "llama-eval", seed=0, tokenizer_dir=tokenizer, num_layers=4
            )
        result.outputs["base model"] = folder / "base"

    def cpt() -> None:
        from mergemed.train.config import load_train_config
        from mergemed.train.cpt import train_cpt

        output = folder / "clinical"
        if not (output / "training.json").is_file():
            config = load_train_config(_cpt_config(folder / "base", output, cpt_steps), "cpt")
            train_cpt(config, progress=False)
        result.outputs["clinical parent (cpt)"] = output

    def sft() -> None:
        from mergemed.train.config import load_train_config
        from mergemed.train.sft import train_sft

        output = folder / "instruct"
        if not (output / "training.json").is_file():
            config = load_train_config(_sft_config(folder / "base", output, sft_steps), "sft")
            train_sft(config, progress=False)
        result.outputs["instruct parent (sft)"] = output

    def grid() -> None:
        from mergemed.search.export import ranked_trials
        from mergemed.search.plot import plot_front
        from mergemed.search.study import leaderboard, run_search

        space = folder / "space.yaml"
        space.write_text(
            yaml.safe_dump(_space(folder / "instruct", folder / "clinical", limit), sort_keys=False)
        )
        run = run_search(space, folder / "grid")
        board = leaderboard(run)
        (folder / "leaderboard.json").write_text(json.dumps(board, indent=2, default=str) + "\n")
        best = ranked_trials(board)[0]
        plot_front(board, folder / "pareto.png", best)
        state.update(run=run, best=best)
        result.best = best
        result.outputs["leaderboard"] = folder / "leaderboard.json"
        result.outputs["Pareto front"] = folder / "pareto.png"

    def evaluation() -> None:
        from mergemed.evaluation import evaluate
        from mergemed.search.export import export_candidates

        (best_folder,) = export_candidates(state["run"], folder / "best", top=1, overwrite=True)
        evaluate(
            best_folder,
            tasks=TASKS,
            limit=limit,
            against={"clinical": folder / "clinical", "instruct": folder / "instruct"},
            store=folder / "results.sqlite",
            json_path=folder / "eval.json",
            gen_kwargs="max_gen_toks=32",
        )
        state["best_folder"] = best_folder
        result.outputs["best candidate"] = best_folder
        result.outputs["evaluation"] = folder / "eval.json"

    def card() -> None:
        from mergemed.publish import write_card

        path, _ = write_card(
            state["best_folder"],
            evaluation=folder / "eval.json",
            search=folder / "leaderboard.json",
            model_name="mergemed-demo",
        )
        if (state["best_folder"] / "schedule.png").is_file():
            shutil.copy(state["best_folder"] / "schedule.png", folder / "schedule.png")
            result.outputs["schedule plot"] = folder / "schedule.png"
        result.outputs["model card"] = path

    steps = [base_model, cpt, sft, grid, evaluation, card]
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console, transient=False) as progress:
        overall = progress.add_task("demo", total=len(STAGES))
        for stage, step in zip(STAGES, steps, strict=True):
            progress.update(overall, description=stage)
            started = time.perf_counter()
            step()
            result.seconds[stage] = time.perf_counter() - started
            progress.advance(overall)
        progress.update(overall, description="demo finished")
    return result
