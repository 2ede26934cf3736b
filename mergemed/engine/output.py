"""Everything of a merged model folder but its weights: config, tokenizer, chat template."""

from __future__ import annotations

import copy
import errno
import json
import shutil
from pathlib import Path
from typing import Any

from mergemed.engine.prepare import MergeJob
from mergemed.errors import MergeError
from mergemed.io.architecture import layer_count_holder, set_layer_count
from mergemed.io.checkpoint import GENERATION_FILES, TOKENIZER_FILES, Checkpoint
from mergemed.recipe import Recipe
from mergemed.vocabulary import tokenizer_settings

CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + "
    "message['content'] + '<|im_end|>' + '\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
BUILTIN_TEMPLATES = {"chatml": CHATML_TEMPLATE}
"""Chat templates a recipe can name (``chat_template: chatml``)."""


def output_config(job: MergeJob) -> dict[str, Any]:
    """The merged model's ``config.json``: the reference model's, with the plan's layer count
    (per-layer lists follow their layers), the output dtype, the aligned vocabulary size and
    the tie setting."""
    checkpoints, plan, alignment = job.checkpoints, job.plan, job.alignment
    base = checkpoints[job.reference_model]
    config = copy.deepcopy(base.config)
    original_layers = base.num_layers
    set_layer_count(config, plan.num_layers)
    if plan.num_layers != original_layers or plan.layer_origins != list(range(plan.num_layers)):
        # Per-layer settings (layer_types, sliding-window flags...) follow their layers.
        holder = layer_count_holder(config)
        for key, value in list(holder.items()):
            if isinstance(value, list) and len(value) == original_layers:
                holder[key] = [value[origin] for origin in plan.layer_origins]
    dtype_name = str(job.output_dtype).removeprefix("torch.")
    present = [k for k in ("dtype", "torch_dtype") if k in config]
    for key in present or ["torch_dtype"]:
        config[key] = dtype_name
    if alignment is not None:
        for holder in (config, config.get("text_config")):
            if isinstance(holder, dict) and "vocab_size" in holder:
                holder["vocab_size"] = alignment.rows
    if plan.tie_word_embeddings is not None and "tie_word_embeddings" in config:
        config["tie_word_embeddings"] = plan.tie_word_embeddings
    elif plan.tie_word_embeddings is False and base.tie_word_embeddings:
        config["tie_word_embeddings"] = False
    return config


def write_model_files(folder: Path, job: MergeJob) -> dict[str, Any]:
    """Write the merged model's config (:func:`output_config`), tokenizer, generation config
    and chat template.

    Args:
        folder: the output folder (it exists).
        job: the prepared merge.

    Returns:
        Where each came from: the ``sources`` section of ``merge.json``.

    Raises:
        MergeError: the recipe's ``chat_template`` cannot be used.
        OSError: the folder cannot be written.
    """
    recipe, checkpoints, alignment = job.recipe, job.checkpoints, job.alignment
    config = output_config(job)
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")

    settings = tokenizer_settings(recipe)
    source = settings.source if settings is not None else "base"
    tokenizer_reference = job.reference_model if source in ("base", "union") else source
    tokenizer_folder = checkpoints[tokenizer_reference].folder
    copied = []
    if alignment is not None:
        alignment.output.tokenizer.save_pretrained(folder)
        copied = sorted(p.name for p in folder.iterdir() if p.name in TOKENIZER_FILES)
    for filename in (
        GENERATION_FILES if alignment is not None else TOKENIZER_FILES + GENERATION_FILES
    ):
        source_file = tokenizer_folder / filename
        if source_file.is_file():
            destination = folder / filename
            try:
                shutil.copyfile(source_file, destination)
            except OSError as error:
                # copyfile's error may name the source; a full disk is news about where it
                # could not write.
                if error.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
                    error.filename = str(destination)
                raise
            copied.append(filename)
    template_source = _apply_chat_template(folder, recipe, checkpoints, tokenizer_reference)
    return {
        "config": job.reference_model,
        "tokenizer": (
            f"{source} (built by vocabulary alignment)" if alignment else tokenizer_reference
        ),
        "tokenizer_files": copied,
        "chat_template": template_source,
    }


def read_chat_template(folder: Path) -> str | None:
    """A model folder's chat template (``chat_template.jinja`` or tokenizer_config.json)."""
    jinja = folder / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text()
    config = folder / "tokenizer_config.json"
    if config.is_file():
        try:
            template = json.loads(config.read_text()).get("chat_template")
        except ValueError:
            return None
        return template if isinstance(template, str) else None
    return None


def _apply_chat_template(
    folder: Path, recipe: Recipe, checkpoints: dict[str, Checkpoint], tokenizer_reference: str
) -> str | None:
    choice = recipe.chat_template
    if choice is None:
        if read_chat_template(folder):
            return f"{tokenizer_reference} (the tokenizer source)"
        chosen = _most_common_template(checkpoints)
        if chosen is None:
            return None
        # Never drop a parent's template silently: an instruct parent's template is kept.
        template, owner = chosen
        source = f"{owner} (the tokenizer source {tokenizer_reference!r} has none)"
    elif choice == "auto":
        chosen = _most_common_template(checkpoints)
        if chosen is None:
            return None
        template, owner = chosen
        source = f"auto ({owner})"
    elif choice in checkpoints:
        template = read_chat_template(checkpoints[choice].folder)
        if template is None:
            raise MergeError(f"chat_template: model {choice!r} has no chat template")
        source = choice
    elif choice in BUILTIN_TEMPLATES:
        template, source = BUILTIN_TEMPLATES[choice], choice
    elif "{{" in choice or "{%" in choice:
        template, source = choice, "recipe"
    else:
        raise MergeError(
            f"chat_template: expected auto, chatml, a model of the recipe or a Jinja template, "
            f"got {choice!r}"
        )
    (folder / "chat_template.jinja").write_text(template)
    config_path = folder / "tokenizer_config.json"
    if config_path.is_file():
        config = json.loads(config_path.read_text())
        config.pop("chat_template", None)
        config_path.write_text(json.dumps(config, indent=2) + "\n")
    return source


def _most_common_template(checkpoints: dict[str, Checkpoint]) -> tuple[str, str] | None:
    """The chat template most parents share and its first owner; None when none has one."""
    templates = [read_chat_template(c.folder) for c in checkpoints.values()]
    counted = [t for t in templates if t]
    if not counted:
        return None
    template = max(counted, key=counted.count)
    owner = next(r for r, t in zip(checkpoints, templates, strict=True) if t == template)
    return template, owner
