"""Evaluation: what a merge gained in the domain and what it forgot, on lm-eval-harness.

``evaluate()`` scores a merged model and its parents on lm-eval tasks (mergemed's suites in
``evaluations/`` and any others), reuses results stored for unchanged weights, and computes
domain gain, retention and forgetting with propagated standard errors.
"""

from mergemed.evaluation.results import EvaluationReport, ModelEvaluation
from mergemed.evaluation.runner import evaluate, preflight
from mergemed.evaluation.scores import Score, TradeOff, summarise
from mergemed.evaluation.settings import BackendSettings, EvalSettings
from mergemed.evaluation.store import ResultsStore

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
