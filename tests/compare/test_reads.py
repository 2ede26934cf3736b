"""``mergemed inspect``: per-layer, per-component comparison of two checkpoints.

The models are a 4-layer tiny Llama ("parent": the session's 2-layer one with two more layers)
and copies of it edited on disk: one where only layer 2's MLP moved, two 0.5 perturbations (for
task vectors), tied copies, one with a larger vocabulary, one with a tensor added, removed and
reshaped, one with a NaN, one with a layer fewer, and two whose configs name another
architecture or width. Every number is checked against torch on the whole tensors, in float64.
The command-line runs are real subprocesses, started together before the other tests.
"""

from __future__ import annotations

import itertools
import json
import math
import shutil
import subprocess
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from helpers import load_model_tensors, run_cli
from safetensors.torch import save_file

import mergemed.compare.stats
from mergemed.checkpoint import Checkpoint
from mergemed.cli.inspect_render import check_table_metric, render_report
from mergemed.compare import InspectReport, inspect_models
from mergemed.compare.components import tensor_component
from mergemed.errors import CheckpointError, InspectError, OutputError
from mergemed.synthetic import make_random_model

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MLP_COLUMNS = ("gate", "up", "down")
SMALL_CHUNK = 1000
"""Elements per slice in most tests: every weight matrix of the tiny models is cut in slices."""


# --------------------------------------------------------------------------------------------
# Models


def edited_copy(
    source: Path,
    destination: Path,
    edit: Callable[[dict[str, torch.Tensor]], None] | None = None,
    config: dict | None = None,
) -> Path:
    """Copy a model folder; ``edit`` changes its tensors in place, ``config`` its config keys."""
    shutil.copytree(source, destination, ignore=shutil.ignore_patterns("*.safetensors*"))
    tensors = load_model_tensors(source)
    if edit is not None:
        edit(tensors)
    save_file(tensors, destination / "model.safetensors", metadata={"format": "pt"})
    if config:
        path = destination / "config.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), **config}, indent=2))
    return destination


def change_layer_2_mlp(tensors: dict[str, torch.Tensor]) -> None:
    generator = torch.Generator().manual_seed(7)
    for column in MLP_COLUMNS:
        name = f"model.layers.2.mlp.{column}_proj.weight"
        noise = torch.randn(tensors[name].shape, generator=generator, dtype=tensors[name].dtype)
        tensors[name] = tensors[name] + 0.2 * tensors[name].std() * noise


def grow_vocabulary(tensors: dict[str, torch.Tensor]) -> None:
    generator = torch.Generator().manual_seed(8)
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        extra = torch.randn((8, tensors[name].shape[1]), generator=generator) * 0.02
        tensors[name] = torch.cat([tensors[name], extra.to(tensors[name].dtype)])


def add_remove_reshape(tensors: dict[str, torch.Tensor]) -> None:
    tensors["model.extra.weight"] = torch.ones(4)
    del tensors["model.norm.weight"]
    name = "model.layers.1.mlp.gate_proj.weight"
    tensors[name] = tensors[name][:-1].contiguous()


def add_layers_2_and_3(tensors: dict[str, torch.Tensor]) -> None:
    """Turn a 2-layer model into a 4-layer one: layers 2 and 3 are noisy copies of 0 and 1."""
    generator = torch.Generator().manual_seed(9)
    for name in [n for n in tensors if n.startswith(("model.layers.0.", "model.layers.1."))]:
        layer = int(name.split(".")[2])
        values = tensors[name]
        noise = torch.randn(values.shape, generator=generator, dtype=values.dtype)
        copy = values + 0.5 * values.std().nan_to_num(0.02).clamp(min=0.02) * noise
        tensors[name.replace(f"layers.{layer}.", f"layers.{layer + 2}.", 1)] = copy


def poison_layer_0_q(tensors: dict[str, torch.Tensor]) -> None:
    tensors["model.layers.0.self_attn.q_proj.weight"][0, 0] = float("nan")


def drop_layer_3(tensors: dict[str, torch.Tensor]) -> None:
    for name in [n for n in tensors if n.startswith("model.layers.3.")]:
        del tensors[name]


