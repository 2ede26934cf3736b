"""Time ``mergemed inspect`` on a full-size pair against the raw read floor, and its memory.

Uses (or makes, as ``merge_speed.py`` does) two random-weight TinyLlama-1.1B models (bf16, 1 GB
shards, 2.2 GB each; the second is the first plus 0.1 x N(0, std) noise), then runs, each in
its own process:

* floor: read every weight file of both models once (``pread``, 64 MiB blocks), nothing else:
  no tool that looks at every weight can be faster on the same disk;
* inspect: ``mergemed inspect A B --json OUT --quiet``;
* imports: a process that only imports what ``mergemed inspect`` imports (Python, torch, the
  CLI), whose peak RSS is subtracted from inspect's to give its working memory.

The floor and inspect run with a cold page cache (the inputs evicted with
``posix_fadvise(DONTNEED)``, no root needed) and again with a warm one (the inputs read in
first), which isolates the arithmetic.
Wall time and peak RSS (``wait4``'s ``ru_maxrss``, taken by ``merge_speed.py``'s small launcher
so the benchmark's own memory is not counted) are reported with the ratio to the floor, and a
dated section is appended to ``benchmarks/RESULTS.md`` (unless ``--no-record``).

Run from the repository root::

    .venv/bin/python benchmarks/inspect_speed.py [--no-record] [--note TEXT]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = REPO_ROOT / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))  # merge_speed, results_section

import merge_speed  # noqa: E402

FLOOR_COMMAND = "_floor"
READ_BLOCK_BYTES = 64 * 1024 * 1024
DEFAULT_WORKDIR = Path("/tmp/mergemed-bench")


def floor_main(files: list[str]) -> None:
    """Read every file once, front to back, into one reused buffer."""
    buffer = bytearray(READ_BLOCK_BYTES)
    view = memoryview(buffer)
    for name in files:
        descriptor = os.open(name, os.O_RDONLY)
        try:
            offset = 0
            while count := os.preadv(descriptor, [view], offset):
                offset += count
        finally:
            os.close(descriptor)


@dataclass
class Run:
    """One timed process."""

    name: str
    cache: str
    command: list[str]
    status: str = "not run"
    wall_seconds: float | None = None
    peak_rss_bytes: int | None = None
    load_before: float | None = None
    """1-minute load average just before the run (other work on the machine)."""


def run_measured(run: Run, inputs: list[Path], logs: Path, timeout: float) -> None:
    """Run ``run.command`` under merge_speed.py's measuring launcher, cold or warm."""
    if run.cache == "cold":
        merge_speed.evict_from_page_cache(inputs)
    elif run.cache == "warm":
        merge_speed.read_into_page_cache(inputs)
    run.load_before = os.getloadavg()[0]
    report = logs / f"{run.name}-{run.cache}.json"
    report.unlink(missing_ok=True)
    launcher = [sys.executable, str(BENCHMARKS / "merge_speed.py"), merge_speed.MEASURE_COMMAND]
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    log = logs / f"{run.name}-{run.cache}.log"
    with log.open("w") as output:
        try:
            subprocess.run(
                [*launcher, str(report), "--", *run.command],
                stdout=output,
                stderr=subprocess.STDOUT,
                env=environment,
                cwd=REPO_ROOT,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired:
            run.status = "timed out"
            return
    measured = json.loads(report.read_text()) if report.exists() else {}
    run.wall_seconds = measured.get("wall_seconds")
    run.peak_rss_bytes = measured.get("max_rss_bytes")
    code = measured.get("exit_code")
    if code == 0:
        run.status = "ok"
    else:
        lines = log.read_text(errors="replace").strip().splitlines()
        run.status = f"failed (exit {code}): {(lines[-1] if lines else '')[:100]}"


def table(runs: list[Run], input_bytes: int) -> str:
    """The markdown results table: each inspect run is compared with the floor of its cache."""
    floors = {r.cache: r for r in runs if r.name == "floor" and r.status == "ok"}
    lines = [
        "| run | page cache | status | wall s | x floor | GB/s | peak RSS GB | load before |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for run in runs:
        floor = floors.get(run.cache)
        ok = run.status == "ok" and run.wall_seconds
        reads = run.name != "imports"
        ratio = f"{run.wall_seconds / floor.wall_seconds:.2f}x" if ok and floor else "-"
        lines.append(
            f"| {run.name} | {run.cache} | {run.status} | "
            f"{f'{run.wall_seconds:.1f}' if ok else '-'} | {ratio} | "
            f"{f'{input_bytes / run.wall_seconds / 1e9:.2f}' if ok and reads else '-'} | "
            f"{f'{run.peak_rss_bytes / 1e9:.2f}' if run.peak_rss_bytes else '-'} | "
            f"{f'{run.load_before:.2f}' if run.load_before is not None else '-'} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == [FLOOR_COMMAND]:
        floor_main(argv[1:])
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR)
    parser.add_argument("--first", type=Path, default=None, help="Model A (default: made).")
    parser.add_argument("--second", type=Path, default=None, help="Model B (default: made).")
    parser.add_argument("--skip-warm", action="store_true", help="Cold page cache only.")
    parser.add_argument("--timeout", type=float, default=1800, help="Seconds per run.")
    parser.add_argument("--note", action="append", default=[], help="A line for RESULTS.md.")
    parser.add_argument("--no-record", action="store_true", help="Do not append to RESULTS.md.")
    arguments = parser.parse_args(argv)

    models = arguments.workdir / "models"
    base, _ = merge_speed.ensure_model(
        models / "tinyllama-1.1b-seed0-1GB",
        preset="tinyllama-1.1b",
        seed=0,
        max_shard_size="1GB",
    )
    perturbed, _ = merge_speed.ensure_model(
        models / "tinyllama-1.1b-seed0-1GB-perturbed0.1-seed1",
        base_dir=base,
        seed=1,
        perturbation=0.1,
    )
    first, second = arguments.first or perturbed, arguments.second or base
    inputs = merge_speed.weight_files(first) + merge_speed.weight_files(second)
    input_bytes = sum(path.stat().st_size for path in inputs)
    print(f"A = {first}\nB = {second}\n{input_bytes / 1e9:.2f} GB of weights", flush=True)

    scratch = Path(tempfile.mkdtemp(prefix="inspect-speed-"))
    report_path = scratch / "inspect.json"
    floor = [sys.executable, str(Path(__file__).resolve()), FLOOR_COMMAND, *map(str, inputs)]
    inspect = [str(merge_speed.BIN_DIR / "mergemed"), "inspect", str(first), str(second)]
    inspect += ["--json", str(report_path), "--quiet"]
    caches = ["cold"] if arguments.skip_warm else ["cold", "warm"]
    imports = [
        sys.executable,
        "-c",
        "import mergemed.cli, mergemed.cli.inspect_render, mergemed.compare, mergemed.schedule",
    ]
    runs = [
        Run(name, cache, command)
        for cache in caches
        for name, command in (("floor", floor), ("inspect", inspect))
    ]
    runs.append(Run("imports", "-", imports))
    for run in runs:
        print(f"{run.name} ({run.cache} page cache) ...", flush=True)
        run_measured(run, inputs, scratch, arguments.timeout)
        wall = f"{run.wall_seconds:.1f} s" if run.wall_seconds else "-"
        print(f"  {run.status}, {wall}", flush=True)

    results = table(runs, input_bytes)
    print(results)
    by_key = {(run.name, run.cache): run for run in runs if run.status == "ok"}
    baseline = by_key.get(("imports", "-"))
    memory = ""
    inspected = [by_key[key] for key in (("inspect", "cold"), ("inspect", "warm")) if key in by_key]
    if baseline and baseline.peak_rss_bytes and inspected:
        largest = max(run.peak_rss_bytes or 0 for run in inspected)
        memory = (
            f"peak RSS {largest / 1e9:.2f} GB for {input_bytes / 1e9:.2f} GB of weights, of "
            f"which {baseline.peak_rss_bytes / 1e9:.2f} GB is the imports alone: "
            f"{(largest - baseline.peak_rss_bytes) / 1e6:.0f} MB of working memory"
        )
        print(memory)
    found = ""
    if report_path.exists():
        saved = json.loads(report_path.read_text())
        overall = saved["overall"]
        cells = [
            cell["relative_change"]
            for row in saved["layers"]
            for cell in row["components"].values()
        ]
        found = (
            f"cosine {overall['cosine']:.5f}, relative change {overall['relative_change']:.4f} "
            f"over {overall['elements']:,} elements; per layer and component "
            f"{min(cells):.4f}–{max(cells):.4f} ({saved['bytes_read'] / 1e9:.2f} GB read); "
            f"the last inspect run spent {saved['seconds']:.1f} s in `inspect_models`, the rest "
            "of its wall time is process start-up (imports)"
        )
        print(f"inspect found: {found}")
    succeeded = all(run.status == "ok" for run in runs)
    if succeeded:
        shutil.rmtree(scratch, ignore_errors=True)
    else:
        print(f"logs kept in {scratch}")
    if arguments.no_record:
        print("(not recorded: --no-record)")
        return 0 if succeeded else 1

    from results_section import append_section

    loads = [run.load_before for run in runs if run.load_before is not None]
    details = [
        f"- **inputs**: A = `{first.name}`, B = `{second.name}` (random-weight TinyLlama-1.1B "
        f"shape, bf16, 1 GB shards, {input_bytes / 1e9:.2f} GB of weights in all; B + 0.1 x "
        "N(0, std) noise = A)",
        "- **floor**: read every weight file of both models once with `pread` (64 MiB blocks), "
        "no arithmetic. **inspect**: `mergemed inspect A B --json OUT --quiet` (float64 sums, "
        "default chunk of 4M elements). Each run is a fresh process (torch import included)",
        "- **page cache**: cold = both models evicted (`posix_fadvise(DONTNEED)`) before the "
        "run; warm = read in first. **x floor** compares with the floor of the same cache state",
        "- **peak RSS**: `ru_maxrss` of the process (merge_speed.py's launcher), for "
        f"{input_bytes / 1e9:.2f} GB of weights read",
    ]
    if memory:
        details.append(f"- **memory**: {memory}")
    if found:
        details.append(f"- **inspect found**: {found}")
    # The previous run of this script leaves up to ~0.5 in the 1-minute average by itself;
    # above one runnable task per core, something else was competing.
    if loads and max(loads) > 1.0:
        details.append(
            f"- **load**: 1-minute load average {min(loads):.2f}–{max(loads):.2f} before the "
            "runs: other work was sharing the 2 cores, so timings are indicative"
        )
    details += [f"- {note}" for note in arguments.note]
    path = append_section("inspect speed, tinyllama-1.1b pair, cpu", details, results)
    print(f"appended to {path}")
    return 0 if succeeded else 1


if __name__ == "__main__":
    sys.exit(main())
