"""Time a full-size SLERP merge: the raw I/O floor, mergekit, and mergemed, side by side.

Makes (or reuses) two random-weight models of a real shape (TinyLlama-1.1B by default, bf16,
1 GB shards; the second is the first plus noise), writes one SLERP gradient recipe in mergekit
syntax, then runs, each in its own process and with the inputs evicted from the page cache
first (``posix_fadvise(DONTNEED)``, no root needed; ``--warm`` reads them in instead):

* floor: read every tensor of both inputs and write one output of the same size, no math;
* mergekit: ``mergekit-yaml recipe.yaml OUT --out-shard-size <bytes>``;
* mergemed: ``mergemed merge recipe.yaml -o OUT --max-shard-size 1GB``.

For each it reports wall time, the time a following ``sync`` takes to flush the output, peak
RSS (``wait4``'s ``ru_maxrss``, which counts pages of memory-mapped inputs too) and peak
anonymous memory (polled), then compares the two merged outputs tensor by tensor and appends a
dated section to ``benchmarks/RESULTS.md`` (unless ``--no-record``).

Run from the repository root::

    .venv/bin/python benchmarks/merge_speed.py [--preset llama-3.1-8b] [--device cuda]
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import math
import os
import platform
import shutil
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
RESULTS_PATH = REPO_ROOT / "benchmarks" / "RESULTS.md"
BIN_DIR = Path(sys.executable).parent
"""The scripts of the environment running this file (``.venv/bin``): mergekit-yaml, mergemed."""

FLOOR_COMMAND = "_floor"
MEASURE_COMMAND = "_measure"
READ_CHUNK_BYTES = 64 * 1024 * 1024


# --------------------------------------------------------------------------------------------
# Inputs


def ensure_model(folder: Path, **options: object) -> tuple[Path, float]:
    """Make a model with ``make_random_model(**options)`` unless ``folder`` already holds one.

    The model is built under a ``.partial`` name and renamed when complete, so a folder that
    exists is a finished model. Returns the folder and the seconds spent making it (0 if reused).
    """
    from mergemed.testing import make_random_model

    if folder.is_dir():
        return folder, 0.0
    partial = folder.with_name(folder.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    started = time.perf_counter()
    make_random_model(partial, **options)
    partial.rename(folder)
    return folder, time.perf_counter() - started


def weight_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.safetensors"))


def folder_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in weight_files(folder))


def write_recipe(path: Path, first: Path, second: Path, num_layers: int) -> None:
    """The SLERP gradient recipe, in mergekit syntax, that both tools run."""
    import yaml

    recipe = {
        "merge_method": "slerp",
        "base_model": str(first),
        "slices": [
            {
                "sources": [
                    {"model": str(first), "layer_range": [0, num_layers]},
                    {"model": str(second), "layer_range": [0, num_layers]},
                ]
            }
        ],
        "parameters": {
            "t": [
                {"filter": "self_attn", "value": [0, 0.5, 0.3, 0.7, 1]},
                {"filter": "mlp", "value": [1, 0.5, 0.7, 0.3, 0]},
                {"value": 0.5},
            ]
        },
        "dtype": "bfloat16",
    }
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))


# --------------------------------------------------------------------------------------------
# Page cache


def evict_from_page_cache(files: Sequence[Path]) -> None:
    """Flush dirty pages, then ask the kernel to drop these files' cached pages."""
    os.sync()
    for path in files:
        descriptor = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(descriptor, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(descriptor)


def read_into_page_cache(files: Sequence[Path]) -> None:
    os.sync()
    buffer = bytearray(READ_CHUNK_BYTES)
    for path in files:
        with path.open("rb", buffering=0) as handle:
            while handle.readinto(buffer):
                pass


def resident_bytes(files: Sequence[Path]) -> int | None:
    """Bytes of ``files`` in the page cache, from util-linux ``fincore`` (None if absent)."""
    if not files or shutil.which("fincore") is None:
        return None
    result = subprocess.run(
        ["fincore", "--bytes", "--noheadings", "--raw", "--output", "RES", *map(str, files)],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        return None
    return sum(int(line) for line in result.stdout.split())


# --------------------------------------------------------------------------------------------
# Floor: the I/O every merge of these inputs has to do, and nothing else


def _safetensors_layout(folder: Path) -> list[tuple[str, Path, str, list[int], int, int]]:
    """``(name, file, dtype, shape, absolute start, byte count)`` of every tensor, file order."""
    tensors = []
    for path in weight_files(folder):
        with path.open("rb") as handle:
            (length,) = struct.unpack("<Q", handle.read(8))
            header = json.loads(handle.read(length))
        header.pop("__metadata__", None)
        for name, entry in sorted(header.items(), key=lambda item: item[1]["data_offsets"][0]):
            begin, end = entry["data_offsets"]
            tensors.append(
                (name, path, entry["dtype"], entry["shape"], 8 + length + begin, end - begin)
            )
    return tensors


def floor_main(argv: Sequence[str]) -> None:
    """Read every tensor of two models with ``pread`` and write the first's bytes as a sharded
    safetensors output: the same reads and writes as a streaming merge, without the math."""
    parser = argparse.ArgumentParser(prog=f"merge_speed.py {FLOOR_COMMAND}")
    parser.add_argument("first", type=Path)
    parser.add_argument("second", type=Path)
    parser.add_argument("output", type=Path)
    parser.add_argument("--max-shard-bytes", type=int, required=True)
    args = parser.parse_args(argv)

    first = _safetensors_layout(args.first)
    second = {
        name: (path, start, size)
        for name, path, _, _, start, size in _safetensors_layout(args.second)
    }
    shards: list[list[tuple[str, Path, str, list[int], int, int]]] = []
    shard_bytes = 0
    for tensor in first:
        if not shards or (shards[-1] and shard_bytes + tensor[5] > args.max_shard_bytes):
            shards.append([])
            shard_bytes = 0
        shards[-1].append(tensor)
        shard_bytes += tensor[5]

    args.output.mkdir(parents=True)
    largest = max(tensor[5] for tensor in first)
    first_buffer, second_buffer = bytearray(largest), bytearray(largest)
    descriptors: dict[Path, int] = {}

    def read(path: Path, start: int, size: int, buffer: bytearray) -> memoryview:
        descriptor = descriptors.get(path)
        if descriptor is None:
            descriptor = descriptors[path] = os.open(path, os.O_RDONLY)
        view = memoryview(buffer)[:size]
        done = 0
        while done < size:
            count = os.preadv(descriptor, [view[done:]], start + done)
            if count == 0:
                raise OSError(f"{path}: unexpected end of file")
            done += count
        return view

    weight_map = {}
    for number, shard in enumerate(shards, 1):
        file_name = f"model-{number:05d}-of-{len(shards):05d}.safetensors"
        header, offset = {"__metadata__": {"format": "pt"}}, 0
        for name, _, dtype, shape, _, size in shard:
            header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + size]}
            offset += size
            weight_map[name] = file_name
        header_bytes = json.dumps(header).encode()
        header_bytes += b" " * (-len(header_bytes) % 8)
        with (args.output / file_name).open("wb", buffering=0) as handle:
            handle.write(struct.pack("<Q", len(header_bytes)) + header_bytes)
            for name, path, _, _, start, size in shard:
                data = read(path, start, size, first_buffer)
                read(*second[name], second_buffer)
                handle.write(data)
    index = {"metadata": {"total_size": sum(t[5] for t in first)}, "weight_map": weight_map}
    (args.output / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    for descriptor in descriptors.values():
        os.close(descriptor)


# --------------------------------------------------------------------------------------------
# Running and measuring


def measure_main(argv: Sequence[str]) -> int:
    """``_measure REPORT.json -- COMMAND...``: run COMMAND, write its wall time, exit code and
    peak RSS to REPORT.json, and exit with its code.

    A child's ``ru_maxrss`` also counts the memory of the process it was forked from (the
    kernel folds the pre-exec address space into it), so the benchmark, which holds torch and
    the model maker, starts this small launcher and lets it start the tool.
    """
    report, separator, *command = argv
    if separator != "--" or not command:
        raise SystemExit(f"usage: merge_speed.py {MEASURE_COMMAND} REPORT.json -- COMMAND...")
    started = time.perf_counter()
    try:
        process = subprocess.Popen(command)
    except OSError as error:
        print(f"cannot start {command[0]}: {error.strerror}", flush=True)
        Path(report).write_text(json.dumps({"exit_code": 127, "error": error.strerror}))
        return 127
    _, wait_status, usage = os.wait4(process.pid, 0)
    exit_code = os.waitstatus_to_exitcode(wait_status)
    measurements = {
        "exit_code": exit_code,
        "wall_seconds": time.perf_counter() - started,
        "max_rss_bytes": usage.ru_maxrss * 1024,
    }
    Path(report).write_text(json.dumps(measurements))
    return exit_code


@dataclass
class RunResult:
    """One timed run of one tool."""

    name: str
    command: list[str]
    output: Path
    log: Path
    status: str = "not run"
    wall_seconds: float | None = None
    sync_seconds: float | None = None
    peak_rss_bytes: int | None = None
    peak_anon_bytes: int | None = None
    output_bytes: int | None = None
    cache_note: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def total_seconds(self) -> float | None:
        """Wall time plus the ``sync`` that puts the output on disk."""
        if self.wall_seconds is None or self.sync_seconds is None:
            return None
        return self.wall_seconds + self.sync_seconds


class AnonymousMemorySampler(threading.Thread):
    """Polls a process tree's anonymous resident memory (RSS minus file-backed pages)."""

    def __init__(self, pid: int, interval_seconds: float = 0.1):
        super().__init__(daemon=True)
        self.pid = pid
        self.interval_seconds = interval_seconds
        self.peak_bytes = 0
        self.stop_event = threading.Event()

    def run(self) -> None:
        import psutil

        try:
            root = psutil.Process(self.pid)
        except psutil.NoSuchProcess:
            return
        while not self.stop_event.is_set():
            total = 0
            try:
                for process in [root, *root.children(recursive=True)]:
                    info = process.memory_info()
                    total += info.rss - info.shared
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                pass
            self.peak_bytes = max(self.peak_bytes, total)
            self.stop_event.wait(self.interval_seconds)


def run_measured(run: RunResult, inputs: Sequence[Path], *, warm: bool, timeout: float) -> None:
    """Run ``run.command`` with a cold (or warm) page cache and fill in the measurements."""
    shutil.rmtree(run.output, ignore_errors=True)
    if warm:
        read_into_page_cache(inputs)
        run.cache_note = "inputs read into the page cache first"
    else:
        evict_from_page_cache(inputs)
        resident = resident_bytes(inputs)
        run.cache_note = "inputs evicted (posix_fadvise)"
        if resident:
            run.notes.append(f"{resident / 1e9:.2f} GB of inputs still cached after eviction")

    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    report = run.log.with_suffix(".json")
    report.unlink(missing_ok=True)
    launcher = [sys.executable, str(Path(__file__).resolve()), MEASURE_COMMAND, str(report), "--"]
    with run.log.open("w") as log:
        process = subprocess.Popen(
            launcher + run.command,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=environment,
            cwd=REPO_ROOT,
            start_new_session=True,
        )
        sampler = AnonymousMemorySampler(process.pid)
        sampler.start()
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, 9)
            process.wait()
        finally:
            sampler.stop_event.set()
            sampler.join()
    sync_started = time.perf_counter()
    os.sync()
    run.sync_seconds = time.perf_counter() - sync_started

    measured = json.loads(report.read_text()) if report.exists() else {}
    run.wall_seconds = measured.get("wall_seconds")
    run.peak_rss_bytes = measured.get("max_rss_bytes")
    run.peak_anon_bytes = sampler.peak_bytes
    exit_code = measured.get("exit_code", process.returncode)
    if exit_code != 0:
        reason = "timed out" if not measured else f"exit {exit_code}"
        lines = run.log.read_text(errors="replace").replace("\r", "\n").strip().splitlines()
        run.status = f"failed ({reason}): {(lines[-1] if lines else '')[:120]}"
        return
    if not run.output.is_dir() or not weight_files(run.output):
        run.status = "failed: no safetensors output"
        return
    run.output_bytes = folder_bytes(run.output)
    run.status = "ok"


