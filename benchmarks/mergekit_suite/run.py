"""mergekit's own configurations through mergekit 0.1.5 and mergemed, side by side.

Every configuration ``extract.py`` collected from mergekit's repository (``examples/``, the
README and ``docs/`` YAML, the configurations its tests build) is run by both tools on tiny local
models of the family it implies, twice: as written, and with ``dtype: float32`` for a numerical
comparison at 1e-6. Each gets one verdict:

* ``match``: both ran; same tensor names (or, where only the names on disk differ, the same
  models once transformers loads them), shapes, dtypes and layer count; in float32 every tensor
  within 1e-6 (as written, in bf16 or fp16, mergekit computes in that dtype and mergemed in
  float32, so values are only reported); mergemed's output loads in transformers with no
  missing or unexpected key; the same tokenizer vocabulary where the parents have tokenizers.
* ``match (structure)``: the same, values aside: methods with random masks draw them in
  another order (their tensor functions are compared with the same generator in
  ``tests/methods/test_methods.py``).
* ``match (mergekit incomplete)``: mergekit's output lacks tensors transformers needs (it drops
  a LLaVA checkpoint's language model); the tensors it wrote agree with mergemed's.
* ``match (mergekit float32)``: values agree, but mergekit stores the method's float32 result
  where the recipe asks for bf16/fp16 (its config.json still says the recipe's dtype).
* ``both refuse``: mergekit cannot run it either; its error is listed.
* ``mergemed only``: mergekit refuses, mergemed merges (the reason is listed).
* ``MISMATCH``, ``REFUSED`` (mergemed refuses what mergekit runs) and ``CRASH`` (a traceback
  instead of a one-line error) are failures.

    python benchmarks/mergekit_suite/run.py [--only SUBSTRING] [--write]

prints one line per configuration and a summary line; ``--write`` also replaces RESULTS.md.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import hashlib
import io
import json
import logging
import os
import re
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml

HERE = Path(__file__).parent
FLOAT32_TOLERANCE = 1e-6
STOCHASTIC = {"dare_ties", "dare_linear", "della", "della_linear"}


@dataclass
class Fixture:
    """A tiny model standing in for one placeholder name."""

    family: str
    layers: int = 2
    vocab: int = 64
    added_tokens: tuple[str, ...] | None = None  # None: no tokenizer files
    seed: int = 0


def _seed(name: str) -> int:
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:4], "little")


KNOWN_FIXTURES = {
    # mergekit's test fixtures, by name: family and sizes as its tests make them.
    **{f"model_{x}": Fixture("llama") for x in "abc"},
    **{f"granite_{x}": Fixture("granite") for x in "ab"},
    **{f"vlm_{x}": Fixture("llava") for x in "abc"},
    "gpt2_like": Fixture("gpt2", layers=12),
    "model_base": Fixture("llama", added_tokens=()),
    "model_base_chat": Fixture("llama", added_tokens=()),
    "model_chatml": Fixture("llama", vocab=66, added_tokens=("<|im_start|>", "<|im_end|>")),
    "model_padded": Fixture(
        "llama", added_tokens=("<UNUSED_0>", "<UNUSED_1>", "<UNUSED_2>", "<UNUSED_3>")
    ),
}


def fixture_for(name: str, layers: int | None) -> Fixture:
    """The tiny model a placeholder name implies: a known test fixture, else the family its
    name says (Mistral, Qwen2, GPT-2, else Llama) with the layers its configurations use."""
    if name in KNOWN_FIXTURES:
        fixture = copy.copy(KNOWN_FIXTURES[name])
    else:
        lowered = name.lower()
        family = next(
            (f for f in ("mistral", "qwen2", "gpt2", "llava") if f in lowered.replace("-", "")),
            "llama",
        )
        fixture = Fixture(family, layers=layers or 2)
    fixture.seed = _seed(name)
    return fixture


def _tokenizer(vocab: int, added: tuple[str, ...]):
    import tokenizers
    from transformers import PreTrainedTokenizerFast

    tokens = ["<unk>", "<s>", "</s>"] + [f"_tok_{i}" for i in range(3, vocab)]
    model = tokenizers.models.BPE(vocab={t: i for i, t in enumerate(tokens[:vocab])}, merges=[])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tokenizers.Tokenizer(model),
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
    )
    tokenizer.add_tokens(list(added))
    return tokenizer


def build_fixture(fixture: Fixture, folder: Path) -> Path:
    """Write the fixture's random model (and tokenizer) into ``folder``."""
    import transformers as tf

    torch.manual_seed(fixture.seed)
    text = dict(
        vocab_size=fixture.vocab,
        hidden_size=32,
        intermediate_size=48,
        num_attention_heads=16,
        num_hidden_layers=fixture.layers,
    )
    if fixture.family == "llama":
        model = tf.LlamaForCausalLM(tf.LlamaConfig(**text))
    elif fixture.family == "mistral":
        model = tf.MistralForCausalLM(tf.MistralConfig(**text, num_key_value_heads=4))
    elif fixture.family == "qwen2":
        model = tf.Qwen2ForCausalLM(tf.Qwen2Config(**text, num_key_value_heads=4))
    elif fixture.family == "granite":
        model = tf.GraniteForCausalLM(
            tf.GraniteConfig(**{**text, "num_attention_heads": 2}, num_key_value_heads=2)
        )
    elif fixture.family == "gpt2":
        config = tf.GPT2Config(
            n_embd=64, n_head=4, n_layer=fixture.layers, n_positions=128, vocab_size=512
        )
        model = tf.GPT2LMHeadModel(config)
    elif fixture.family == "llava":
        vision = tf.CLIPVisionConfig(
            image_size=32,
            patch_size=4,
            num_hidden_layers=2,
            num_attention_heads=2,
            hidden_size=64,
            intermediate_size=128,
        )
        config = tf.LlavaConfig(
            vision_config=vision, text_config=tf.LlamaConfig(**text), image_seq_length=16
        )
        model = tf.LlavaForConditionalGeneration(config)
    else:
        raise ValueError(f"unknown family {fixture.family!r}")
    model.save_pretrained(folder, safe_serialization=True)
    if fixture.added_tokens is not None:
        _tokenizer(
            fixture.vocab if fixture.vocab <= 64 else 64, fixture.added_tokens
        ).save_pretrained(folder)
    return folder


