"""``mergemed demo``: the whole merge path on tiny random-weight models, on a CPU, offline.

Builds a tokenizer and two Llama-shaped parents (an "instruct" model and a "clinical" model
derived from it), plans and merges them with the bundled tiny recipe, then loads the merged
folder with transformers and generates a few tokens from a chat prompt.
"""

from __future__ import annotations

import time
from importlib import resources
from pathlib import Path

from rich.console import Console

from mergemed.engine import merge
from mergemed.plan import plan_recipe, plot_plan
from mergemed.recipe import load_recipe


def tiny_example_recipe_text() -> str:
    """The bundled tiny recipe (also shipped as ``recipes/tiny_example.yaml``)."""
    return resources.files("mergemed").joinpath("data/tiny_example.yaml").read_text()


def run_demo(workdir: str | Path = "mergemed-demo", console: Console | None = None) -> str:
    """Run the demo in ``workdir`` (created; its parents are reused if present).

    Returns:
        A short summary: where the merge is, its size and time, and a generated sample.
    """
    from mergemed.testing import build_tokenizer, make_random_model

    console = console or Console(stderr=True)
    started = time.time()
    workdir = Path(workdir).absolute()
    workdir.mkdir(parents=True, exist_ok=True)
    instruct, clinical = workdir / "instruct", workdir / "clinical"
    if not (instruct / "config.json").is_file():
        console.print("building the tiny tokenizer and the 'instruct' parent...")
        tokenizer = build_tokenizer(workdir / "tokenizer")
        make_random_model(instruct, "llama", seed=0, tokenizer_dir=tokenizer)
    if not (clinical / "config.json").is_file():
        console.print("deriving the 'clinical' parent (instruct + noise)...")
        make_random_model(clinical, base_dir=instruct, seed=1, perturbation=0.3)

    text = tiny_example_recipe_text().replace("mergemed-demo/", f"{workdir.as_posix()}/")
    recipe_path = workdir / "recipe.yaml"
    recipe_path.write_text(text)
    recipe = load_recipe(recipe_path)
    summary = plan_recipe(recipe)
    picture = plot_plan(summary, workdir / "plan.png")
    result = merge(recipe, workdir / "merged", overwrite=True)
    sample = _generate(result.output)
    return (
        f"merged {result.tensors} tensors in {result.seconds:.1f} s -> {result.output}\n"
        f"schedule plot -> {picture}\n"
        f"sample generation: {sample!r}\n"
        f"demo finished in {time.time() - started:.1f} s"
    )


def _generate(folder: Path) -> str:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder)
    messages = [{"role": "user", "content": "What is a fever?"}]
    prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    inputs = tokenizer(prompt, return_tensors="pt")
    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=8, do_sample=False)
    return tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