class Models:
    """The folders every test here uses (made once per module)."""

    def __init__(self, root: Path, tiny_llama: Path):
        self.parent = edited_copy(
            tiny_llama, root / "parent", add_layers_2_and_3, {"num_hidden_layers": 4}
        )
        self.layer_2_mlp = edited_copy(self.parent, root / "layer-2-mlp", change_layer_2_mlp)
        self.first = make_random_model(
            root / "first", base_dir=self.parent, seed=1, perturbation=0.5
        )
        self.second = make_random_model(
            root / "second", base_dir=self.parent, seed=2, perturbation=0.5
        )
        self.tied = edited_copy(
            self.parent,
            root / "tied",
            lambda t: t.pop("lm_head.weight"),
            config={"tie_word_embeddings": True},
        )
        self.tied_with_copy = edited_copy(
            self.parent, root / "tied-with-copy", config={"tie_word_embeddings": True}
        )
        vocabulary = json.loads((self.parent / "config.json").read_text())["vocab_size"]
        self.bigger_vocabulary = edited_copy(
            self.first, root / "bigger-vocabulary", grow_vocabulary, {"vocab_size": vocabulary + 8}
        )
        self.edited_names = edited_copy(self.parent, root / "edited-names", add_remove_reshape)
        self.with_nan = edited_copy(self.parent, root / "with-nan", poison_layer_0_q)
        self.three_layers = edited_copy(
            self.parent, root / "three-layers", drop_layer_3, {"num_hidden_layers": 3}
        )
        self.qwen_config = edited_copy(
            self.parent,
            root / "qwen-config",
            config={"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2"},
        )
        self.wide_config = edited_copy(
            self.parent, root / "wide-config", config={"hidden_size": 128}
        )


@pytest.fixture(scope="module")
def models(
    tmp_path_factory: pytest.TempPathFactory, tiny_model_pair: Callable[[str], tuple[Path, Path]]
) -> Models:
    """Made from the session's 2-layer tiny Llama (no model is built from scratch here)."""
    return Models(tmp_path_factory.mktemp("inspect-models"), tiny_model_pair("llama")[0])


# --------------------------------------------------------------------------------------------
# Command-line runs, started together (each spends most of its time importing torch)


class CliRuns:
    """``mergemed inspect`` on the layer-2 model (with --json, --plot and a base) and on three
    bad inputs (each also given --json and --plot, which must not be written)."""

    def __init__(self, models: Models, root: Path):
        self.root = root
        self.json = root / "report.json"
        self.png = root / "heatmap.png"
        self.missing = root / "no-such-model"
        pool = ThreadPoolExecutor(max_workers=2)
        layer_2 = ("inspect", models.layer_2_mlp, models.parent, "--base", models.first)
        layer_2 += ("--json", self.json, "--plot", self.png, "--quiet")
        self.futures: dict[str, Future[subprocess.CompletedProcess[str]]] = {
            "layer 2": pool.submit(run_cli, *layer_2)
        }
        for case, (first, second) in {
            "architectures": (models.parent, models.qwen_config),
            "missing": (models.parent, self.missing),
            "hidden sizes": (models.parent, models.wide_config),
        }.items():
            arguments = ("inspect", first, second, "--json", self.refused_json(case))
            arguments += ("--plot", self.refused_png(case))
            self.futures[case] = pool.submit(run_cli, *arguments)
        pool.shutdown(wait=False)

    def refused_json(self, case: str) -> Path:
        return self.root / f"{case.replace(' ', '-')}.json"

    def refused_png(self, case: str) -> Path:
        return self.root / f"{case.replace(' ', '-')}.png"

    def result(self, case: str) -> subprocess.CompletedProcess[str]:
        return self.futures[case].result(timeout=300)


@pytest.fixture(scope="module")
def cli_runs(models: Models, tmp_path_factory: pytest.TempPathFactory) -> CliRuns:
    return CliRuns(models, tmp_path_factory.mktemp("inspect-cli"))


# --------------------------------------------------------------------------------------------
# Torch, on whole tensors