def compare_outputs(first: Path, second: Path) -> str:
    """Largest absolute difference between two merged models, tensor by tensor."""
    import torch
    from safetensors import safe_open

    def tensors(folder: Path) -> dict[str, Path]:
        return {name: path for name, path, *_ in _safetensors_layout(folder)}

    first_tensors, second_tensors = tensors(first), tensors(second)
    if first_tensors.keys() != second_tensors.keys():
        only = sorted(first_tensors.keys() ^ second_tensors.keys())
        return f"tensor names differ ({len(only)} in one only, e.g. {only[0]})"
    worst, worst_name, mismatched, differing, total = 0.0, "", 0, 0, 0
    chunk = 1 << 24
    for name, path in first_tensors.items():
        with safe_open(str(path), "pt") as a, safe_open(str(second_tensors[name]), "pt") as b:
            left, right = a.get_tensor(name), b.get_tensor(name)
            if left.shape != right.shape or left.dtype != right.dtype:
                mismatched += 1
                continue
            left, right = left.reshape(-1), right.reshape(-1)
            total += left.numel()
            for start in range(0, left.numel(), chunk):
                difference = (
                    left[start : start + chunk].float() - right[start : start + chunk].float()
                ).abs()
                differing += int(torch.count_nonzero(difference))
                if (largest := difference.max().item()) > worst:
                    worst, worst_name = largest, name
    shape_note = f"; {mismatched} tensors differ in shape or dtype" if mismatched else ""
    where = f" ({worst_name})" if worst_name else ""
    return (
        f"max |mergekit - mergemed| = {worst:.3g}{where}; {differing / max(total, 1):.2%} of "
        f"elements differ{shape_note}"
    )