@dataclass
class Entry:
    """One configuration (or chain of named configurations) from mergekit's repository."""

    id: str
    documents: list  # parsed YAML documents (a chain when more than one has a name)
    error: str | None = None  # the YAML itself does not parse


def load_entries(path: Path = HERE / "configurations.yaml") -> list[Entry]:
    data = yaml.safe_load(path.read_text())
    entries = []
    for item in data["examples"] + data["documents"]:
        try:
            documents = [d for d in yaml.safe_load_all(item["text"]) if d is not None]
            entries.append(Entry(item["id"], documents))
        except yaml.YAMLError as error:
            reason = str(error).splitlines()[0]
            entries.append(Entry(item["id"], [], f"not YAML either tool can read ({reason})"))
    for item in data["tests"]:
        suffix = f" #{item['case']}" if "case" in item else ""
        entries.append(Entry(item["id"] + suffix, [item["config"]]))
    return entries


def _model_names(value, into: dict[str, int]) -> None:
    """Placeholder model names in a configuration, with the highest layer index they use."""
    if isinstance(value, dict):
        model = value.get("model")
        if isinstance(model, str):
            end = value.get("layer_range", [0, 0])[1] if "layer_range" in value else 0
            into[model] = max(into.get(model, 0), end if isinstance(end, int) else 0)
        for key, item in value.items():
            if key in ("base_model", "tokenizer_source", "source", "source_model") and isinstance(
                item, str
            ):
                if item not in ("base", "union"):
                    into.setdefault(item, 0)
            else:
                _model_names(item, into)
    elif isinstance(value, list):
        for item in value:
            _model_names(item, into)