def reference_metrics(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor | None = None) -> dict:
    a, b = a.double().reshape(-1), b.double().reshape(-1)
    result = {
        "cosine": float(torch.nn.functional.cosine_similarity(a, b, dim=0, eps=0)),
        "relative_change": float((a - b).norm() / b.norm()),
    }
    if c is not None:
        c = c.double().reshape(-1)
        task_cosine = float(torch.nn.functional.cosine_similarity(a - c, b - c, dim=0, eps=0))
        result["task_cosine"] = task_cosine
        result["task_angle"] = math.degrees(math.acos(task_cosine))
        result["task_change_a"] = float((a - c).norm() / c.norm())
        result["task_change_b"] = float((b - c).norm() / c.norm())
    return result


def assert_close(found: dict, expected: dict) -> None:
    for key, value in expected.items():
        assert found[key] == pytest.approx(value, rel=1e-9, abs=1e-9), key


# --------------------------------------------------------------------------------------------
# Numbers


@pytest.mark.usefixtures("cli_runs")  # start the subprocesses now, to overlap with these tests
def test_only_layer_2_mlp_changed(models: Models, tmp_path: Path) -> None:
    report = inspect_models(
        models.layer_2_mlp, models.parent, chunk_elements=SMALL_CHUNK, json_path=tmp_path / "r.json"
    )
    assert report.layers == [0, 1, 2, 3]
    assert report.components == ["q", "k", "v", "o", *MLP_COLUMNS, "in_norm", "post_norm"]
    for layer in report.layers:
        for component in report.components:
            cell = report.cell(layer, component)
            if layer == 2 and component in MLP_COLUMNS:
                assert 0.1 < cell["relative_change"] < 0.3, (layer, component)
                assert cell["cosine"] < 0.999
            else:
                assert cell["relative_change"] == 0.0, (layer, component)
                assert cell["cosine"] == 1.0
    for component in report.outside_components:
        assert report.cell(None, component)["relative_change"] == 0.0
    ranked = report.ranked("relative_change", 3)
    assert {(e["layer"], e["component"]) for e in ranked} == {(2, c) for c in MLP_COLUMNS}
    assert report.ranked("relative_change", 1, whole_layers=True)[0]["layer"] == 2
    assert report.plain_merge_possible and not report.config_differences

    saved = json.loads((tmp_path / "r.json").read_text())
    for row in saved["layers"]:
        for component, cell in row["components"].items():
            changed = row["layer"] == 2 and component in MLP_COLUMNS
            assert (cell["relative_change"] > 0) == changed, (row["layer"], component)
        assert (row["all"]["relative_change"] > 0) == (row["layer"] == 2)
    changed_tensors = {t["name"] for t in saved["tensors"] if t["relative_change"] > 0}
    assert changed_tensors == {f"model.layers.2.mlp.{c}_proj.weight" for c in MLP_COLUMNS}
    assert saved["plain_merge"] == {"possible": True, "blockers": [], "cautions": []}
    assert saved["vocabulary"]["identical"] is True


@pytest.mark.parametrize("chunk_elements", [257, SMALL_CHUNK, 1 << 22])
def test_model_against_itself_is_exact(models: Models, chunk_elements: int) -> None:
    report = inspect_models(
        models.first, models.first, base=models.parent, chunk_elements=chunk_elements
    )
    assert report.tensors
    for tensor in report.tensors:
        metrics = tensor.sums.metrics(with_base=True)
        assert metrics["cosine"] == 1.0, tensor.name
        assert metrics["relative_change"] == 0.0, tensor.name
        assert metrics["task_angle"] == 0.0, tensor.name
    assert report.overall()["cosine"] == 1.0
    assert report.overall()["relative_change"] == 0.0