# --------------------------------------------------------------------------------------------
# Reporting


def machine_description(device: str) -> dict[str, str]:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = "unknown"
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory = f"{int(line.split()[1]) / 1024**2:.1f} GiB"
                break
    except OSError:
        pass

    def version(package: str) -> str:
        try:
            return importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            return "not installed"

    import torch

    accelerator = "CPU only"
    if device == "cuda" and torch.cuda.is_available():
        accelerator = torch.cuda.get_device_name(0)

    def git(*arguments: str) -> str:
        return subprocess.run(
            ["git", "-C", str(REPO_ROOT), *arguments], capture_output=True, text=True, check=False
        ).stdout.strip()

    commit = git("rev-parse", "--short", "HEAD")
    if commit and git("status", "--porcelain", "--untracked-files=no"):
        commit += "-dirty"
    return {
        "CPU": f"{cpu}, {os.cpu_count()} cores",
        "RAM": memory,
        "OS": f"{platform.system()} {platform.release()}",
        "Python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": version("transformers"),
        "safetensors": version("safetensors"),
        "mergekit": version("mergekit"),
        "mergemed": f"{version('mergemed')} ({commit or 'no git'})",
        "device": f"{device} ({accelerator})",
    }


def gigabytes(count: int | None) -> str:
    return "-" if count is None else f"{count / 1e9:.2f}"


def seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def ratio(numerator: float | None, denominator: float | None) -> str:
    if numerator is None or not denominator:
        return "-"
    return f"{numerator / denominator:.2f}x"


def result_rows(runs: Sequence[RunResult]) -> list[list[str]]:
    floor = next((run for run in runs if run.name == "floor" and run.ok), None)
    rows = []
    for run in runs:
        rows.append(
            [
                run.name,
                run.status,
                seconds(run.wall_seconds) if run.ok else "-",
                seconds(run.sync_seconds) if run.ok else "-",
                seconds(run.total_seconds) if run.ok else "-",
                ratio(run.total_seconds, floor.total_seconds) if run.ok and floor else "-",
                gigabytes(run.peak_rss_bytes) if run.ok else "-",
                gigabytes(run.peak_anon_bytes) if run.ok else "-",
                gigabytes(run.output_bytes),
            ]
        )
    return rows


HEADERS = [
    "run",
    "status",
    "wall s",
    "sync s",
    "total s",
    "x floor",
    "peak RSS GB",
    "peak anon GB",
    "out GB",
]


def median_run(results: Sequence[RunResult]) -> RunResult:
    """The round with the median wall + sync time (the lower middle one for an even count);
    a failed round, if any, is shown instead, so a failure is never hidden by a median."""
    failed = [r for r in results if not r.ok]
    if failed:
        return failed[0]
    ordered = sorted(results, key=lambda r: r.total_seconds or 0.0)
    return ordered[(len(ordered) - 1) // 2]


def tool_ratio(runs: Sequence[RunResult]) -> str | None:
    by_name = {run.name: run for run in runs}
    mergekit, mergemed = by_name.get("mergekit"), by_name.get("mergemed")
    if mergekit and mergemed and mergekit.ok and mergemed.ok:
        wall = ratio(mergekit.wall_seconds, mergemed.wall_seconds)
        total = ratio(mergekit.total_seconds, mergemed.total_seconds)
        memory = ratio(mergekit.peak_rss_bytes, mergemed.peak_rss_bytes)
        anon = ratio(mergekit.peak_anon_bytes, mergemed.peak_anon_bytes)
        return (
            f"mergekit / mergemed: wall {wall}, wall + sync {total}, peak RSS {memory}, "
            f"peak anon {anon}"
        )
    return None


def print_table(runs: Sequence[RunResult], title: str, notes: Sequence[str]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for header in HEADERS:
        if header in ("run", "status"):
            table.add_column(header, no_wrap=header == "run")
        else:
            table.add_column(header, justify="right")
    for row in result_rows(runs):
        table.add_row(*row)
    console = Console()
    if not console.is_terminal:
        console = Console(width=140)
    console.print(table)
    for note in notes:
        console.print(f"  {note}", highlight=False)


def append_section(path: Path, title: str, device: str, body: Sequence[str]) -> None:
    """Append a dated ``## <date>: <title>`` section with the machine described, then ``body``
    (setup bullets, tables, notes: markdown lines)."""
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [f"## {now}: {title}", ""]
    lines += [f"- **{key}**: {value}" for key, value in machine_description(device).items()]
    with path.open("a") as handle:
        handle.write("\n".join([*lines, *body, ""]) + "\n")


def record_results(
    path: Path,
    *,
    title: str,
    machine: dict[str, str],
    setup: Sequence[str],
    runs: Sequence[RunResult],
    notes: Sequence[str],
) -> None:
    """Append a dated markdown section to ``path``."""
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [f"## {now}: {title}", ""]
    lines += [f"- **{key}**: {value}" for key, value in machine.items()]
    lines += [f"- {item}" for item in setup]
    lines += ["", "| " + " | ".join(HEADERS) + " |", "|" + "---|" * len(HEADERS)]
    lines += ["| " + " | ".join(row) + " |" for row in result_rows(runs)]
    lines += [""] + [f"{note}  " for note in notes] + [""]
    if not path.exists():
        path.write_text("# Benchmark results\n\nAppended by `benchmarks/merge_speed.py`.\n\n")
    with path.open("a") as handle:
        handle.write("\n".join(lines) + "\n")


# --------------------------------------------------------------------------------------------
# Main


def parse_arguments(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Time a full-size SLERP merge: raw I/O floor vs mergekit vs mergemed."
    )
    parser.add_argument(
        "--preset", choices=["tinyllama-1.1b", "llama-3.1-8b"], default="tinyllama-1.1b"
    )
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument(
        "--workdir",
        type=Path,
        default=Path("/tmp/mergemed-bench"),
        help="Models cache and outputs.",
    )
    parser.add_argument("--max-shard-size", default="1GB", help="Input and output shard size.")
    parser.add_argument(
        "--perturbation", type=float, default=0.1, help="Noise separating the second model."
    )
    parser.add_argument("--skip-mergekit", action="store_true")
    parser.add_argument("--skip-mergemed", action="store_true")
    parser.add_argument("--skip-floor", action="store_true")
    parser.add_argument(
        "--warm", action="store_true", help="Read inputs into the page cache before each run."
    )
    parser.add_argument("--keep", action="store_true", help="Keep the merged outputs.")
    parser.add_argument("--no-record", action="store_true", help="Do not append to RESULTS.md.")
    parser.add_argument("--results", type=Path, default=RESULTS_PATH)
    parser.add_argument("--timeout", type=float, default=3600, help="Seconds per run.")
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="Rounds of floor, mergekit, mergemed (interleaved); each tool's median round is "
        "reported, with every round's time in the notes.",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == [FLOOR_COMMAND]:
        floor_main(argv[1:])
        return 0
    if argv[:1] == [MEASURE_COMMAND]:
        return measure_main(argv[1:])
    args = parse_arguments(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.path.insert(0, str(REPO_ROOT))
    from mergemed.testing import ARCHITECTURES
    from mergemed.units import parse_byte_size

    shard_bytes = parse_byte_size(args.max_shard_size)
    num_layers = ARCHITECTURES[args.preset].num_hidden_layers
    models_dir = args.workdir / "models"
    models_dir.mkdir(parents=True, exist_ok=True)

    print(f"preparing two {args.preset} models in {models_dir} ...", flush=True)
    first, first_seconds = ensure_model(
        models_dir / f"{args.preset}-seed0-{args.max_shard_size}",
        preset=args.preset,
        seed=0,
        max_shard_size=shard_bytes,
    )
    second, second_seconds = ensure_model(
        models_dir / f"{first.name}-perturbed{args.perturbation:g}-seed1",
        base_dir=first,
        seed=1,
        perturbation=args.perturbation,
    )
    for folder, made in ((first, first_seconds), (second, second_seconds)):
        how = f"made in {made:.1f} s" if made else "reused"
        print(f"  {folder} ({folder_bytes(folder) / 1e9:.2f} GB, {how})", flush=True)
    inputs = weight_files(first) + weight_files(second)
    recipe = args.workdir / f"slerp-{args.preset}.yaml"
    write_recipe(recipe, first, second, num_layers)

    outputs_dir = args.workdir / "outputs"
    logs_dir = args.workdir / "logs"
    outputs_dir.mkdir(exist_ok=True)
    logs_dir.mkdir(exist_ok=True)
    free = shutil.disk_usage(args.workdir).free
    if free < 2.2 * folder_bytes(first):
        print(f"warning: only {free / 1e9:.1f} GB free in {args.workdir}", file=sys.stderr)

    runs: list[RunResult] = []
    if not args.skip_floor:
        output = outputs_dir / "floor"
        command = [sys.executable, str(Path(__file__).resolve()), FLOOR_COMMAND]
        command += [str(first), str(second), str(output), "--max-shard-bytes", str(shard_bytes)]
        runs.append(RunResult("floor", command, output, logs_dir / "floor.log"))
    if not args.skip_mergekit:
        output = outputs_dir / "mergekit"
        # --out-shard-size is documented as a parameter count but compared with bytes.
        command = [str(BIN_DIR / "mergekit-yaml"), str(recipe), str(output)]
        command += ["--out-shard-size", str(shard_bytes), "--copy-tokenizer"]
        command += ["--cuda"] if args.device == "cuda" else []
        runs.append(RunResult("mergekit", command, output, logs_dir / "mergekit.log"))
    if not args.skip_mergemed:
        output = outputs_dir / "mergemed"
        command = [str(BIN_DIR / "mergemed"), "merge", str(recipe), "-o", str(output)]
        command += ["--max-shard-size", args.max_shard_size, "--device", args.device]
        runs.append(RunResult("mergemed", command, output, logs_dir / "mergemed.log"))

    rounds: dict[str, list[RunResult]] = {run.name: [] for run in runs}
    for round_index in range(max(1, args.repeat)):
        for template in runs:
            run = RunResult(template.name, template.command, template.output, template.log)
            shutil.rmtree(run.output, ignore_errors=True)
            print(f"[{round_index + 1}/{args.repeat}] running {run.name}", flush=True)
            run_measured(run, inputs, warm=args.warm, timeout=args.timeout)
            print(f"  {run.status}, {seconds(run.wall_seconds)} s (log: {run.log})", flush=True)
            rounds[run.name].append(run)
            last_round = round_index == max(1, args.repeat) - 1
            if run.name == "floor" or not last_round:
                if not (args.keep and last_round):
                    shutil.rmtree(run.output, ignore_errors=True)
    runs = [median_run(rounds[name]) for name in rounds]

    notes = []
    if args.repeat > 1:
        for name, results in rounds.items():
            times = ", ".join(seconds(r.total_seconds) for r in results)
            notes.append(f"{name}: wall + sync of each round {times} s; the median is shown")
    if ratio_line := tool_ratio(runs):
        notes.append(ratio_line)
    by_name = {run.name: run for run in runs}
    if all(name in by_name and by_name[name].ok for name in ("mergekit", "mergemed")):
        notes.append(compare_outputs(by_name["mergekit"].output, by_name["mergemed"].output))
    for run in runs:
        notes += [f"{run.name}: {note}" for note in run.notes]

    architecture = ARCHITECTURES[args.preset]
    parameters = sum(math.prod(shape) for _, _, _, shape, _, _ in _safetensors_layout(first))
    cache = (
        "inputs read into the page cache before each run"
        if args.warm
        else ("inputs evicted from the page cache before each run (posix_fadvise DONTNEED)")
    )
    setup = [
        f"**inputs**: two random-weight {args.preset} models ({architecture.num_hidden_layers} "
        f"layers, hidden {architecture.hidden_size}, ~{parameters / 1e9:.2f} B params, bf16, "
        f"{args.max_shard_size} shards, {folder_bytes(first) / 1e9:.2f} GB each); the second is "
        f"the first + {args.perturbation:g} x N(0, std) noise",
        "**recipe**: SLERP, t gradient [0, 0.5, 0.3, 0.7, 1] on self_attn, reversed on mlp, "
        "0.5 elsewhere, dtype bfloat16",
        f"**page cache**: {cache}; the `sync` after each run is timed separately (sync s; "
        "a tool that fsyncs its own output shows ~0); x floor compares wall + sync",
        "**peak RSS** is the tool's `ru_maxrss` (counts touched pages of memory-mapped inputs); "
        "**peak anon** is RSS minus file-backed pages, polled every 0.1 s",
    ]
    title = f"{args.preset} SLERP, {args.device}"
    print_table(runs, title, notes)
    if args.no_record:
        print("(not recorded: --no-record)")
    else:
        machine = machine_description(args.device)
        record_results(
            args.results, title=title, machine=machine, setup=setup, runs=runs, notes=notes
        )
        print(f"appended to {args.results}")
    if not args.keep:
        for run in runs:
            shutil.rmtree(run.output, ignore_errors=True)
    return 0 if all(run.ok for run in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
