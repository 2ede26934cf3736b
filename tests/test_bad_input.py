"""Bad inputs: each one is reported in one line that names the file, tensor or key at fault and
what was expected, the CLI prints exactly one ``error:`` line and exits 2 without a traceback,
and nothing is left on disk (no output folder, no hidden ``.<name>.mergemed-partial``).

Every case runs twice: through the library (``mergemed.engine.merge``, in this process) and
through the command line (a real subprocess). The command-line runs of the table are started
together on a small thread pool, since each one spends most of its time importing torch.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import struct
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers import load_model_tensors, run_cli
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from mergemed.engine import merge
from mergemed.errors import CheckpointError, MergeError, MergemedError, OutputError, RecipeError

CLI = (sys.executable, "-m", "mergemed")
KEEP = "keep.txt"
"""A file put in an output folder that already exists: it must survive a refused merge."""


# --------------------------------------------------------------------------------------------
# Helpers


def error_line(result: subprocess.CompletedProcess[str]) -> str:
    """The single ``error:`` line of a failed command, after checking there is nothing else."""
    shown = f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    assert result.returncode == 2, shown
    assert "Traceback" not in result.stderr + result.stdout, shown
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, shown
    assert lines[0].startswith("error: "), shown
    return lines[0].removeprefix("error: ")


def check_one_line(message: str) -> None:
    assert message.strip(), "empty error message"
    assert "\n" not in message, f"error message spans several lines:\n{message}"


def leftovers(folder: Path, output_name: str) -> list[str]:
    """Names in ``folder`` that belong to the output ``output_name`` (the folder itself, its
    hidden partial sibling, or a retired old copy)."""
    return sorted(p.name for p in folder.iterdir() if output_name in p.name)


def check_nothing_left(output: Path, existed: bool = False) -> None:
    if existed:
        assert leftovers(output.parent, output.name) == [output.name]
        assert sorted(p.name for p in output.iterdir()) == [KEEP]
        assert (output / KEEP).read_text() == "precious"
    else:
        assert leftovers(output.parent, output.name) == []


def write_recipe(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path


def line_of(path: Path, fragment: str) -> int:
    """1-based number of the first line of ``path`` containing ``fragment``."""
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if fragment in line:
            return number
    raise AssertionError(f"{fragment!r} not in {path}")


def quoted(path: Path | str) -> str:
    return json.dumps(str(path))  # a JSON string is a valid YAML scalar


def slerp_recipe(path: Path, base: Path | str, other: Path | str, t: str = "0.5") -> Path:
    return write_recipe(
        path,
        f"""
        merge_method: slerp
        base_model: {quoted(base)}
        models:
          - model: {quoted(base)}
          - model: {quoted(other)}
        parameters:
          t: {t}
        """,
    )


def copy_model(source: Path, destination: Path) -> Path:
    shutil.copytree(source, destination)
    return destination


def rewrite_weights(
    source: Path, destination: Path, edit: Callable[[dict[str, torch.Tensor]], None]
) -> Path:
    """Copy a single-file model and rewrite its safetensors after ``edit`` changed the dict."""
    copy_model(source, destination)
    weights = destination / "model.safetensors"
    tensors = load_file(weights)
    edit(tensors)
    save_file(tensors, weights, metadata={"format": "pt"})
    return destination


def tensor_shape(model: Path, name: str) -> list[int]:
    with safe_open(str(model / "model.safetensors"), framework="pt") as reader:
        return list(reader.get_slice(name).get_shape())


# --------------------------------------------------------------------------------------------
# The table of bad inputs


@dataclass
class Case:
    """One bad input: the recipe to merge, what the message must say, and options."""

    recipe: Path
    error: type[MergemedError]
    expected: tuple[str, ...]
    """Fragments the message must contain (file, tensor or key, and what was expected)."""
    kwargs: dict[str, Any] = field(default_factory=dict)
    """Options of the library call; ``cli_args`` are the same for the command line."""
    cli_args: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    output_exists: bool = False
    mentions_output: bool = False
    """The message names the output folder, so library and CLI messages differ there."""
    _error: MergemedError | None = field(default=None, repr=False)

    @property
    def folder(self) -> Path:
        return self.recipe.parent

    def output(self, runner: str) -> Path:
        return self.folder / f"{runner}-merged"

    def library_error(self) -> MergemedError:
        """The error of the library call (made once; the CLI test compares with it)."""
        if self._error is None:
            with pytest.raises(MergemedError) as caught:
                merge(self.recipe, self.output("library"), **self.kwargs)
            self._error = caught.value
        return self._error


def _build_cases(root: Path, base: Path, other: Path) -> dict[str, Case]:
    cases: dict[str, Case] = {}

    def folder(name: str) -> Path:
        path = root / name
        path.mkdir()
        return path

    # Models that cannot be found.
    where = folder("missing_model")
    absent = where / "no-such-model"
    cases["missing_model"] = Case(
        slerp_recipe(where / "recipe.yaml", base, absent),
        CheckpointError,
        (str(absent), "not found"),
    )
    where = folder("hub_id_not_cached")
    (where / "empty-hf-home").mkdir()
    cases["hub_id_not_cached"] = Case(
        slerp_recipe(where / "recipe.yaml", base, "nobody/not-a-model"),
        CheckpointError,
        ("nobody/not-a-model", "not in the Hugging Face cache", "HF_HUB_OFFLINE"),
        env={"HF_HOME": str(where / "empty-hf-home")},
    )
    where = folder("markup_in_path")
    odd = where / "models[/b]"
    cases["markup_in_path"] = Case(
        slerp_recipe(where / "recipe.yaml", base, odd),
        CheckpointError,
        (str(odd), "not found"),
    )

    # Models whose tensors disagree.
    where = folder("missing_tensor")
    dropped = "model.layers.1.mlp.up_proj.weight"
    lacking = rewrite_weights(other, where / "lacking", lambda t: t.pop(dropped))
    cases["missing_tensor"] = Case(
        slerp_recipe(where / "recipe.yaml", base, lacking),
        MergeError,
        ("layers.1.mlp.up_proj.weight", f"in {str(base)!r}", f"not in {str(lacking)!r}"),
    )
    where = folder("missing_tensor_in_base")
    lacking = rewrite_weights(other, where / "lacking", lambda t: t.pop("model.norm.weight"))
    cases["missing_tensor_in_base"] = Case(
        slerp_recipe(where / "recipe.yaml", lacking, base),
        MergeError,
        ("'model.norm.weight'", f"in {str(base)!r}", f"not in {str(lacking)!r}"),
    )

    where = folder("shape_mismatch")
    name = "model.layers.0.mlp.up_proj.weight"
    rows, columns = tensor_shape(base, name)

    def widen(tensors: dict[str, torch.Tensor]) -> None:
        tensors[name] = torch.randn(rows + 1, columns)

    wide = rewrite_weights(other, where / "wide", widen)
    cases["shape_mismatch"] = Case(
        slerp_recipe(where / "recipe.yaml", base, wide),
        MergeError,
        (f"'{name}'", f"[{rows}, {columns}]", f"[{rows + 1}, {columns}]", str(wide)),
    )

    where = folder("vocabulary_mismatch")
    vocabulary, hidden = tensor_shape(base, "model.embed_tokens.weight")

    def grow_vocabulary(tensors: dict[str, torch.Tensor]) -> None:
        for key in ("model.embed_tokens.weight", "lm_head.weight"):
            tensors[key] = torch.randn(vocabulary + 8, hidden) * 0.02

    grown = rewrite_weights(other, where / "grown", grow_vocabulary)
    cases["vocabulary_mismatch"] = Case(
        slerp_recipe(where / "recipe.yaml", base, grown),
        MergeError,
        (
            "vocabularies differ",
            f"{base}: {vocabulary}",
            f"{grown}: {vocabulary + 8}",
            "`tokenizer: {source: union}`",
        ),
    )

    # Recipes that do not validate: each message names file:line and the key.
    where = folder("unknown_method")
    recipe = slerp_recipe(where / "recipe.yaml", base, other)
    recipe.write_text(recipe.read_text().replace("merge_method: slerp", "merge_method: slurp"))
    cases["unknown_method"] = Case(
        recipe,
        RecipeError,
        (f"{recipe}:1:", "merge_method", "'slurp'", "did you mean 'slerp'"),
    )
    where = folder("unknown_parameter")
    recipe = slerp_recipe(where / "recipe.yaml", base, other)
    recipe.write_text(recipe.read_text().replace("  t: 0.5\n", "  t: 0.5\n  tt: 0.5\n"))
    cases["unknown_parameter"] = Case(
        recipe,
        RecipeError,
        (f"{recipe}:{line_of(recipe, 'tt:')}:", "parameters.tt", "did you mean 't'"),
    )
    where = folder("unknown_key")
    recipe = write_recipe(
        where / "recipe.yaml",
        f"""
        merge_method: linear
        models:
          - model: {quoted(base)}
            parameters:
              weight: 1.0
          - model: {quoted(other)}
            weigth: 1.0
        """,
    )
    cases["unknown_key"] = Case(
        recipe,
        RecipeError,
        (f"{recipe}:{line_of(recipe, 'weigth')}:", "models[1].weigth", "unknown key"),
    )
    where = folder("empty_gradient")
    recipe = slerp_recipe(where / "recipe.yaml", base, other, t="[]")
    cases["empty_gradient"] = Case(
        recipe,
        RecipeError,
        (f"{recipe}:{line_of(recipe, 't: []')}:", "parameters.t", "empty gradient"),
    )
    where = folder("t_above_one")
    recipe = slerp_recipe(where / "recipe.yaml", base, other, t="1.5")
    cases["t_above_one"] = Case(
        recipe,
        RecipeError,
        (f"{recipe}:{line_of(recipe, 't: 1.5')}:", "parameters.t", "[0, 1]", "1.5"),
    )
    where = folder("t_gradient_below_zero")
    recipe = slerp_recipe(where / "recipe.yaml", base, other, t="[0, -0.25, 1]")
    cases["t_gradient_below_zero"] = Case(
        recipe,
        RecipeError,
        (f"{recipe}:{line_of(recipe, 't: [')}:", "parameters.t[1]", "[0, 1]", "-0.25"),
    )
    where = folder("yaml_syntax")
    recipe = slerp_recipe(where / "recipe.yaml", base, other)
    text = recipe.read_text().replace("merge_method: slerp", "merge_method: slerp: linear")
    recipe.write_text(text)
    cases["yaml_syntax"] = Case(
        recipe, RecipeError, (f"{recipe}:{line_of(recipe, 'slerp: linear')}:", "YAML")
    )

    # Weight files that cannot be read.
    where = folder("corrupt_header")
    broken = copy_model(other, where / "broken")
    weights = broken / "model.safetensors"
    data = weights.read_bytes()
    garbage = b"this is not a JSON header, just garbage bytes!!!"
    weights.write_bytes(struct.pack("<Q", len(garbage)) + garbage + data[8 + len(garbage) :])
    cases["corrupt_header"] = Case(
        slerp_recipe(where / "recipe.yaml", base, broken),
        CheckpointError,
        (str(weights), "corrupt"),
    )
    where = folder("garbage_header_length")
    broken = copy_model(other, where / "broken")
    weights = broken / "model.safetensors"
    weights.write_bytes(b"\xff" * 64 + weights.read_bytes()[64:])
    cases["garbage_header_length"] = Case(
        slerp_recipe(where / "recipe.yaml", base, broken),
        CheckpointError,
        (str(weights), "corrupt or truncated"),
    )
    where = folder("truncated")
    cut = copy_model(other, where / "cut")
    weights = cut / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) * 2 // 3])
    cases["truncated"] = Case(
        slerp_recipe(where / "recipe.yaml", base, cut),
        CheckpointError,
        (str(weights), "truncated"),
    )
    where = folder("pickle_refused")
    pickled = pickle_copy(other, where / "pickled")
    cases["pickle_refused"] = Case(
        slerp_recipe(where / "recipe.yaml", base, pickled),
        CheckpointError,
        (str(pickled / "pytorch_model.bin"), "pickle", "--allow-pickle"),
    )

    # Merges that cannot proceed.
    where = folder("nan_or_inf")
    recipe = write_recipe(
        where / "recipe.yaml",
        f"""
        merge_method: linear
        models:
          - model: {quoted(base)}
            parameters:
              weight: 1.0
          - model: {quoted(other)}
            parameters:
              weight: -1.0
        parameters:
          normalize: true
        """,
    )
    cases["nan_or_inf"] = Case(recipe, MergeError, ("tensor '", "NaN or Inf"))
    where = folder("output_exists")
    cases["output_exists"] = Case(
        slerp_recipe(where / "recipe.yaml", base, other),
        OutputError,
        ("output folder exists", "--overwrite"),
        output_exists=True,
        mentions_output=True,
    )
    where = folder("bad_shard_size")
    cases["bad_shard_size"] = Case(
        slerp_recipe(where / "recipe.yaml", base, other),
        MergemedError,
        ("banana",),
        kwargs={"max_shard_size": "banana"},
        cli_args=("--max-shard-size", "banana"),
    )
    # A block the config does not count: no output layer can hold it.
    where = folder("block_past_the_config")

    def add_block(tensors: dict[str, torch.Tensor]) -> None:
        count = 1 + max(int(n.split(".")[2]) for n in tensors if n.startswith("model.layers."))
        for name in [n for n in tensors if n.startswith("model.layers.0.")]:
            tensors[name.replace("layers.0.", f"layers.{count}.")] = tensors[name].clone()

    extended = rewrite_weights(other, where / "extended", add_block)
    cases["block_past_the_config"] = Case(
        slerp_recipe(where / "recipe.yaml", base, extended),
        MergeError,
        (str(extended), "model.layers.", "past the", "layers its config states"),
    )
    # A parent missing a whole block its config counts: the output would inherit random values.
    where = folder("parent_missing_a_block")

    def drop_last_block(tensors: dict[str, torch.Tensor]) -> None:
        last = max(int(n.split(".")[2]) for n in tensors if n.startswith("model.layers."))
        for name in [n for n in tensors if n.startswith(f"model.layers.{last}.")]:
            del tensors[name]

    truncated = rewrite_weights(other, where / "truncated", drop_last_block)
    cases["parent_missing_a_block"] = Case(
        write_recipe(
            where / "recipe.yaml",
            f"""
            merge_method: passthrough
            models:
              - model: {quoted(truncated)}
            """,
        ),
        MergeError,
        (str(truncated), "lacks 9 tensors its own config needs", "model.layers.1."),
    )
    # Per-tensor parameter values a method cannot use, found before any weight is read.
    where = folder("della_epsilon_too_wide")
    cases["della_epsilon_too_wide"] = Case(
        write_recipe(
            where / "recipe.yaml",
            f"""
            merge_method: della
            base_model: {quoted(base)}
            models:
              - model: {quoted(other)}
                parameters: {{weight: 1.0, density: [0.3, 0.6], epsilon: 0.4}}
            """,
        ),
        MergeError,
        ("tensor 'model.", "epsilon 0.4 with density", "strictly between 0 and 1"),
    )
    where = folder("nuslerp_three_models")
    cases["nuslerp_three_models"] = Case(
        write_recipe(
            where / "recipe.yaml",
            f"""
            merge_method: nuslerp
            models:
              - {{model: {quoted(base)}, parameters: {{weight: 1}}}}
              - {{model: {quoted(other)}, parameters: {{weight: 1}}}}
              - {{model: {quoted(where)}, parameters: {{weight: 1}}}}
            """,
        ),
        RecipeError,
        ("nuslerp merges exactly 2 models besides the base_model, got 3",),
    )
    for case in cases.values():
        if case.output_exists:
            for runner in ("library", "cli"):
                case.output(runner).mkdir()
                (case.output(runner) / KEEP).write_text("precious")
    return cases


def pickle_copy(source: Path, destination: Path) -> Path:
    """A copy of a model whose weights are a pickled state dict (``pytorch_model.bin``)."""
    copy_model(source, destination)
    weights = destination / "model.safetensors"
    torch.save(load_file(weights), destination / "pytorch_model.bin")
    weights.unlink()
    return destination


CASE_NAMES = (
    "missing_model",
    "hub_id_not_cached",
    "markup_in_path",
    "missing_tensor",
    "missing_tensor_in_base",
    "shape_mismatch",
    "vocabulary_mismatch",
    "unknown_method",
    "unknown_parameter",
    "unknown_key",
    "empty_gradient",
    "t_above_one",
    "t_gradient_below_zero",
    "yaml_syntax",
    "corrupt_header",
    "garbage_header_length",
    "truncated",
    "pickle_refused",
    "nan_or_inf",
    "output_exists",
    "bad_shard_size",
    "block_past_the_config",
    "parent_missing_a_block",
    "della_epsilon_too_wide",
    "nuslerp_three_models",
)
LIBRARY_ONLY = {"missing_tensor_in_base", "t_gradient_below_zero", "garbage_header_length"}
"""Cases the command line adds nothing to (another case exercises the same CLI path)."""
CLI_CASES = tuple(name for name in CASE_NAMES if name not in LIBRARY_ONLY)


@pytest.fixture(scope="module")
def cases(
    tmp_path_factory: pytest.TempPathFactory, tiny_model_pair: Callable[[str], tuple[Path, Path]]
) -> dict[str, Case]:
    base, other = tiny_model_pair("llama")
    built = _build_cases(tmp_path_factory.mktemp("bad-input"), base, other)
    assert set(built) == set(CASE_NAMES)
    return built


@pytest.fixture(scope="module")
def cli_runs(cases: dict[str, Case]) -> Iterator[dict[str, Future]]:
    """Every CLI case, started at once on a pool as wide as the machine."""
    with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)) as pool:
        futures = {}
        for name in CLI_CASES:
            case = cases[name]
            args = ("merge", case.recipe, "-o", case.output("cli"), *case.cli_args)
            futures[name] = pool.submit(run_cli, *args, env=case.env)
        yield futures


# --------------------------------------------------------------------------------------------
# The table, through the library and through the command line


@pytest.mark.parametrize("name", CASE_NAMES)
def test_library_reports_bad_input_in_one_line(name: str, cases: dict[str, Case]) -> None:
    case = cases[name]
    output = case.output("library")
    error = case.library_error()
    message = str(error)
    check_one_line(message)
    assert isinstance(error, case.error), f"{type(error).__name__}: {message}"
    for fragment in case.expected:
        assert fragment in message, f"{fragment!r} not in: {message}"
    if case.mentions_output:
        assert str(output) in message
    check_nothing_left(output, existed=case.output_exists)


@pytest.mark.slow
@pytest.mark.parametrize("name", CLI_CASES)
def test_cli_reports_bad_input_in_one_line(
    name: str, cases: dict[str, Case], cli_runs: dict[str, Future]
) -> None:
    case = cases[name]
    result = cli_runs[name].result()
    message = error_line(result)
    for fragment in case.expected:
        assert fragment in message, f"{fragment!r} not in: {message}"
    if case.mentions_output:
        assert str(case.output("cli")) in message
    else:
        # The command line says exactly what the library says.
        assert message == str(case.library_error())
    check_nothing_left(case.output("cli"), existed=case.output_exists)


def test_failed_merge_stops_promptly_and_leaves_no_threads(cases: dict[str, Case]) -> None:
    """A merge that fails half-way (NaN at the first tensor) stops its reader and writer: no
    output byte is written after the failing tensor, and no mergemed thread outlives the call.
    (How long that takes is a benchmark question, not a test: a loaded machine is slower.)"""
    case = cases["nan_or_inf"]
    before = set(threading.enumerate())
    written: list[str] = []
    totals: list[int] = []
    with pytest.raises(MergeError, match="NaN or Inf") as raised:
        merge(
            case.recipe,
            case.folder / "prompt-merged",
            progress=lambda count, tensor: written.append(tensor),
            on_start=lambda total, done: totals.append(total),
        )
    still_running = [
        t.name
        for t in set(threading.enumerate()) - before
        if t.is_alive() and t.name.startswith("mergemed")
    ]
    assert still_running == []
    assert totals and totals[0] > 0
    # Every tensor of this recipe is NaN (weights summing to 0), so the first one computed
    # fails: nothing at all may have been written.
    assert "tensor '" in str(raised.value)
    assert written == [], f"{len(written)} slices were written after the failure"
    check_nothing_left(case.folder / "prompt-merged")


# --------------------------------------------------------------------------------------------
# Cases with a second half: what is refused works once allowed


def test_pickle_allowed_merges_like_safetensors(
    tmp_path: Path, tiny_model_pair: Callable[[str], tuple[Path, Path]]
) -> None:
    base, other = tiny_model_pair("llama")
    pickled = pickle_copy(other, tmp_path / "pickled")
    with pytest.raises(CheckpointError, match="--allow-pickle"):
        merge(slerp_recipe(tmp_path / "pickled.yaml", base, pickled), tmp_path / "refused")
    assert leftovers(tmp_path, "refused") == []

    from_pickle = merge(
        slerp_recipe(tmp_path / "pickled.yaml", base, pickled),
        tmp_path / "from-pickle",
        allow_pickle=True,
    )
    from_safetensors = merge(
        slerp_recipe(tmp_path / "safetensors.yaml", base, other), tmp_path / "from-safetensors"
    )
    expected = load_model_tensors(from_safetensors.output)
    merged = load_model_tensors(from_pickle.output)
    assert merged.keys() == expected.keys()
    assert len(merged) > 10
    for name, tensor in expected.items():
        assert torch.equal(merged[name], tensor), name
    # The pickle really was read: a slerp at t = 0.5 differs from the base everywhere.
    base_embed = load_file(base / "model.safetensors")["model.embed_tokens.weight"]
    assert not torch.equal(merged["model.embed_tokens.weight"], base_embed)


def test_overwrite_replaces_existing_output(
    tmp_path: Path, tiny_model_pair: Callable[[str], tuple[Path, Path]]
) -> None:
    base, other = tiny_model_pair("llama")
    output = tmp_path / "merged"
    output.mkdir()
    (output / KEEP).write_text("precious")
    (output / "model.safetensors").write_bytes(b"stale")
    recipe = slerp_recipe(tmp_path / "recipe.yaml", base, other)
    with pytest.raises(OutputError):
        merge(recipe, output)
    assert (output / KEEP).read_text() == "precious"

    result = merge(recipe, output, overwrite=True)
    assert result.output == output
    assert not (output / KEEP).exists()
    assert leftovers(tmp_path, "merged") == ["merged"]  # no partial, no retired copy
    fresh = merge(recipe, tmp_path / "fresh")
    replaced = load_model_tensors(output)
    expected = load_model_tensors(fresh.output)
    assert replaced.keys() == expected.keys()
    assert all(torch.equal(replaced[name], expected[name]) for name in expected)


# --------------------------------------------------------------------------------------------
# Disk full: a real file-size limit on the merging process


def file_size_limit(limit: int) -> Callable[[], None]:
    """A ``preexec_fn`` capping the size of any file the child writes (EFBIG past it)."""

    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)

    return apply


@pytest.mark.slow
def test_disk_full_while_writing_weights_leaves_nothing(
    tmp_path: Path, tiny_model_pair: Callable[[str], tuple[Path, Path]]
) -> None:
    base, other = tiny_model_pair("llama")
    recipe = slerp_recipe(tmp_path / "recipe.yaml", base, other)
    output = tmp_path / "merged"
    assert (base / "model.safetensors").stat().st_size > 5 * 100_000  # the shard won't fit
    result = run_cli("merge", recipe, "-o", output, preexec_fn=file_size_limit(100_000))
    message = error_line(result)
    assert "disk full" in message
    assert output.name in message
    check_nothing_left(output)


def narrow_model(source: Path, destination: Path, seed: int) -> Path:
    """A complete one-layer model with hidden size 4: every weight file is far smaller than the
    tokenizer it carries (copied, with the config, from ``source``)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = json.loads((source / "config.json").read_text())
    config.update(
        num_hidden_layers=1,
        hidden_size=4,
        intermediate_size=4,
        num_attention_heads=1,
        num_key_value_heads=1,
        head_dim=4,
    )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**config))
    model.save_pretrained(destination)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copyfile(source / name, destination / name)
    return destination


@pytest.mark.slow
def test_disk_full_while_writing_tokenizer_leaves_nothing(
    tmp_path: Path, tiny_model_pair: Callable[[str], tuple[Path, Path]]
) -> None:
    """The weights fit under the limit; the disk fills up while the tokenizer is copied."""
    source, _ = tiny_model_pair("llama")
    base = narrow_model(source, tmp_path / "base", seed=0)
    other = narrow_model(source, tmp_path / "other", seed=1)
    recipe = slerp_recipe(tmp_path / "recipe.yaml", base, other)
    output = tmp_path / "merged"
    limit = 20_000
    assert (base / "model.safetensors").stat().st_size < limit
    assert (base / "tokenizer.json").stat().st_size > limit
    result = run_cli(
        "merge", recipe, "-o", output, "--max-shard-size", "9KB", preexec_fn=file_size_limit(limit)
    )
    message = error_line(result)
    assert "disk full" in message
    check_nothing_left(output)
