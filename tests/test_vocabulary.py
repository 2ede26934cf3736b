"""Vocabulary alignment: parents whose tokenizers differ, merged like mergekit 0.1.5 does.

The parents are tiny Llama-shaped models built here, whose tokenizers (made with the
``tokenizers`` library) differ by added tokens:

- ``a``: the shared 512-token tokenizer, 512 rows;
- ``b``: + ``myocardial``, ``<clin_x>`` and the special ``<|clin|>``, rows padded to 520;
- ``c``: + ``<clin_x>``, ``cardio`` and the special ``<|sep|>``, 515 rows;
- ``d``: + two tokens past its 512 rows (a tokenizer longer than the embedding);
- ``e``: a 530-token BPE (18 more merges, as when a clinical model extends its vocabulary)
  + the special ``<|note|>``.

mergekit numbers the tokens a union adds differently from run to run, so rows are compared
token by token.
"""

from __future__ import annotations

import copy
import json
import logging
import re
from pathlib import Path

import pytest
import torch
import yaml
from helpers import load_model_tensors, run_cli
from safetensors.torch import load_file, save_file
from tokenizers import AddedToken

from mergemed.engine import merge, merge_to_memory
from mergemed.errors import MergemedError, RecipeError
from mergemed.recipe import load_recipe
from mergemed.synthetic import build_tokenizer, make_random_model
from mergemed.vocabulary import is_vocabulary_tensor

mergekit_config = pytest.importorskip("mergekit.config")
mergekit_merge = pytest.importorskip("mergekit.merge")
mergekit_options = pytest.importorskip("mergekit.options")

TOLERANCE = 1e-6

PARENTS = {
    "a": {"ordinary": [], "special": [], "rows": None},
    "b": {"ordinary": ["myocardial", "<clin_x>"], "special": ["<|clin|>"], "rows": 520},
    "c": {"ordinary": ["<clin_x>", "cardio"], "special": ["<|sep|>"], "rows": None},
    "d": {"ordinary": ["unused_1", "unused_2"], "special": [], "rows": 512},
    "e": {"ordinary": [], "special": ["<|note|>"], "rows": None, "bpe_size": 530},
}


def _resize_vocabulary(folder: Path, rows: int, seed: int) -> None:
    """Cut or pad (with random rows) the vocabulary tensors and config to ``rows``."""
    generator = torch.Generator().manual_seed(seed)
    for path in folder.glob("*.safetensors"):
        tensors = load_file(path)
        for name, tensor in tensors.items():
            if is_vocabulary_tensor(name):
                if tensor.shape[0] >= rows:
                    tensors[name] = tensor[:rows].contiguous()
                else:
                    extra = torch.randn(
                        rows - tensor.shape[0], tensor.shape[1], generator=generator
                    )
                    tensors[name] = torch.cat([tensor, 0.02 * extra.to(tensor.dtype)])
        save_file(tensors, path, metadata={"format": "pt"})
    config = json.loads((folder / "config.json").read_text())
    config["vocab_size"] = rows
    (folder / "config.json").write_text(json.dumps(config, indent=2))


@pytest.fixture(scope="module")
def parents(tmp_path_factory, tiny_tokenizer_dir) -> dict[str, Path]:
    from transformers import AutoTokenizer

    root = tmp_path_factory.mktemp("vocabulary-parents")
    folders = {}
    for seed, (name, spec) in enumerate(PARENTS.items()):
        source = tiny_tokenizer_dir
        if "bpe_size" in spec:
            source = build_tokenizer(root / f"bpe-{name}", vocab_size=spec["bpe_size"])
        tokenizer = AutoTokenizer.from_pretrained(source)
        if spec["ordinary"]:
            tokenizer.add_tokens(spec["ordinary"])
        if spec["special"]:
            tokenizer.add_tokens(
                [AddedToken(t, special=True) for t in spec["special"]], special_tokens=True
            )
        tokenizer_dir = root / f"tokenizer-{name}"
        tokenizer.save_pretrained(tokenizer_dir)
        folder = make_random_model(root / name, "llama", seed=seed, tokenizer_dir=tokenizer_dir)
        if spec["rows"]:
            _resize_vocabulary(folder, spec["rows"], seed)
        folders[name] = folder
    return folders


