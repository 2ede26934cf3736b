"""Schedule search: which merge schedule gains most in the domain for the least forgetting.

A search space (:mod:`mergemed.search.space`) names a base recipe and what varies; each
candidate is merged in memory from parents opened once and scored by the evaluator on the
same sample as every other candidate (:mod:`mergemed.search.study`); trials live in an Optuna
storage, so a killed search resumes and many machines can share one; the Pareto front of
domain gain against forgetting is :func:`mergemed.search.pareto.pareto_front`.
"""

from mergemed.search.pareto import pareto_front
from mergemed.search.space import SearchSpace, candidate_recipe, grid_size, load_space

__all__ = ["SearchSpace", "candidate_recipe", "grid_size", "load_space", "pareto_front"]