def _bind(value, folders: dict[str, Path]):
    if isinstance(value, dict):
        return {k: _bind(v, folders) for k, v in value.items()}
    if isinstance(value, list):
        return [_bind(v, folders) for v in value]
    if isinstance(value, str) and value in folders:
        return str(folders[value])
    return value


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    line = text[0] if text else ""
    if len(line) > 160:
        line = line[:157] + "..."
    return f"{type(error).__name__}: {line}"


def run_mergekit(config: dict, output: Path) -> None:
    from mergekit.config import MergeConfiguration
    from mergekit.merge import run_merge
    from mergekit.options import MergeOptions

    configuration = MergeConfiguration.model_validate(copy.deepcopy(config))
    options = MergeOptions(
        write_model_card=False, copy_tokenizer=True, random_seed=0, lazy_unpickle=False
    )
    run_merge(configuration, str(output), options=options)


def run_mergemed(config: dict, output: Path) -> None:
    from mergemed.engine import merge
    from mergemed.recipe import load_recipe

    merge(load_recipe(copy.deepcopy(config)), output)


def _tensors(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    tensors = {}
    for shard in sorted(folder.glob("*.safetensors")):
        tensors.update(load_file(shard))
    return tensors


def _vocabulary(folder: Path) -> dict[str, int] | None:
    if not (folder / "tokenizer.json").exists() and not (folder / "tokenizer_config.json").exists():
        return None
    from transformers import AutoTokenizer

    return dict(AutoTokenizer.from_pretrained(folder).get_vocab())


def loading_problems(folder: Path) -> str | None:
    """Missing or unexpected keys when transformers loads ``folder``, or None."""
    _, missing, unexpected = _loaded(folder)
    if missing or unexpected:
        return f"missing {sorted(missing)[:3]} unexpected {sorted(unexpected)[:3]}"
    return None


def _layers(folder: Path) -> int | None:
    from mergemed.io.architecture import config_num_layers

    return config_num_layers(json.loads((folder / "config.json").read_text()))


def _loaded(folder: Path) -> tuple[dict[str, torch.Tensor], list[str], list[str]]:
    """The state dict transformers builds from ``folder`` (with the class its config names)
    and the keys it found missing and unexpected."""
    import transformers

    config = json.loads((folder / "config.json").read_text())
    model_class = getattr(transformers, config["architectures"][0])
    with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
        model, info = model_class.from_pretrained(folder, dtype="auto", output_loading_info=True)
    state = {k: v.detach() for k, v in model.state_dict().items()}
    return state, list(info["missing_keys"]), list(info["unexpected_keys"])


@dataclass
class Comparison:
    """How two outputs differ: ``problem`` is None when they agree."""

    problem: str | None = None
    largest: float = 0.0
    notes: list[str] = field(default_factory=list)
    float32_by_mergekit: bool = False
    mergekit_incomplete: bool = False


def compare(ours: Path, theirs: Path, tolerance: float | None, has_tokenizer: bool) -> Comparison:
    """Compare two outputs: tensor names (or, where only the names on disk differ, the models
    transformers loads from them), shapes, dtypes, values within ``tolerance`` (None: values
    not compared), layer count, tokenizer vocabulary and a clean load of mergemed's."""
    result = Comparison()
    mine, reference = _tensors(ours), _tensors(theirs)
    if set(mine) != set(reference):
        written = len(reference)
        (mine, our_missing, _), (reference, their_missing, _) = _loaded(ours), _loaded(theirs)
        if our_missing:
            result.problem = (
                f"transformers finds {len(our_missing)} keys missing: {our_missing[:3]}"
            )
            return result
        result.notes.append(
            "names on disk differ (mergekit renames to its table's names); the models "
            "transformers loads from both are compared"
        )
        if their_missing:
            result.mergekit_incomplete = True
            result.notes.append(
                f"mergekit 0.1.5 writes {written} tensors and drops the rest: transformers "
                f"loads its output with {len(their_missing)} missing keys (e.g. "
                f"{their_missing[0]}), initialised at random; mergemed writes them all and "
                "the tensors mergekit wrote agree"
            )
            reference = {k: v for k, v in reference.items() if k not in their_missing}
            mine = {k: v for k, v in mine.items() if k in reference}
    dtypes = {(mine[n].dtype, t.dtype) for n, t in reference.items() if mine[n].dtype != t.dtype}
    if dtypes and all(theirs_dtype == torch.float32 for _, theirs_dtype in dtypes):
        result.float32_by_mergekit = True
    for name, tensor in reference.items():
        if mine[name].shape != tensor.shape or (
            mine[name].dtype != tensor.dtype and not result.float32_by_mergekit
        ):
            result.problem = (
                f"{name}: {tuple(mine[name].shape)} {mine[name].dtype} vs "
                f"{tuple(tensor.shape)} {tensor.dtype}"
            )
            return result
        if not tensor.is_floating_point() or not tensor.numel():
            continue
        difference = (mine[name].double() - tensor.double()).abs().max().item()
        result.largest = max(result.largest, difference)
        if tolerance is not None and difference > tolerance:
            result.problem = f"{name}: max |difference| {difference:.3g}"
            return result
    if _layers(ours) != _layers(theirs):
        result.problem = f"layer count {_layers(ours)} vs {_layers(theirs)}"
        return result
    if has_tokenizer and _vocabulary(ours) != _vocabulary(theirs):
        result.problem = "tokenizer vocabularies differ"
        return result
    problem = loading_problems(ours)
    if problem:
        result.problem = f"transformers: {problem}"
    return result


@dataclass
class Outcome:
    """The verdict on one configuration."""

    id: str
    verdict: str
    detail: str = ""
    float32_difference: float | None = None
    method: str | None = None
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def failed(self) -> bool:
        return self.verdict in ("MISMATCH", "REFUSED", "CRASH")


def _chain(entry: Entry) -> list[tuple[str | None, dict]]:
    """The entry's merges in order: ``(name, config)``; a document without ``name`` last."""
    return [(d.pop("name", None), d) for d in copy.deepcopy(entry.documents) if isinstance(d, dict)]


def _float32(config: dict) -> dict:
    config = copy.deepcopy(config)
    config["dtype"] = "float32"
    config.pop("out_dtype", None)
    return config


def _run_chain(tool, chain, folders: dict[str, Path], output: Path) -> tuple[Path, float]:
    """Run each stage with ``tool``; a named stage's output stands for its name afterwards."""
    folders = dict(folders)
    started = time.perf_counter()
    final = output
    for index, (name, config) in enumerate(chain):
        final = output if index == len(chain) - 1 else output.parent / f"{output.name}-{name}"
        tool(_bind(config, folders), final)
        if name:
            folders[name] = final
    return final, time.perf_counter() - started


def layer_counts_of(entries: list[Entry]) -> dict[str, int]:
    """The layer count each placeholder name implies across all configurations: the highest
    ``layer_range`` end naming it, else the highest of the models it is merged with (a
    ``models:`` merge needs equal counts), else none (the family's default)."""
    counts: dict[str, int] = {}
    groups = []
    for entry in entries:
        for document in entry.documents:
            names: dict[str, int] = {}
            _model_names(document, names)
            groups.append(names)
            for name, end in names.items():
                counts[name] = max(counts.get(name, 0), end)
    for names in groups:
        widest = max((counts[n] for n in names), default=0)
        for name in names:
            counts[name] = counts[name] or widest
    return {name: count for name, count in counts.items() if count}


def evaluate(entry: Entry, models: Path, work: Path, layer_counts: dict[str, int]) -> Outcome:
    """Run one entry through both tools, as written and in float32, and compare."""
    from mergemed.errors import MergemedError

    if entry.error:
        return Outcome(entry.id, "both refuse", entry.error)
    chain = _chain(entry)
    if not chain:
        return Outcome(entry.id, "both refuse", "no configuration document")
    names: dict[str, int] = {}
    for _, config in chain:
        _model_names(config, names)
    stage_names = {name for name, _ in chain if name}
    folders = {}
    for name in names:
        if name in stage_names:
            continue
        folder = models / re.sub(r"[^A-Za-z0-9_.-]", "_", name)
        if not folder.exists():
            build_fixture(fixture_for(name, layer_counts.get(name)), folder)
        folders[name] = folder
    methods = {c.get("merge_method") for _, c in chain}
    stochastic = bool(methods & STOCHASTIC)
    outcome = Outcome(entry.id, "match")
    notes: list[str] = []
    written_in_float32 = all(c.get("dtype") in (None, "float32") for _, c in chain) and not any(
        c.get("out_dtype") for _, c in chain
    )  # (the tiny models are stored in float32: the two variants would be the same runs)
    variants = ("float32",) if written_in_float32 else ("written", "float32")
    for variant in variants:
        staged = chain if variant == "written" else [(n, _float32(c)) for n, c in chain]
        results = {}
        for label, tool in (("mergekit", run_mergekit), ("mergemed", run_mergemed)):
            output = work / f"{variant}-{label}"
            try:
                with _quiet():
                    final, seconds = _run_chain(tool, staged, folders, output)
                results[label] = final
                outcome.seconds[f"{label}-{variant}"] = seconds
            except MergemedError as error:
                results[label] = f"{type(error).__name__}: {error}"
            except Exception as error:
                if label == "mergemed":
                    where = traceback.extract_tb(error.__traceback__)[-1]
                    detail = f"{_first_line(error)} at {Path(where.filename).name}:{where.lineno}"
                    return Outcome(entry.id, "CRASH", detail)
                results[label] = _first_line(error)
        theirs, ours = results["mergekit"], results["mergemed"]
        if isinstance(theirs, str) and isinstance(ours, str):
            return Outcome(entry.id, "both refuse", f"mergekit: {theirs} | mergemed: {ours}")
        if isinstance(theirs, str):
            return Outcome(entry.id, "mergemed only", f"mergekit: {theirs}")
        if isinstance(ours, str):
            return Outcome(entry.id, "REFUSED", ours)
        tolerance = FLOAT32_TOLERANCE if variant == "float32" and not stochastic else None
        reference = next(iter(folders.values()), None)
        has_tokenizer = reference is not None and (reference / "tokenizer_config.json").exists()
        comparison = compare(ours, theirs, tolerance, has_tokenizer)
        if variant == "float32":
            outcome.float32_difference = comparison.largest
        if comparison.problem:
            return Outcome(
                entry.id, "MISMATCH", f"{variant}: {comparison.problem}", comparison.largest
            )
        notes.extend(n for n in comparison.notes if n not in notes)
        if comparison.mergekit_incomplete:
            outcome.verdict = "match (mergekit incomplete)"
        if comparison.float32_by_mergekit:
            outcome.verdict = "match (mergekit float32)"
            dtype = chain[-1][1].get("dtype")
            notes.append(
                f"mergekit 0.1.5 stores this method's float32 result although the recipe says "
                f"dtype: {dtype} (and its config.json says {dtype}); mergemed stores {dtype}"
            )
    if stochastic:
        outcome.verdict = "match (structure)"
        notes.append("random masks: values compared by the tensor-function test")
    outcome.detail = "; ".join(notes)
    return outcome


@contextlib.contextmanager
def _quiet():
    logging.disable(logging.WARNING)
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        try:
            yield
        finally:
            logging.disable(logging.NOTSET)


def run_suite(only: str | None = None, echo=print) -> list[Outcome]:
    """Every entry's outcome, each echoed as one line as it finishes."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    outcomes = []
    with tempfile.TemporaryDirectory(prefix="mergekit-suite-") as scratch:
        models = Path(scratch) / "models"
        models.mkdir()
        entries = load_entries()
        layer_counts = layer_counts_of(entries)
        for index, entry in enumerate(entries):
            if only and only not in entry.id:
                continue
            work = Path(scratch) / f"run-{index}"
            work.mkdir()
            outcome = evaluate(entry, models, work, layer_counts)
            documents = [d for d in entry.documents if isinstance(d, dict)]
            outcome.method = documents[-1].get("merge_method") if documents else None
            outcome.detail = outcome.detail.replace(f"{models}/", "")
            outcomes.append(outcome)
            shown = (
                f"  max |diff| fp32 {outcome.float32_difference:.2g}"
                if outcome.float32_difference is not None
                else ""
            )
            echo(f"{outcome.verdict:<18} {outcome.id}{shown}  {outcome.detail}".rstrip())
    return outcomes


def summary(outcomes: list[Outcome]) -> str:
    counts: dict[str, int] = {}
    for outcome in outcomes:
        counts[outcome.verdict] = counts.get(outcome.verdict, 0) + 1
    order = [
        "match",
        "match (structure)",
        "match (mergekit incomplete)",
        "match (mergekit float32)",
        "mergemed only",
        "both refuse",
        "MISMATCH",
        "REFUSED",
    ]
    parts = [f"{counts.get(v, 0)} {v}" for v in order] + (
        [f"{counts['CRASH']} CRASH"] if "CRASH" in counts else []
    )
    return f"{len(outcomes)} configurations from mergekit's repository: " + ", ".join(parts)


def _per_method(outcomes: list[Outcome]) -> list[str]:
    ran: dict[str, list[Outcome]] = {}
    for outcome in outcomes:
        if outcome.verdict.startswith("match") and outcome.method:
            ran.setdefault(outcome.method, []).append(outcome)
    rows = []
    for method, group in sorted(ran.items()):
        if method in STOCHASTIC:
            largest = "random masks (structure)"
        else:
            largest = f"{max(o.float32_difference or 0.0 for o in group):.2g}"
        rows.append(f"| {method} | {len(group)} | {largest} |")
    return rows


def write_results(outcomes: list[Outcome], path: Path = HERE / "RESULTS.md") -> None:
    from importlib.metadata import version

    source = yaml.safe_load((HERE / "configurations.yaml").read_text())["source"]
    lines = [
        "# mergekit's configurations through mergekit and mergemed",
        "",
        f"Configurations: {source}. Oracle: mergekit {version('mergekit')}; "
        f"mergemed {version('mergemed')}. Written by "
        f"`python benchmarks/mergekit_suite/run.py --write` on {time.strftime('%Y-%m-%d')}.",
        "",
        f"**{summary(outcomes)}**",
        "",
        "Per method, over the configurations both tools ran (largest float32 difference of any",
        "tensor; methods with random masks are compared by structure here and by their tensor",
        "function with the same generator in `tests/methods/test_methods.py`):",
        "",
        "| method | configurations run by both | largest fp32 difference |",
        "|---|---|---|",
        *_per_method(outcomes),
        "",
        "| verdict | configuration | max fp32 difference | detail |",
        "|---|---|---|---|",
    ]
    for o in outcomes:
        difference = "" if o.float32_difference is None else f"{o.float32_difference:.2g}"
        detail = o.detail.replace("|", "\\|")
        lines.append(f"| {o.verdict} | `{o.id}` | {difference} | {detail} |")
    path.write_text("\n".join(lines) + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", help="run the configurations whose id contains this")
    parser.add_argument("--write", action="store_true", help="replace RESULTS.md")
    arguments = parser.parse_args()
    outcomes = run_suite(arguments.only)
    print(summary(outcomes))
    if arguments.write:
        write_results(outcomes)
    return 1 if any(o.failed for o in outcomes) else 0


if __name__ == "__main__":
    sys.exit(main())
