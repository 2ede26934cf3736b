"""Vocabulary alignment: parents whose tokenizers differ, merged like mergekit 0.1.5 does.

The parents (``a`` to ``e``) are described in :mod:`vocabulary_parents`. mergekit numbers the
tokens a union adds differently from run to run, so rows are compared token by token.
"""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path

import pytest
import torch
from helpers import load_model_tensors
from vocabulary_parents import merge_recipe

from mergemed.engine import merge, merge_to_memory
from mergemed.errors import MergemedError, RecipeError
from mergemed.io.checkpoint import Checkpoint
from mergemed.recipe import load_recipe
from mergemed.vocabulary import (
    VocabularyAlignment,
    build_output_vocabulary,
    is_vocabulary_tensor,
    read_vocabularies,
    tokenizer_settings,
)

mergekit_config = pytest.importorskip("mergekit.config")
mergekit_merge = pytest.importorskip("mergekit.merge")
mergekit_options = pytest.importorskip("mergekit.options")

TOLERANCE = 1e-6


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
    recipe = merge_recipe(
        parents, method, _tokenizer_section(parents, spec), base, *(members or [None])
    )
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
    recipe = merge_recipe(parents, "linear", {"source": "union"}, members="abe")
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

    recipe = merge_recipe(parents, "linear", {"source": "union", "pad_to_multiple_of": 8})
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
    recipe = merge_recipe(parents, "linear", {"source": "union", "tokens": tokens})
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
    plain = merge(
        load_recipe(merge_recipe(parents, "linear", {"source": "union"})), tmp_path / "plain"
    )
    assert plain.report["vocabulary"]["parents"][a]["averaged"]["tokens"] == ["<clin_x>"]


def test_alignment_copies_the_rows_only_one_parent_has_and_reports_them(parents):
    a, b = str(parents["a"]), str(parents["b"])
    recipe = load_recipe(merge_recipe(parents, "linear", {"source": "union"}, members="ab"))
    references = recipe.model_references()
    vocabularies = read_vocabularies({ref: Checkpoint(Path(ref), ref) for ref in references})
    settings = tokenizer_settings(recipe)
    output = build_output_vocabulary(settings, a, references, vocabularies)
    alignment = VocabularyAlignment(settings, output, vocabularies, a)
    assert not alignment.is_identity([a, b])
    assert alignment.rows == 515  # b's 512 + 3 tokens; its padding to 520 is not kept

    embeddings = [load_model_tensors(Path(r))["model.embed_tokens.weight"] for r in (a, b)]
    aligned_a, aligned_b = alignment.align([a, b], a, embeddings)
    assert torch.equal(aligned_b, embeddings[1][:515])
    assert torch.equal(aligned_a[:512], embeddings[0])
    assert torch.equal(aligned_a[512:], embeddings[1][512:515])

    report = alignment.to_report()
    new = ["myocardial", "<clin_x>", "<|clin|>"]
    assert report["aligned"] is True and report["tokens"] == 515 and report["padding_rows"] == 0
    assert report["added"] == {b: {"count": 3, "tokens": new}}
    assert report["parents"] == {a: {f"copied_from:{b}": {"count": 3, "tokens": new}}, b: {}}
    assert json.loads(json.dumps(report)) == report


def test_in_memory_merge_aligns_like_the_written_one(parents, tmp_path):
    recipe = load_recipe(
        merge_recipe(parents, "linear", {"source": "union", "pad_to_multiple_of": 8})
    )
    written = load_model_tensors(merge(recipe, tmp_path / "out").output)
    held = merge_to_memory(recipe)
    try:
        assert set(held.state_dict) == set(written)
        for name, tensor in written.items():
            assert torch.equal(held.state_dict[name], tensor), name
        assert json.loads((held.folder / "config.json").read_text())["vocab_size"] == 520
    finally:
        held.cleanup()


def test_legacy_tokenizer_source_union_aligns(parents, tmp_path):
    recipe = merge_recipe(parents, "linear", None)
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
    recipe = merge_recipe(parents, "linear", {"source": "union", "tokens": tokens})
    with pytest.raises(MergemedError) as error:
        merge(load_recipe(recipe), tmp_path / "out")
    message = str(error.value)
    assert "tokenizer.tokens['<|new|>'].source.token_id: 520 is out of range" in message
    assert "520 embedding rows" in message
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out*"))


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
    recipe = merge_recipe(parents, "slerp", {"source": "union"})
    recipe["base_model"] = str(clinical)
    recipe["models"] = [{"model": str(clinical)}, {"model": instruct}]
    result = merge(load_recipe(recipe), tmp_path / "out")
    assert (result.output / "chat_template.jinja").read_text() == (
        parents["b"] / "chat_template.jinja"
    ).read_text()
    assert result.report["sources"]["chat_template"] == (
        f"{instruct} (the tokenizer source {str(clinical)!r} has none)"
    )