def _recipe(
    parents, method: str, tokenizer: dict | None, base: str = "a", members: str | None = None
) -> dict:
    if members is None:
        members = {"linear": "abc", "task_arithmetic": "abc", "slerp": "ab", "ties": "abc"}[method]
    if base not in members:
        members = base + members[1:]
    weights = {"a": 0.5, "b": 0.3, "c": 0.2, "d": 0.5, "e": 0.2}
    recipe: dict = {"merge_method": method, "base_model": str(parents[base]), "dtype": "float32"}
    if method == "slerp":
        recipe["models"] = [{"model": str(parents[m])} for m in members]
        recipe["parameters"] = {"t": [0.2, 0.8]}
    else:
        recipe["models"] = [
            {"model": str(parents[m]), "parameters": {"weight": weights[m]}}
            for m in members
            if not (method in ("task_arithmetic", "ties") and m == base)
        ]
        if method in ("task_arithmetic", "ties"):
            recipe["models"].append({"model": str(parents[base])})
    if tokenizer is not None:
        recipe["tokenizer"] = tokenizer
    return recipe


def _mergekit(recipe: dict, output: Path) -> None:
    configuration = mergekit_config.MergeConfiguration.model_validate(copy.deepcopy(recipe))
    options = mergekit_options.MergeOptions(
        write_model_card=False, random_seed=0, lazy_unpickle=False
    )
    logging.disable(logging.WARNING)
    try:
        mergekit_merge.run_merge(configuration, str(output), options=options)
    finally:
        logging.disable(logging.NOTSET)


def _vocab(folder: Path) -> dict[str, int]:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder).get_vocab()


def _assert_same_as_mergekit(ours: Path, theirs: Path) -> None:
    our_vocab, their_vocab = _vocab(ours), _vocab(theirs)
    assert set(our_vocab) == set(their_vocab)
    mine, reference = load_model_tensors(ours), load_model_tensors(theirs)
    assert set(mine) == set(reference)
    tokens = sorted(their_vocab)
    our_rows = torch.tensor([our_vocab[t] for t in tokens])
    their_rows = torch.tensor([their_vocab[t] for t in tokens])
    for name, tensor in reference.items():
        assert mine[name].shape == tensor.shape, name
        if is_vocabulary_tensor(name):
            # Rows matched token by token, then the padding rows (all the same mean row).
            difference = (mine[name][our_rows] - tensor[their_rows]).abs().max().item()
            padding = len(their_vocab)
            if tensor.shape[0] > padding:
                pad_difference = (mine[name][padding:] - tensor[padding:]).abs().max().item()
                difference = max(difference, pad_difference)
        else:
            difference = (mine[name] - tensor).abs().max().item()
        assert difference <= TOLERANCE, f"{name}: max |difference| {difference:.3g}"
    our_config = json.loads((ours / "config.json").read_text())
    their_config = json.loads((theirs / "config.json").read_text())
    assert our_config["vocab_size"] == their_config["vocab_size"]


def _overrides(parents, new_tokens: bool) -> dict:
    """Per-token settings of every kind; ``new_tokens`` adds tokens no parent has."""
    tokens = {
        # forced: every parent takes the zero row, even those that have the token
        "myocardial": {"source": {"kind": "zero"}, "force": True},
        # a token two parents have, taken from one of them instead of averaged
        "<clin_x>": {"source": str(parents["c"])},
        # every parent has "the": forced to b's row
        "the": {"source": str(parents["b"]), "force": True},
        # another token's row
        "cardio": {"source": {"kind": "model_token", "model": str(parents["a"]), "token": "Ġthe"}},
    }
    if new_tokens:
        tokens["<|new|>"] = {
            "source": {"kind": "model_token", "model": str(parents["b"]), "token_id": 5}
        }
    return tokens


CASES = {
    # name: (method, tokenizer section, base[, members])
    "union": ("linear", {"source": "union"}, "a"),
    "union-extended-bpe": ("linear", {"source": "union"}, "a", "abe"),
    "model-extended-bpe": ("task_arithmetic", {"source": "e"}, "a", "abe"),
    "union-padded": ("linear", {"source": "union", "pad_to_multiple_of": 8}, "a"),
    "union-overrides": ("linear", "overrides+new", "a"),
    "base": ("linear", {"source": "base"}, "a"),
    # mergekit 0.1.5 crashes (KeyError) when a base-sourced vocabulary gains tokens, so the
    # base cases override existing tokens only.
    "base-overrides": ("linear", "overrides", "a"),
    "model": ("linear", {"source": "b"}, "a"),
    "model-overrides": ("linear", "overrides+new:b", "a"),
    "union-task-arithmetic": ("task_arithmetic", {"source": "union"}, "a"),
    "union-slerp": ("slerp", {"source": "union", "pad_to_multiple_of": 64}, "a"),
    "union-ties-tokens-past-rows": ("ties", {"source": "union"}, "d"),
    "base-tokens-past-rows": ("linear", {"source": "base"}, "d"),
}