def test_numbers_match_torch_on_whole_tensors(
    models: Models, monkeypatch: pytest.MonkeyPatch
) -> None:
    report = inspect_models(
        models.first, models.second, base=models.parent, chunk_elements=SMALL_CHUNK
    )
    first, second, parent = (
        load_model_tensors(m) for m in (models.first, models.second, models.parent)
    )
    assert {t.name for t in report.tensors} == set(parent)
    for tensor in report.tensors:
        name = tensor.name
        assert_close(
            tensor.sums.metrics(with_base=True),
            reference_metrics(first[name], second[name], parent[name]),
        )
    # A cell is its tensors concatenated; the whole model, every tensor.
    names = [n for n in parent if n.startswith("model.layers.1.self_attn.q_proj")]
    joined = [torch.cat([m[n].reshape(-1) for n in names]) for m in (first, second, parent)]
    assert_close(report.cell(1, "q"), reference_metrics(*joined))
    every = [torch.cat([m[n].reshape(-1) for n in sorted(parent)]) for m in (first, second, parent)]
    assert_close(report.overall(), reference_metrics(*every))

    whole = inspect_models(models.first, models.second, base=models.parent)
    # Not a mock: a smaller block size, so the blocked float64 summation path is exercised.
    monkeypatch.setattr(mergemed.compare.stats, "COMPUTE_BLOCK_ELEMENTS", 97)
    blocks = inspect_models(
        models.first, models.second, base=models.parent, chunk_elements=SMALL_CHUNK
    )
    for sliced, unsliced, blocked in zip(
        report.tensors, whole.tensors, blocks.tensors, strict=True
    ):
        assert_close(sliced.sums.metrics(True), unsliced.sums.metrics(True))
        assert_close(blocked.sums.metrics(True), unsliced.sums.metrics(True))


def test_each_tensor_is_read_once_in_bounded_slices(
    models: Models, monkeypatch: pytest.MonkeyPatch
) -> None:
    reads: list[tuple[Path, str, int, int]] = []
    original = Checkpoint.read

    def recording_read(self, name, start=0, count=None):
        values = original(self, name, start, count)
        reads.append((self.folder, name, start, values.numel()))
        return values

    # A spy, not a mock: the real read runs and its arguments are recorded.
    monkeypatch.setattr(Checkpoint, "read", recording_read)
    report = inspect_models(
        models.first, models.second, base=models.parent, chunk_elements=SMALL_CHUNK
    )
    assert max(count for *_, count in reads) <= SMALL_CHUNK
    covered: dict[tuple[Path, str], list[tuple[int, int]]] = {}
    for folder, name, start, count in reads:
        covered.setdefault((folder, name), []).append((start, count))
    sizes = {name: math.prod(t.shape) for name, t in load_model_tensors(models.parent).items()}
    assert len(covered) == 3 * len(sizes)
    for (_, name), spans in covered.items():
        spans.sort()
        assert spans[0][0] == 0 and sum(count for _, count in spans) == sizes[name], name
        assert all(s + c == n for (s, c), (n, _) in itertools.pairwise(spans)), name
    assert report.bytes_read == 3 * sum(sizes.values()) * 4  # float32


# --------------------------------------------------------------------------------------------
# Layout differences


def test_tied_lm_head(models: Models) -> None:
    both = inspect_models(models.tied, models.tied)
    assert "lm_head" not in both.outside_components
    assert any("reported once" in note for note in both.notes)

    duplicate = inspect_models(models.tied_with_copy, models.tied)
    assert "lm_head" not in duplicate.outside_components
    assert any("lm_head.weight of A skipped" in note for note in duplicate.notes)

    mixed = inspect_models(models.tied, models.first, chunk_elements=SMALL_CHUNK)
    lm_head = next(t for t in mixed.tensors if t.component == "lm_head")
    assert (lm_head.source_a, lm_head.source_b) == ("model.embed_tokens.weight", "lm_head.weight")
    tied, first = load_model_tensors(models.tied), load_model_tensors(models.first)
    assert_close(
        lm_head.sums.metrics(False),
        reference_metrics(tied["model.embed_tokens.weight"], first["lm_head.weight"]),
    )
    assert any("model A ties lm_head" in note for note in mixed.notes)
    assert [d.key for d in mixed.config_differences] == ["tie_word_embeddings"]
    assert mixed.plain_merge_possible
    assert any("tie_word_embeddings" in caution for caution in mixed.merge_cautions)


