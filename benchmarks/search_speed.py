"""Per-candidate turnaround of a schedule search: in memory against two tools that write to disk.

On the random-weight pair of ``merge_speed.py`` (TinyLlama-1.1B shape, bf16; reused from its
work folder when present), each candidate is the merge benchmark's SLERP gradient recipe with
another rest-of-model ``t``. "Turnaround" is what a search pays per candidate before scoring:
parameters in, a transformers model ready to score out. Side by side in one run:

* **in memory** (what ``mergemed grid`` does): the parents are opened and the job prepared once
  (timed separately), then per candidate ``job.replan(recipe)``, ``merge_job_to_memory`` and
  the evaluator's ``load_in_memory_model``; timed twice, with every tensor merged, and reusing
  the tensors whose inputs and parameters the previous candidate shares (as the search does);
* **mergemed to disk**: ``mergemed merge recipe.yaml -o OUT`` then ``from_pretrained(OUT)``;
* **mergekit to disk**: ``mergekit-yaml recipe.yaml OUT`` then ``from_pretrained(OUT)``.

The inputs are read into the page cache before each approach, so all three start warm. Each
approach's figure is the median over the candidates; the merged tensors of the in-memory and
disk paths are compared for the first candidate. With ``--score-limit N`` the first candidate
is also scored in memory on ``mm_pubmedqa`` (N documents) to give the share of a trial spent
scoring. A dated section is appended to ``benchmarks/RESULTS.md`` (unless ``--no-record``).

Run from the repository root::

    .venv/bin/python benchmarks/search_speed.py [--candidates 3] [--score-limit 6]
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import merge_speed  # noqa: E402  (the merge benchmark's models, recipe and machine facts)

BIN_DIR = Path(sys.executable).parent
CANDIDATE_T = (0.3, 0.5, 0.7, 0.4, 0.6)


def candidate_recipes(base: Path, folder: Path, count: int) -> list[Path]:
    """The merge benchmark's recipe with rest-of-model t set to each of ``CANDIDATE_T``."""
    data = yaml.safe_load(base.read_text())
    paths = []
    for t in CANDIDATE_T[:count]:
        data["parameters"]["t"][-1]["value"] = t
        path = folder / f"candidate-t{t:g}.yaml"
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        paths.append(path)
    return paths


def load_from_disk(folder: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16)
    del model


def run_tool(command: list[str], log: Path) -> float:
    started = time.perf_counter()
    with log.open("w") as handle:
        subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT, check=True)
    return time.perf_counter() - started