def _tokenizer_section(parents, spec) -> dict:
    if isinstance(spec, dict):
        section = dict(spec)
        if section["source"] in parents:
            section["source"] = str(parents[section["source"]])
        return section
    if spec == "overrides":
        # Tokens the base has (mergekit cannot add tokens to a base-sourced vocabulary).
        tokens = {
            "the": {"source": str(parents["b"]), "force": True},
            "Ġthe": {"source": {"kind": "zero"}, "force": True},
            "<|im_end|>": {
                "source": {"kind": "model_token", "model": str(parents["c"]), "token": "<|sep|>"},
                "force": True,
            },
        }
        return {"source": "base", "tokens": tokens}
    source = "union"
    if spec.endswith(":b"):
        source = str(parents["b"])
    return {"source": source, "tokens": _overrides(parents, "new" in spec)}


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(CASES))
def test_matches_mergekit_token_by_token(case, parents, tmp_path):
    method, spec, base, *members = CASES[case]
    recipe = _recipe(parents, method, _tokenizer_section(parents, spec), base, *(members or [None]))
    if method == "ties":
        recipe["parameters"] = {"density": 0.7}
    _mergekit(recipe, tmp_path / "mergekit")
    # A small chunk size: every other tensor still streams while the vocabulary is aligned.
    result = merge(load_recipe(recipe), tmp_path / "mergemed", chunk_elements=1000)
    assert result.report["vocabulary"]["aligned"]
    # (TIES sparsifies whole tensors, so nothing of it streams.)
    assert (result.report["streamed_tensors"] > 0) == (method != "ties")
    _assert_same_as_mergekit(tmp_path / "mergemed", tmp_path / "mergekit")


def test_union_numbering_is_documented_and_stable(parents, tmp_path):
    recipe = _recipe(parents, "linear", {"source": "union"}, members="abe")
    first = merge(load_recipe(recipe), tmp_path / "first")
    second = merge(load_recipe(recipe), tmp_path / "second")
    assert (first.output / "tokenizer.json").read_bytes() == (
        second.output / "tokenizer.json"
    ).read_bytes()
    vocab = _vocab(first.output)
    # Base ids unchanged; then the ordinary (BPE) tokens the base lacks, parent by parent in
    # recipe order and by id within a parent; then the added tokens, in the same order.
    base_vocab = _vocab(parents["a"])
    assert all(vocab[t] == i for t, i in base_vocab.items())
    extended = _vocab(parents["e"])
    bpe = sorted((t for t in extended if t not in base_vocab and t != "<|note|>"), key=extended.get)
    assert len(bpe) == 18
    added = ["myocardial", "<clin_x>", "<|clin|>", "<|note|>"]  # b's, then e's
    new = sorted((i, t) for t, i in vocab.items() if t not in base_vocab)
    assert [t for _, t in new] == bpe + added
    assert [i for i, _ in new] == list(range(512, 512 + len(bpe) + len(added)))