def test_vocabulary_rows_differ(models: Models) -> None:
    report = inspect_models(
        models.bigger_vocabulary, models.second, base=models.parent, chunk_elements=SMALL_CHUNK
    )
    bigger, second, parent = (
        load_model_tensors(m) for m in (models.bigger_vocabulary, models.second, models.parent)
    )
    rows = parent["model.embed_tokens.weight"].shape[0]
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        tensor = next(t for t in report.tensors if t.name == name)
        assert (
            tensor.note
            == f"vocabulary rows differ ({rows + 8}/{rows}): compared the first {rows} rows"
        )
        assert_close(
            tensor.sums.metrics(True),
            reference_metrics(bigger[name][:rows], second[name], parent[name]),
        )
    assert not report.plain_merge_possible
    assert any(
        "vocabularies differ" in b and "`tokenizer: {source: union}`" in b
        for b in report.merge_blockers
    )
    assert [d.key for d in report.config_differences] == ["vocab_size"]
    assert report.vocabulary["rows"] == {"A": rows + 8, "B": rows}
    assert report.vocabulary["identical"] is False


def test_vocabulary_compared_token_by_token(models: Models, tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    clinical = edited_copy(models.parent, tmp_path / "clinical", grow_vocabulary)
    tokenizer = AutoTokenizer.from_pretrained(clinical)
    added = ["myocardial", "troponin", "<|note|>", "stenosis", "<|dx|>", "apnea", "sepsis", "ecg"]
    tokenizer.add_tokens(added)
    tokenizer.save_pretrained(clinical)
    report = inspect_models(clinical, models.parent)
    vocabulary = report.vocabulary
    assert vocabulary["extra_tokens"]["A"] == {"count": 8, "tokens": added}
    assert vocabulary["missing_tokens"]["A"] == {"count": 0, "tokens": []}
    assert vocabulary["tokens"] == {"A": 520, "B": 512}
    assert not report.plain_merge_possible
    from rich.console import Console

    console = Console(width=160, record=True, color_system=None)
    for renderable in render_report(report):
        console.print(renderable)
    text = console.export_text()
    assert "tokens only in" in text and "8: 'myocardial', 'troponin'" in text
    same = inspect_models(models.parent, models.parent)
    assert same.vocabulary["identical"] and same.plain_merge_possible


def test_tensors_in_one_model_or_of_other_shapes_are_listed(models: Models) -> None:
    report = inspect_models(models.edited_names, models.parent)
    assert report.only_in_a == ["model.extra.weight"]
    assert report.only_in_b == ["model.norm.weight"]
    assert report.shape_mismatches == [
        {"name": "model.layers.1.mlp.gate_proj.weight", "a": [159, 64], "b": [160, 64]}
    ]
    assert report.cell(1, "gate") is None and report.cell(1, "up") is not None
    assert not report.plain_merge_possible
    assert len(report.merge_blockers) == 3

    shallower = inspect_models(models.three_layers, models.parent)
    assert shallower.layers == [0, 1, 2]
    assert all(name.startswith("model.layers.3.") for name in shallower.only_in_b)
    assert shallower.merge_blockers[0].startswith("layer counts differ (A 3, B 4)")
    assert [d.key for d in shallower.config_differences] == ["num_hidden_layers"]


def test_nan_weights_give_no_numbers_and_valid_json(models: Models, tmp_path: Path) -> None:
    report = inspect_models(models.with_nan, models.parent, json_path=tmp_path / "r.json")
    name = "model.layers.0.self_attn.q_proj.weight"
    assert report.notes == [f"NaN or Inf values in {name}: no numbers for them"]
    assert report.cell(0, "q")["cosine"] is None and report.cell(0)["cosine"] is None
    assert report.cell(0, "k")["relative_change"] == 0.0
    assert report.cell(1)["cosine"] == 1.0

    def refuse(constant: str) -> None:
        raise AssertionError(f"{constant} in JSON")

    saved = json.loads((tmp_path / "r.json").read_text(), parse_constant=refuse)
    poisoned = next(t for t in saved["tensors"] if t["name"] == name)
    assert poisoned["cosine"] is None and poisoned["sums"]["dot"] == "nan"


def test_component_names() -> None:
    assert tensor_component("model.layers.12.self_attn.q_proj.bias") == (12, "q")
    assert tensor_component("model.layers.0.post_attention_layernorm.weight") == (0, "post_norm")
    assert tensor_component("model.layers.3.block_sparse_moe.experts.7.w1.weight") == (
        3,
        "block_sparse_moe.experts.*.w1",
    )
    assert tensor_component("model.embed_tokens.weight") == (None, "embed_tokens")
    assert tensor_component("model.norm.weight") == (None, "norm")
    assert tensor_component("lm_head.weight") == (None, "lm_head")


# --------------------------------------------------------------------------------------------
# Bad input (library)


def test_refusals_in_the_library(models: Models, tmp_path: Path) -> None:
    with pytest.raises(InspectError, match=r"different architectures: A .* LlamaForCausalLM, B"):
        inspect_models(models.parent, models.qwen_config)
    with pytest.raises(InspectError, match=r"the base .* not a vocabulary problem"):
        inspect_models(models.parent, models.first, base=models.wide_config)
    with pytest.raises(CheckpointError, match=r"^base: model .*folder not found"):
        inspect_models(models.parent, models.first, base=tmp_path / "absent")
    with pytest.raises(OutputError, match=r"--json .* does not exist"):
        inspect_models(models.parent, models.first, json_path=tmp_path / "no" / "r.json")
    with pytest.raises(InspectError, match="needs --base"):
        check_table_metric("angle", with_base=False)
    with pytest.raises(InspectError, match="expected one of change, cosine, angle"):
        check_table_metric("kl", with_base=False)
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------------------------
# Output


def test_rendering_with_a_base(models: Models) -> None:
    report = inspect_models(models.first, models.second, base=models.parent)
    from rich.console import Console

    console = Console(width=120, record=True, color_system=None)
    for renderable in render_report(report, "task_angle"):
        console.print(renderable)
    text = console.export_text()
    assert "angle between task vectors" in text
    assert "task vectors most opposed: layer" in text
    assert "plain merge possible: yes" in text
    assert isinstance(report, InspectReport) and report.with_base


def table_rows(stdout: str) -> dict[int, list[str]]:
    """The per-layer table's rows: ``layer -> [q, k, v, o, gate, up, down, in_norm,
    post_norm, all]``."""
    rows = {}
    for line in stdout.splitlines():
        cells = line.split()
        if len(cells) == 11 and cells[0].isdigit():
            rows[int(cells[0])] = cells[1:]
    return rows


def test_cli_shows_the_change_only_in_layer_2_mlp(cli_runs: CliRuns) -> None:
    result = cli_runs.result("layer 2")
    assert result.returncode == 0, result.stderr
    header = "layer q k v o gate up down in_norm post_norm all"
    assert any(" ".join(line.split()) == header for line in result.stdout.splitlines())
    rows = table_rows(result.stdout)
    assert sorted(rows) == [0, 1, 2, 3]
    for layer, cells in rows.items():
        for column, cell in zip(header.split()[1:], cells, strict=True):
            changed = layer == 2 and column in (*MLP_COLUMNS, "all")
            assert (cell != "0") == changed, (layer, column, cell)
    assert "most changed: layer 2 " in result.stdout
    assert "task vectors most opposed: layer 2 " in result.stdout
    assert "plain merge possible: yes" in result.stdout
    assert "inspected 39 tensors" in result.stderr
    assert cli_runs.png.read_bytes().startswith(PNG_SIGNATURE)  # two panels: change and angle
    saved = json.loads(cli_runs.json.read_text())
    assert saved["layers"][2]["components"]["up"]["relative_change"] > 0.1


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("architectures", ["different architectures", "LlamaForCausalLM", "Qwen2ForCausalLM"]),
        ("missing", ["B: model", "no-such-model", "folder not found"]),
        ("hidden sizes", ["hidden sizes differ", "64", "128", "not a vocabulary problem"]),
    ],
)
def test_cli_refuses_bad_input_in_one_line(
    cli_runs: CliRuns, models: Models, case: str, expected: list[str]
) -> None:
    result = cli_runs.result(case)
    shown = f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    assert result.returncode == 2, shown
    assert "Traceback" not in result.stderr and not result.stdout.strip(), shown
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), shown
    for fragment in expected:
        assert fragment in lines[0], shown
    if case != "missing":
        assert str(models.parent) in lines[0]
    assert not cli_runs.refused_json(case).exists()
    assert not cli_runs.refused_png(case).exists()
