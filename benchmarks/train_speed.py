"""Tokens/s of ``mergemed train`` against a plain trl script: same model, data and settings.

Each run is its own process, one after the other:

* ``cpt, mergemed``: ``train_cpt`` on the general + medical text mixed 9:1 in tokens, packed
  by mergemed (best-fit decreasing) into 256-token sequences;
* ``cpt, plain trl``: trl's ``SFTTrainer`` on the same documents as plain text with trl's own
  packing (``packing=True``, best-fit decreasing, padding-free rows), same sequence length,
  batch and schedule;
* ``sft, mergemed``: ``train_sft`` on PubMedQA records rendered with the chat template,
  completion-only loss, LoRA r=8;
* ``sft, plain trl``: trl's ``SFTTrainer`` on the same conversations in trl's
  prompt/completion format, same LoRA, ``completion_only_loss=True``;
* ``cpt, mergemed, 1 worker`` / ``2 workers``: ``mergemed train cpt`` with the same config
  file, as one process (torch's default threads, and one thread) and as 2 workers under
  ``python -m torch.distributed.run`` (gloo, one thread each, as torchrun sets); 2 workers
  train 2 micro-batches per step, so tokens/s is the figure to compare.

Throughput is the tokens trained divided by the trainer's own ``train_runtime`` (set-up not
counted): packed sequences x length for CPT, trl's ``num_tokens`` for SFT. Both run in
float32 without gradient checkpointing (trl's own defaults turn both bf16, which on a CPU
means autocast and a ~6x slower GEMM, and checkpointing on).
Target: mergemed
≥ 0.95× plain trl. Also prints the padding waste of mergemed's packing. Each row is the median
of ``--repeats`` runs. Appends to ``benchmarks/RESULTS.md``. The model is SmolLM2-135M-Instruct
(see ``eval_speed.py``), float32.

    .venv/bin/python benchmarks/train_speed.py [--steps 8] [--repeats 3] [--only trl|workers]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "benchmarks"))  # eval_speed, results_section
GENERAL = REPO_ROOT / "mergemed" / "data" / "devils_dictionary.txt"
MEDICAL = REPO_ROOT / "mergemed" / "evaluations" / "data" / "pubmedqa" / "train.jsonl"
SEQUENCE = 256
BATCH = 4
LORA = {"r": 8, "alpha": 16, "dropout": 0.0}


def _settings(steps: int) -> dict:
    return {
        "max_steps": steps,
        "micro_batch_size": BATCH,
        "learning_rate": 1e-4,
        "logging_steps": 1,
        "save_steps": 10_000,
        "eval_steps": 10_000,
        "warmup_ratio": 0.01,
    }


def _config(kind: str, model: str, output: str, steps: int) -> dict:
    data: dict = {"sequence_length": SEQUENCE, "held_out_fraction": 0.0}
    if kind == "cpt":
        data["sources"] = [
            {"name": "general", "path": str(GENERAL), "weight": 9},
            {"name": "medical", "path": str(MEDICAL), "text_field": "contexts", "weight": 1},
        ]
        data["sequence_length"] = SEQUENCE
    else:
        data.update(path=str(MEDICAL), format="pubmedqa", sequence_length=2048)
    config = {
        "kind": kind,
        "model": {"path": model, "dtype": "float32"},
        "data": data,
        "training": _settings(steps),
        "output": {"dir": output},
    }
    if kind == "sft":
        config["lora"] = LORA
    return config


def run_mergemed(kind: str, model: str, output: str, steps: int) -> dict:
    from mergemed.train.config import load_train_config

    config = load_train_config(_config(kind, model, output, steps), kind)
    if kind == "cpt":
        from mergemed.train.cpt import train_cpt

        report = train_cpt(config, progress=False).report
        tokens = report["steps"] * BATCH * SEQUENCE
        return {
            "tokens": tokens,
            "seconds": report["train_seconds"],
            "waste": report["padding_waste"],
        }
    from mergemed.train.sft import train_sft

    report = train_sft(config, progress=False).report
    return {
        "tokens": report["tokens_per_second"] * report["train_seconds"],
        "seconds": report["train_seconds"],
    }


def run_trl(kind: str, model: str, output: str, steps: int) -> dict:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from mergemed.train.sft_records import pubmedqa_sft_records
    from mergemed.train.sources import Source, read_documents

    tokenizer = AutoTokenizer.from_pretrained(model)
    network = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32)
    common = dict(
        output_dir=output,
        max_steps=steps,
        per_device_train_batch_size=BATCH,
        learning_rate=1e-4,
        lr_scheduler_type="cosine",
        warmup_steps=1,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
        seed=0,
        # trl's SFTConfig turns bf16 and gradient checkpointing on by default; on a CPU bf16
        # means autocast and torch's reference GEMM, about 6x slower. mergemed trains in
        # float32 without checkpointing here, so trl must too.
        bf16=False,
        gradient_checkpointing=False,
    )
    if kind == "cpt":
        documents = read_documents(Source("general", GENERAL)) + read_documents(
            Source("medical", MEDICAL, text_field="contexts")
        )
        dataset = Dataset.from_dict({"text": documents})
        # trl 1.16 packs into padding-free rows (one [1, batch x length] row with
        # cu_seq_lens), the same tokens per step as mergemed's [batch, length] batches.
        args = SFTConfig(**common, packing=True, max_length=SEQUENCE)
        trainer = SFTTrainer(
            model=network, args=args, train_dataset=dataset, processing_class=tokenizer
        )
        result = trainer.train()
        tokens = steps * BATCH * SEQUENCE
        return {"tokens": tokens, "seconds": result.metrics["train_runtime"]}
    records = pubmedqa_sft_records(MEDICAL)
    dataset = Dataset.from_list([{"prompt": r[:-1], "completion": [r[-1]]} for r in records])
    args = SFTConfig(**common, max_length=2048, completion_only_loss=True)
    lora = LoraConfig(
        r=LORA["r"],
        lora_alpha=LORA["alpha"],
        lora_dropout=0.0,
        target_modules="all-linear",
        task_type="CAUSAL_LM",
    )
    trainer = SFTTrainer(
        model=network,
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=lora,
    )
    result = trainer.train()
    tokens = [e["num_tokens"] for e in trainer.state.log_history if "num_tokens" in e][-1]
    return {"tokens": tokens, "seconds": result.metrics["train_runtime"]}


def run_workers(model: str, output: Path, steps: int, workers: int, threads: str | None) -> dict:
    """``mergemed train cpt`` from a config file, as 1 process or N workers (torchrun)."""
    config = output.with_suffix(".yaml")
    config.write_text(yaml.safe_dump(_config("cpt", model, str(output), steps)))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    if threads is not None:
        env["OMP_NUM_THREADS"] = threads
    command = [sys.executable, "-m", "mergemed", "train", "cpt", str(config), "-q"]
    if workers > 1:
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
        command = [*launcher, f"--nproc_per_node={workers}", *command[1:]]
    subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL)
    report = json.loads((output / "training.json").read_text())
    tokens = report["steps"] * workers * BATCH * SEQUENCE
    return {"tokens": tokens, "seconds": report["train_seconds"], "waste": report["padding_waste"]}


def child() -> None:
    which, kind, model, output, steps, out = sys.argv[2:8]
    runner = run_mergemed if which == "mergemed" else run_trl
    Path(out).write_text(json.dumps(runner(kind, model, output, int(steps))))


def median_row(runs: list[dict]) -> dict:
    """The run of median tokens/s (its tokens, seconds and waste), with every rate."""
    ordered = sorted(runs, key=lambda r: r["tokens"] / r["seconds"])
    return {**ordered[len(ordered) // 2], "rates": [r["tokens"] / r["seconds"] for r in runs]}


def trl_rows(model: Path, scratch: Path, steps: int, repeats: int) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    rows = {}
    for kind in ("cpt", "sft"):
        for which in ("mergemed", "trl"):
            runs = []
            for repeat in range(repeats):
                out = scratch / f"{kind}-{which}-{repeat}.json"
                print(f"running {kind}, {which} ({repeat + 1}/{repeats}) ...", flush=True)
                child_args = [which, kind, str(model), str(scratch / f"{kind}-{which}-{repeat}")]
                subprocess.run(
                    [sys.executable, __file__, "_child", *child_args, str(steps), str(out)],
                    env=env,
                    check=True,
                    stdout=subprocess.DEVNULL,
                )
                runs.append(json.loads(out.read_text()))
            label = "mergemed" if which == "mergemed" else "plain trl"
            rows[f"{kind}, {label}"] = median_row(runs)
    return rows


WORKER_RUNS = (
    ("cpt, mergemed, 1 worker (torch's threads)", 1, None),
    ("cpt, mergemed, 1 worker (1 thread)", 1, "1"),
    ("cpt, mergemed, 2 workers (torchrun, 1 thread each)", 2, None),
)


def worker_rows(model: Path, scratch: Path, steps: int, repeats: int) -> dict:
    rows = {}
    for label, workers, threads in WORKER_RUNS:
        runs = []
        for repeat in range(repeats):
            print(f"running {label} ({repeat + 1}/{repeats}) ...", flush=True)
            output = scratch / f"workers-{workers}-{threads}-{repeat}"
            runs.append(run_workers(str(model), output, steps, workers, threads))
        rows[label] = median_row(runs)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--only", choices=("trl", "workers"), default=None)
    parser.add_argument("--no-record", action="store_true")
    arguments = parser.parse_args()
    from eval_speed import WORK, ensure_smollm2

    model = arguments.model or ensure_smollm2(WORK / "models" / "smollm2-135m-instruct")
    scratch = Path(tempfile.mkdtemp(prefix="train-speed-"))
    steps, repeats = arguments.steps, arguments.repeats
    load_before = os.getloadavg()[0]  # other work on the machine skews every figure
    rows = {}
    if arguments.only in (None, "trl"):
        rows |= trl_rows(model, scratch, steps, repeats)
    if arguments.only in (None, "workers"):
        rows |= worker_rows(model, scratch, steps, repeats)
    lines = [
        "| run | tokens | train s | tokens/s (median) | every run's tokens/s | vs plain trl "
        "| padding waste |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, row in rows.items():
        rate = row["tokens"] / row["seconds"]
        kind = label.split(",")[0]
        trl = rows.get(f"{kind}, plain trl")
        versus = f"{rate / (trl['tokens'] / trl['seconds']):.3f}x" if trl else "-"
        waste = f"{row['waste']:.2%}" if "waste" in row else "-"
        every = ", ".join(f"{r:,.0f}" for r in row["rates"])
        lines.append(
            f"| {label} | {row['tokens']:,.0f} | {row['seconds']:.1f} | {rate:,.0f} | {every} "
            f"| {versus} | {waste} |"
        )
    table = "\n".join(lines)
    print(table)
    if arguments.no_record:
        return
    from results_section import append_section

    settings = (
        f"- **settings**: float32, {steps} steps, micro-batch {BATCH}, median of {repeats} runs"
    )
    settings += f"; cpt: 9:1 general:medical, {SEQUENCE}-token packed sequences"
    if arguments.only in (None, "trl"):
        settings += (
            "; sft: PubMedQA train records, LoRA r=8 on all linear layers, completion-only loss"
        )
    settings += (
        "; tokens/s over the trainer's own train_runtime (mergemed: training.json's train_seconds)"
    )
    details = [settings, f"- **load average** before the runs: {load_before:.1f} (1 min)"]
    if arguments.only in (None, "workers"):
        details.append(
            "- **workers**: the same config file; 2 workers train 2 micro-batches per step "
            "(gloo on the CPU) and share this machine's cores with each other"
        )
    print(f"appended to {append_section(f'training speed, {model.name}, cpu', details, table)}")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_child":
        child()
    else:
        main()
