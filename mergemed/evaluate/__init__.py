"""Evaluation: what a merge gained in the domain and what it forgot, on lm-eval-harness.

``evaluate()`` scores a merged model and its parents on lm-eval tasks (mergemed's suites in
``evaluations/`` and any others), reuses results stored for unchanged weights, and computes
domain gain, retention and forgetting with propagated standard errors.
"""

from mergemed.evaluate.backends import BackendSettings
from mergemed.evaluate.runner import EvaluationReport, ModelEvaluation, evaluate
from mergemed.evaluate.scores import Score, TradeOff, summarise
from mergemed.evaluate.store import ResultsStore

__all__ = [
    "BackendSettings",
    "EvaluationReport",
    "ModelEvaluation",
    "ResultsStore",
    "Score",
    "TradeOff",
    "evaluate",
    "summarise",
]