def peak_rss_gb(who: int) -> float:
    return resource.getrusage(who).ru_maxrss / 1024**2


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/mergemed-bench"))
    parser.add_argument("--candidates", type=int, default=3, choices=range(1, 6))
    parser.add_argument("--score-limit", type=int, default=0, help="0: do not score")
    parser.add_argument("--skip-mergekit", action="store_true")
    parser.add_argument("--no-record", action="store_true")
    parser.add_argument("--results", type=Path, default=merge_speed.RESULTS_PATH)
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import torch

    from mergemed.engine import merge_job_to_memory, prepare_merge
    from mergemed.evaluation.backends import load_in_memory_model
    from mergemed.recipe import load_recipe
    from mergemed.testing import ARCHITECTURES

    preset = "tinyllama-1.1b"
    models = args.workdir / "models"
    models.mkdir(parents=True, exist_ok=True)
    first, _ = merge_speed.ensure_model(
        models / f"{preset}-seed0-1GB", preset=preset, seed=0, max_shard_size=10**9
    )
    second, _ = merge_speed.ensure_model(
        models / f"{first.name}-perturbed0.1-seed1", base_dir=first, seed=1, perturbation=0.1
    )
    inputs = merge_speed.weight_files(first) + merge_speed.weight_files(second)
    work = args.workdir / "search-speed"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    base = work / "base.yaml"
    merge_speed.write_recipe(base, first, second, ARCHITECTURES[preset].num_hidden_layers)
    recipes = candidate_recipes(base, work, args.candidates)
    print(f"{len(recipes)} candidates on {first.name} + {second.name}", flush=True)

    # In memory: prepare once, then each candidate.
    merge_speed.read_into_page_cache(inputs)
    started = time.perf_counter()
    memory_times, reuse_times, reused_counts = [], [], []
    first_tensors, score_seconds = None, None
    with prepare_merge(load_recipe(recipes[0])) as job:
        prepare_seconds = time.perf_counter() - started
        for index, recipe in enumerate(recipes):
            begin = time.perf_counter()
            merged = merge_job_to_memory(job.replan(load_recipe(recipe)))
            model = load_in_memory_model(merged, "cpu")
            memory_times.append(time.perf_counter() - begin)
            print(f"  in memory {recipe.name}: {memory_times[-1]:.1f} s", flush=True)
            if index == 0:
                first_tensors = {k: v.clone() for k, v in merged.state_dict.items()}
                if args.score_limit:
                    from mergemed.evaluation import evaluate

                    begin = time.perf_counter()
                    evaluate(merged, tasks=["mm_pubmedqa"], limit=args.score_limit, store=False)
                    score_seconds = time.perf_counter() - begin
                    print(f"  scoring ({args.score_limit} docs): {score_seconds:.1f} s")
            del model
            merged.cleanup()
        # What mergemed grid does: each candidate reuses the tensors it shares with the one
        # before (the first has no predecessor, so it is timed from the last candidate).
        previous = merge_job_to_memory(job.replan(load_recipe(recipes[-1])))
        previous.cleanup()
        for recipe in recipes:
            begin = time.perf_counter()
            merged = merge_job_to_memory(job.replan(load_recipe(recipe)), reuse=previous)
            model = load_in_memory_model(merged, "cpu")
            reuse_times.append(time.perf_counter() - begin)
            reused_counts.append(f"{merged.reused}/{len(merged.state_dict)}")
            print(f"  in memory, reusing {recipe.name}: {reuse_times[-1]:.1f} s", flush=True)
            del model
            merged.cleanup()
            previous = merged
        del previous
    memory_peak = peak_rss_gb(resource.RUSAGE_SELF)

    def to_disk(name: str, command_for) -> tuple[list[float], Path]:
        merge_speed.read_into_page_cache(inputs)
        times, kept = [], work / f"{name}-0"
        for index, recipe in enumerate(recipes):
            output = work / f"{name}-{index}"
            begin = time.perf_counter()
            run_tool(command_for(recipe, output), work / f"{name}-{index}.log")
            load_from_disk(output)
            times.append(time.perf_counter() - begin)
            print(f"  {name} {recipe.name}: {times[-1]:.1f} s", flush=True)
            if index:
                shutil.rmtree(output)
        return times, kept

    mergemed_times, mergemed_out = to_disk(
        "mergemed",
        lambda r, o: [
            str(BIN_DIR / "mergemed"),
            "merge",
            str(r),
            "-o",
            str(o),
            "--max-shard-size",
            "1GB",
        ],
    )
    mergekit_times: list[float] = []
    if not args.skip_mergekit:
        mergekit_times, _ = to_disk(
            "mergekit",
            lambda r, o: [
                str(BIN_DIR / "mergekit-yaml"),
                str(r),
                str(o),
                "--out-shard-size",
                str(10**9),
                "--copy-tokenizer",
            ],
        )

    from safetensors.torch import load_file

    on_disk = {}
    for shard in merge_speed.weight_files(mergemed_out):
        on_disk.update(load_file(shard))
    same = on_disk.keys() == first_tensors.keys() and all(
        torch.equal(on_disk[k], first_tensors[k]) for k in on_disk
    )
    shutil.rmtree(work / "mergemed-0", ignore_errors=True)
    shutil.rmtree(work / "mergekit-0", ignore_errors=True)

    memory, disk = statistics.median(memory_times), statistics.median(mergemed_times)
    rows = [
        ("in memory, reusing unchanged tensors (mergemed grid)", reuse_times,
         statistics.median(reuse_times)),
        ("in memory, every tensor merged", memory_times, memory),
        ("mergemed merge + from_pretrained", mergemed_times, disk),
    ]  # fmt: skip
    if mergekit_times:
        rows.append(
            (
                "mergekit-yaml + from_pretrained",
                mergekit_times,
                statistics.median(mergekit_times),
            )
        )
    lines = [
        "| per candidate | median s | each s | / in memory with reuse |",
        "|---|---|---|---|",
    ]
    fastest = statistics.median(reuse_times)
    for name, times, median in rows:
        each = ", ".join(f"{t:.1f}" for t in times)
        lines.append(f"| {name} | {median:.1f} | {each} | {median / fastest:.2f}x |")
    notes = [
        f"prepare once (open parents, plan): {prepare_seconds:.1f} s, not in the per-candidate "
        "figures",
        f"first candidate: in-memory tensors equal `mergemed merge`'s on disk: {same}",
        f"tensors reused from the previous candidate: {', '.join(reused_counts)} (the "
        "candidates differ in the rest-of-model t only: embeddings, norms, lm_head)",
        f"peak RSS: in-memory process {memory_peak:.2f} GB (parents memory-mapped count too; "
        "a child's figure is not given: Linux children inherit the parent's peak at fork)",
    ]
    if score_seconds is not None:
        share = score_seconds / (score_seconds + memory)
        notes.append(
            f"scoring the first candidate on mm_pubmedqa, {args.score_limit} documents, in "
            f"memory: {score_seconds:.1f} s, so scoring is {share:.0%} of that trial "
            "(turnaround + scoring)"
        )
    print("\n".join([*lines, "", *notes]))
    if not args.no_record:
        merge_speed.append_section(
            args.results,
            f"search turnaround, {preset} pair, cpu",
            "cpu",
            [
                f"- {len(recipes)} candidates (rest-of-model t = "
                f"{', '.join(f'{t:g}' for t in CANDIDATE_T[: len(recipes)])}) of the merge "
                "benchmark's SLERP gradient recipe; page cache warm for each approach",
                "",
                *lines,
                "",
                *[f"{note}  " for note in notes],
            ],
        )
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
