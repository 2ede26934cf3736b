"""Training configs shared by the CPT and SFT tests (tiny models, the repository's data)."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
GENERAL = REPO / "mergemed" / "data" / "devils_dictionary.txt"
MEDICAL = REPO / "mergemed" / "evaluations" / "data" / "pubmedqa" / "train.jsonl"
PUBMEDQA = MEDICAL


def cpt_config(
    model: Path, output: Path, held_out_fraction: float = 0.05, **training: object
) -> str:
    """A CPT config: the general text and PubMedQA abstracts mixed 9:1, 256-token sequences."""
    settings = {
        "max_steps": 30,
        "micro_batch_size": 4,
        "learning_rate": 1.0e-3,
        "eval_steps": 10,
        "save_steps": 10,
        "logging_steps": 5,
        **training,
    }
    return textwrap.dedent(
        f"""\
        kind: cpt
        model: {{path: {model}}}
        data:
          sources:
            - {{name: general, path: {GENERAL}, weight: 9}}
            - {{name: medical, path: {MEDICAL}, text_field: contexts, weight: 1}}
          sequence_length: 256
          held_out_fraction: {held_out_fraction}
        training: {json.dumps(settings)}
        output: {{dir: {output}}}
        """
    )


def sft_config(model: Path, output: Path, lora: str = "{r: 8, alpha: 16}", **training) -> str:
    """An SFT config on the PubMedQA train records (LoRA r=8 unless ``lora`` says otherwise)."""
    settings = {
        "max_steps": 6,
        "micro_batch_size": 2,
        "learning_rate": 1.0e-3,
        "eval_steps": 3,
        "save_steps": 3,
        "logging_steps": 3,
        **training,
    }
    return textwrap.dedent(
        f"""\
        kind: sft
        model: {{path: {model}}}
        data: {{path: {PUBMEDQA}, format: pubmedqa, sequence_length: 4096, held_out_fraction: 0.02}}
        training: {json.dumps(settings)}
        lora: {lora}
        output: {{dir: {output}}}
        """
    )
