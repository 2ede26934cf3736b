"""Errors that name the file, key or tensor at fault and what was expected.

Every error mergemed raises on bad input derives from :class:`MergemedError`. The CLI prints
its message as one line and exits with status 2; library callers can catch it.
"""

from __future__ import annotations


class MergemedError(Exception):
    """Base class: a problem with the user's input or environment, stated in one line."""


class ConfigError(MergemedError):
    """A YAML file (recipe, training config) that does not validate.

    The message states the first problem, naming the file, the line and the key, and how many
    more there are; ``problems`` holds every one (``mergemed validate`` prints them all).
    """

    def __init__(self, *problems: str):
        self.problems = list(problems)
        message = problems[0] if problems else "invalid configuration"
        if len(problems) > 1:
            more = len(problems) - 1
            message += f" (and {more} more problem{'s' if more > 1 else ''}: `mergemed validate`)"
        super().__init__(message)


class RecipeError(ConfigError):
    """A recipe that does not validate."""


class TrainConfigError(ConfigError):
    """A training config that does not validate."""


class CheckpointError(MergemedError):
    """A model folder or weight file that cannot be used: names the file or tensor."""


class MergeError(MergemedError):
    """A merge that cannot proceed or produced invalid numbers: names the tensor."""


class OutputError(MergemedError):
    """The output location cannot be written (exists, disk full, not writable)."""


class InspectError(MergemedError):
    """Two models that ``mergemed inspect`` cannot compare: names both and what differs."""