def test_merged_model_loads_and_tokenizes_the_new_tokens(parents, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    recipe = _recipe(parents, "linear", {"source": "union", "pad_to_multiple_of": 8})
    result = merge(load_recipe(recipe), tmp_path / "out")
    tokenizer = AutoTokenizer.from_pretrained(result.output)
    model = AutoModelForCausalLM.from_pretrained(result.output)
    assert model.config.vocab_size == 520 == model.get_input_embeddings().weight.shape[0]
    ids = tokenizer("<|clin|> <|sep|>", add_special_tokens=False)["input_ids"]
    assert tokenizer.convert_tokens_to_ids(["<|clin|>", "<|sep|>"])[0] in ids
    logits = model(torch.tensor([ids])).logits
    assert logits.shape[-1] == 520 and torch.isfinite(logits).all()


def test_report_lists_each_parents_filled_tokens(parents, tmp_path):
    tokens = _overrides(parents, new_tokens=True)
    # No source: mergekit's rules apply (mergekit 0.1.5 itself raises NotImplementedError).
    tokens["<|blank|>"] = {}
    recipe = _recipe(parents, "linear", {"source": "union", "tokens": tokens})
    report = merge(load_recipe(recipe), tmp_path / "out").report["vocabulary"]
    a, b, c = (str(parents[n]) for n in "abc")
    assert report["added"][b]["tokens"] == ["myocardial", "<clin_x>", "<|clin|>"]
    assert report["added"][c]["tokens"] == ["cardio", "<|sep|>"]
    assert report["added"]["recipe"]["tokens"] == ["<|new|>", "<|blank|>"]
    assert report["parent_rows"] == {a: 512, b: 520, c: 515}
    for parent in (a, b, c):
        assert set(report["parents"][parent]["forced"]["tokens"]) == {"myocardial", "the"}
    # a lacks <|clin|> (only b has it) and <|sep|> (only c); <|blank|> is in no parent.
    assert report["parents"][a][f"copied_from:{b}"]["tokens"] == ["<|clin|>"]
    assert report["parents"][a][f"other_token_of:{b}"]["tokens"] == ["<|new|>"]
    assert report["parents"][b][f"other_token_of:{a}"]["tokens"] == ["cardio"]
    assert report["parents"][a][f"copied_from:{c}"]["tokens"] == ["<clin_x>", "<|sep|>"]
    assert report["parents"][a]["zero_filled"]["tokens"] == ["<|blank|>"]
    plain = merge(load_recipe(_recipe(parents, "linear", {"source": "union"})), tmp_path / "plain")
    assert plain.report["vocabulary"]["parents"][a]["averaged"]["tokens"] == ["<clin_x>"]


def test_in_memory_merge_aligns_like_the_written_one(parents, tmp_path):
    recipe = load_recipe(_recipe(parents, "linear", {"source": "union", "pad_to_multiple_of": 8}))
    written = load_model_tensors(merge(recipe, tmp_path / "out").output)
    held = merge_to_memory(recipe)
    try:
        assert set(held.state_dict) == set(written)
        for name, tensor in written.items():
            assert torch.equal(held.state_dict[name], tensor), name
        assert json.loads((held.folder / "config.json").read_text())["vocab_size"] == 520
    finally:
        held.cleanup()


# --------------------------------------------------------------------------------------------
# The check before merging


def test_differing_vocabularies_stop_with_the_lines_that_fix_it(parents, tmp_path):
    recipe = _recipe(parents, "linear", None)
    recipe_path = tmp_path / "recipe.yaml"
    recipe_path.write_text(yaml.safe_dump(recipe))
    completed = run_cli("merge", recipe_path, "-o", tmp_path / "out")
    assert completed.returncode == 2
    message = completed.stderr.strip()
    assert len(message.splitlines()) == 1, message
    assert "vocabularies differ" in message and "'myocardial'" in message
    assert "520" in message  # the padded parent's row count
    assert not (tmp_path / "out").exists()
    assert not list(tmp_path.glob(".out*"))

    suggested = re.findall(r"`(tokenizer: \{source: \w+\})`", message)
    assert suggested == ["tokenizer: {source: union}", "tokenizer: {source: base}"]
    for index, line in enumerate(suggested):
        fixed = tmp_path / f"fixed{index}.yaml"
        fixed.write_text(recipe_path.read_text() + line + "\n")
        completed = run_cli("merge", fixed, "-o", tmp_path / f"out{index}")
        assert completed.returncode == 0, completed.stderr
        assert (tmp_path / f"out{index}" / "model.safetensors").is_file()


def test_identical_vocabularies_merge_without_a_tokenizer_section(parents, tmp_path):
    recipe = _recipe(parents, "slerp", None)
    recipe["models"] = [{"model": str(parents["a"])}, {"model": str(parents["a"])}]
    result = merge(load_recipe(recipe), tmp_path / "out")
    assert result.report["vocabulary"]["aligned"] is False
    assert (tmp_path / "out" / "tokenizer.json").read_bytes() == (
        parents["a"] / "tokenizer.json"
    ).read_bytes()


def test_legacy_tokenizer_source_union_aligns(parents, tmp_path):
    recipe = _recipe(parents, "linear", None)
    recipe["tokenizer_source"] = "union"
    result = merge(load_recipe(recipe), tmp_path / "out")
    assert result.report["vocabulary"]["tokens"] == 517


# --------------------------------------------------------------------------------------------
# Bad input


@pytest.mark.parametrize(
    ("tokenizer", "expected"),
    [
        ({"source": "union", "pad_to_multiple_of": 0}, "tokenizer.pad_to_multiple_of"),
        ({"source": "elsewhere"}, "tokenizer.source: expected 'union', 'base'"),
        (
            {"tokens": {"x": {"source": "not-a-parent"}}},
            "tokenizer.tokens.x.source: expected one of the recipe's models",
        ),
        (
            {"tokens": {"x": {"source": {"kind": "model_token", "model": "nope", "token": "a"}}}},
            "tokenizer.tokens.x.source.model",
        ),
        (
            {"tokens": {"x": {"source": {"kind": "model_token", "model": "A"}}}},
            "exactly one of token and token_id",
        ),
        ({"tokens": {"x": {"force": True}}}, "force needs a source"),
    ],
)
def test_bad_tokenizer_section_is_one_line(tokenizer, expected, tmp_path):
    recipe = {
        "merge_method": "linear",
        "models": [{"model": "A", "parameters": {"weight": 1.0}}],
        "tokenizer": tokenizer,
    }
    with pytest.raises(RecipeError) as error:
        load_recipe(recipe)
    assert expected in str(error.value)
    assert "\n" not in str(error.value)


def test_tokenizer_and_tokenizer_source_together_are_refused():
    with pytest.raises(RecipeError, match="either tokenizer_source or tokenizer"):
        load_recipe(
            {
                "merge_method": "linear",
                "models": [{"model": "A", "parameters": {"weight": 1.0}}],
                "tokenizer_source": "base",
                "tokenizer": {"source": "union"},
            }
        )


def test_token_id_out_of_range_names_the_key(parents, tmp_path):
    tokens = {
        "<|new|>": {"source": {"kind": "model_token", "model": str(parents["b"]), "token_id": 520}}
    }
    recipe = _recipe(parents, "linear", {"source": "union", "tokens": tokens})
    with pytest.raises(MergemedError) as error:
        merge(load_recipe(recipe), tmp_path / "out")
    message = str(error.value)
    assert "tokenizer.tokens['<|new|>'].source.token_id: 520 is out of range" in message
    assert "520 embedding rows" in message
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out*"))


def test_different_hidden_sizes_are_not_called_a_vocabulary_problem(
    parents, tiny_tokenizer_dir, tmp_path
):
    wide = make_random_model(
        tmp_path / "wide", "llama-eval", seed=3, tokenizer_dir=tiny_tokenizer_dir
    )
    recipe = {
        "merge_method": "linear",
        "models": [
            {"model": str(parents["a"]), "parameters": {"weight": 0.5}},
            {"model": str(wide), "parameters": {"weight": 0.5}},
        ],
        "tokenizer": {"source": "union"},
    }
    with pytest.raises(MergemedError, match="hidden sizes differ") as error:
        merge(load_recipe(recipe), tmp_path / "out")
    assert "not different vocabularies" in str(error.value)


# --------------------------------------------------------------------------------------------
# Chat template


def test_instruct_parents_template_is_never_dropped(parents, tmp_path):
    """The base (a clinical model) has no template; the instruct parent's is kept, and the
    report says where it came from."""
    clinical = tmp_path / "clinical"
    clinical.mkdir()
    for path in parents["a"].iterdir():
        (clinical / path.name).write_bytes(path.read_bytes())
    (clinical / "chat_template.jinja").unlink(missing_ok=True)
    config = json.loads((clinical / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (clinical / "tokenizer_config.json").write_text(json.dumps(config))
    instruct = str(parents["b"])
    recipe = _recipe(parents, "slerp", {"source": "union"})
    recipe["base_model"] = str(clinical)
    recipe["models"] = [{"model": str(clinical)}, {"model": instruct}]
    result = merge(load_recipe(recipe), tmp_path / "out")
    assert (result.output / "chat_template.jinja").read_text() == (
        parents["b"] / "chat_template.jinja"
    ).read_text()
    assert result.report["sources"]["chat_template"] == (
        f"{instruct} (the tokenizer source {str(clinical)!r} has none)"
    )
