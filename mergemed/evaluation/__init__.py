"""Evaluation: what a merge gained in the domain and what it forgot, on lm-eval-harness.

``evaluate()`` scores a merged model and its parents on lm-eval tasks (mergemed's suites in
``evaluations/`` and any others), reuses results stored for unchanged weights, and computes
domain gain, retention and forgetting with propagated standard errors.
"""

import importlib
from typing import Any

_EXPORTS = {
    "EvaluationReport": "results",
    "ModelEvaluation": "results",
    "evaluate": "runner",
    "preflight": "runner",
    "Score": "scores",
    "TradeOff": "scores",
    "summarise": "scores",
    "BackendSettings": "settings",
    "EvalSettings": "settings",
    "ResultsStore": "store",
}


def __getattr__(name: str) -> Any:
    """Import the public names on first use: ``mergemed --help`` and option parsing read the
    settings without loading torch, transformers and lm-eval."""
    if name not in _EXPORTS:
        raise AttributeError(f"module 'mergemed.evaluation' has no attribute {name!r}")
    return getattr(importlib.import_module(f"mergemed.evaluation.{_EXPORTS[name]}"), name)


__all__ = [
    "BackendSettings",
    "EvalSettings",
    "EvaluationReport",
    "ModelEvaluation",
    "ResultsStore",
    "Score",
    "TradeOff",
    "evaluate",
    "preflight",
    "summarise",
]
