"""The small byte-level BPE tokenizer of the random-weight models, trained locally."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

DEFAULT_TEXT_PATH = Path(__file__).resolve().parent.parent / "data" / "devils_dictionary.txt"
"""Public-domain general English text (Ambrose Bierce, *The Devil's Dictionary*)."""

PAD_TOKEN = "<pad>"
BOS_TOKEN = "<s>"
EOS_TOKEN = "</s>"
CHAT_START_TOKEN = "<|im_start|>"
CHAT_END_TOKEN = "<|im_end|>"
END_OF_TEXT_TOKEN = "<|endoftext|>"
SPECIAL_TOKENS = (
    PAD_TOKEN,
    BOS_TOKEN,
    EOS_TOKEN,
    CHAT_START_TOKEN,
    CHAT_END_TOKEN,
    END_OF_TEXT_TOKEN,
)
"""Special tokens, in id order: ``<pad>`` is 0, ``<s>`` is 1, ``</s>`` is 2.

``<|endoftext|>`` is there because ``transformers`` loads the tokenizer of a ``qwen2`` model
folder as ``Qwen2Tokenizer``, which adds that token when it is missing (growing the vocabulary
past the embedding)."""

CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
"""A ChatML-style chat template: ``<|im_start|>role\\ncontent<|im_end|>`` per message."""


def build_tokenizer(
    out_dir: str | os.PathLike[str],
    *,
    vocab_size: int = 512,
    text_path: str | os.PathLike[str] | None = None,
) -> Path:
    """Train a small byte-level BPE tokenizer and save it as a ``transformers`` tokenizer.

    The tokenizer has ``<pad>`` (id 0), ``<s>`` (bos, id 1, prepended on encode), ``</s>``
    (eos, id 2), ``<|im_start|>``, ``<|im_end|>`` and ``<|endoftext|>``, and a ChatML-style
    ``chat_template``.
    Training is deterministic: the same text and vocabulary size give the same files.

    Args:
        out_dir: folder to save into (created if missing).
        vocab_size: vocabulary size including the special tokens; at least 256 + 5 so that
            every byte has a token.
        text_path: training text; defaults to the bundled :data:`DEFAULT_TEXT_PATH`.

    Returns:
        ``out_dir`` as a Path.

    Raises:
        ValueError: ``vocab_size`` too small to hold every byte and the special tokens.
        FileNotFoundError: ``text_path`` does not exist.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    minimum = len(alphabet) + len(SPECIAL_TOKENS)
    if vocab_size < minimum:
        raise ValueError(f"vocab_size must be at least {minimum}, got {vocab_size}")
    text = Path(text_path) if text_path is not None else DEFAULT_TEXT_PATH
    if not text.is_file():
        raise FileNotFoundError(f"tokenizer training text not found: {text}")

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=sorted(alphabet),
        show_progress=False,
    )
    tokenizer.train([str(text)], trainer)
    bos_id = tokenizer.token_to_id(BOS_TOKEN)
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{BOS_TOKEN} $A",
        pair=f"{BOS_TOKEN} $A {BOS_TOKEN} $B",
        special_tokens=[(BOS_TOKEN, bos_id)],
    )
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        additional_special_tokens=[CHAT_START_TOKEN, CHAT_END_TOKEN, END_OF_TEXT_TOKEN],
        model_max_length=2048,
    )
    wrapped.chat_template = CHAT_TEMPLATE
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    wrapped.save_pretrained(out)
    return out


def install_tokenizer(out_dir: Path, tokenizer_dir: str | os.PathLike[str] | None) -> Any:
    """Build or copy the tokenizer into ``out_dir`` and return it loaded."""
    from transformers import AutoTokenizer

    if tokenizer_dir is None:
        build_tokenizer(out_dir)
        return AutoTokenizer.from_pretrained(out_dir)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    tokenizer.save_pretrained(out_dir)
    return tokenizer


def write_generation_config(out_dir: Path, tokenizer: Any) -> None:
    from transformers import GenerationConfig

    GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    ).save_pretrained(out_dir)
