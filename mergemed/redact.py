"""Secrets never reach output: tokens and storage passwords are masked in any text shown.

Used wherever text that may echo user input or library internals is printed: error lines,
debug tracebacks, logs, reports. Masks the values of the token variables in the environment,
passwords in URLs (``postgresql://user:secret@host``), and strings shaped like Hugging Face,
OpenAI, AWS or bearer tokens.
"""

from __future__ import annotations

import os
import re

MASK = "***"

SECRET_VARIABLES = (
    "HF_TOKEN",
    "HUGGING_FACE_HUB_TOKEN",
    "HUGGINGFACE_TOKEN",
    "OPENAI_API_KEY",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "PGPASSWORD",
    "MERGEMED_STORAGE_PASSWORD",
)
"""Environment variables whose values are secrets wherever they appear."""

TOKEN_PATTERNS = (
    re.compile(r"\bhf_[A-Za-z0-9]{20,}\b"),  # Hugging Face
    re.compile(r"\bsk-[A-Za-z0-9_-]{20,}\b"),  # OpenAI
    re.compile(r"\b(?:AKIA|ASIA)[A-Z0-9]{16}\b"),  # AWS access key id
    re.compile(r"(?i)\b(bearer|authorization:)\s+[A-Za-z0-9._~+/=-]{8,}"),  # bearer headers
)
"""Shapes of tokens, masked even when they did not come from the environment."""

_URL_PASSWORD = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<user>[^:/@\s]*):[^@\s]*@")


def redact(text: str) -> str:
    """``text`` with every known secret replaced by ``***``."""
    for variable in SECRET_VARIABLES:
        value = os.environ.get(variable)
        if value and len(value) >= 4:
            text = text.replace(value, MASK)
    text = _URL_PASSWORD.sub(lambda m: f"{m['scheme']}{m['user']}:{MASK}@", text)
    for pattern in TOKEN_PATTERNS:
        if pattern.groups:
            text = pattern.sub(lambda m: f"{m.group(1)} {MASK}", text)
        else:
            text = pattern.sub(MASK, text)
    return text
