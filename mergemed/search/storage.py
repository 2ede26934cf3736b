"""Where a search lives: its run folder (``search.json``) and its Optuna storage (SQLite in the
folder, or any RDB URL shared by workers on many machines), with heartbeats so a trial whose
worker died is retried once, and the space's fingerprint so another space is refused. A
storage password is masked wherever the URL is shown and comes back from the environment.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mergemed.errors import MergemedError
from mergemed.redact import redact
from mergemed.search.space import SearchError, SearchSpace, load_space

HEARTBEAT_SECONDS = 20
GRACE_SECONDS = 60
RUN_FILE = "search.json"


@dataclass
class SearchRun:
    """Where a search lives: its run folder, its storage and its study name."""

    folder: Path
    storage: str
    study_name: str
    space: SearchSpace = field(repr=False)
    notes: list[str] = field(default_factory=list)
    """What the search leaves out for every candidate (suite members it cannot score)."""

    @property
    def shown_storage(self) -> str:
        """The storage URL with any password masked."""
        return redact(self.storage)


def open_run(
    space_source: str | Path | SearchSpace,
    folder: str | Path | None = None,
    storage: str | None = None,
    *,
    name: str | None = None,
) -> SearchRun:
    """Create or reopen a run folder for a space (``runs/<name>/`` by default: the space
    file's name, else ``search``).

    Raises:
        SearchError: the folder holds a search of another space, or cannot be written.
    """
    space = space_source if isinstance(space_source, SearchSpace) else load_space(space_source)
    if name is None:
        name = Path(space_source).stem if isinstance(space_source, (str, Path)) else "search"
    run_folder = Path(folder) if folder is not None else Path("runs") / name
    run_folder = run_folder.expanduser().absolute()
    fingerprint = space.fingerprint()
    record_path = run_folder / RUN_FILE
    checked = record_path.is_file()
    if checked:
        storage = storage or _recorded_storage(record_path, fingerprint)
    storage = storage or f"sqlite:///{run_folder / 'study.sqlite'}"
    try:
        run_folder.mkdir(parents=True, exist_ok=True)
        checked = checked or _create_once(
            record_path,
            {
                "space_sha256": fingerprint,
                "study": f"mergemed-{fingerprint[:16]}",
                # never the password: it comes from the environment when needed
                "storage": redact(storage) if "://" in storage else storage,
                # the base recipe inline, so the folder alone reopens the search
                "space": {**space.model_dump(mode="json"), "recipe": space.base_recipe()},
            },
        )
    except OSError as error:
        raise SearchError(f"{run_folder}: cannot write the run folder: {error.strerror}") from None
    if not checked:  # another worker made the folder's record first: it must be this space's
        _recorded_storage(record_path, fingerprint)
    return SearchRun(run_folder, _with_password(storage), f"mergemed-{fingerprint[:16]}", space)


def reopen_run(folder: str | Path) -> SearchRun:
    """A run folder's search, from its ``search.json`` alone (for ``show`` and ``export``).

    Raises:
        SearchError: the folder holds no search.
    """
    run_folder = Path(folder).expanduser().absolute()
    try:
        recorded = json.loads((run_folder / RUN_FILE).read_text())
        space = SearchSpace.model_validate(recorded["space"])
    except (OSError, ValueError, KeyError):
        raise SearchError(
            f"{run_folder}: not a search run folder (no readable {RUN_FILE})"
        ) from None
    return SearchRun(run_folder, _with_password(recorded["storage"]), recorded["study"], space)


def _with_password(storage: str) -> str:
    """A storage URL whose password was masked gets it back from the environment."""
    secret = os.environ.get("MERGEMED_STORAGE_PASSWORD") or os.environ.get("PGPASSWORD")
    if "***@" in storage and secret:
        return storage.replace("***@", f"{secret}@", 1)
    return storage


def _recorded_storage(record_path: Path, fingerprint: str) -> str | None:
    """The storage a run folder's record names, after checking it records this space."""
    recorded = json.loads(record_path.read_text())
    if recorded.get("space_sha256") != fingerprint:
        run_folder = record_path.parent
        raise SearchError(
            f"{run_folder}: holds a search of another space (its {RUN_FILE} records "
            f"space {recorded.get('space_sha256', '?')[:12]}, this one is {fingerprint[:12]}); "
            "use another --run-dir"
        )
    return recorded.get("storage")


def _create_once(path: Path, data: dict[str, Any]) -> bool:
    """Write ``path`` whole unless it exists; False when another process made it first.

    Workers started together on one run folder all find no record: each writes its own
    partial file and hard-links it into place, which succeeds for exactly one of them.
    """
    partial = path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.partial")
    partial.write_text(json.dumps(data, indent=2, default=str) + "\n")
    try:
        os.link(partial, path)
    except FileExistsError:
        return False
    except OSError:  # a file system without hard links: last writer wins, whole either way
        os.replace(partial, path)
        return True
    finally:
        partial.unlink(missing_ok=True)
    return True


def load_study(run: SearchRun, *, create: bool = False) -> Any:
    """The run's Optuna study (created with ``create``), checked against the space.

    Raises:
        SearchError: the storage cannot be reached (named, password masked) or its study was
            made from another space.
    """
    import warnings

    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    for attempt in range(STORAGE_ATTEMPTS):
        try:
            return _checked_study(run, create, _open_study(run, create))
        except SearchError as error:
            # Workers starting together race to create the schema (SQLite: "table ...
            # already exists"; PostgreSQL: a unique violation); the loser retries.
            racing = any(m in str(error) for m in SCHEMA_RACES)
            if not racing or attempt == STORAGE_ATTEMPTS - 1:
                raise
            time.sleep(0.5 * (attempt + 1))
    raise AssertionError("unreachable")  # pragma: no cover


STORAGE_ATTEMPTS = 5
SCHEMA_RACES = ("already exists", "UniqueViolation", "IntegrityError")


def _open_study(run: SearchRun, create: bool) -> Any:
    import optuna
    from optuna.storages import RDBStorage

    try:
        storage = RDBStorage(run.storage, **_heartbeat())
        space = run.space
        directions = _directions(space)
        if create:
            study = optuna.create_study(
                study_name=run.study_name,
                storage=storage,
                load_if_exists=True,
                directions=directions,
                sampler=_sampler(space),
            )
        else:
            study = optuna.load_study(
                study_name=run.study_name, storage=storage, sampler=_sampler(space)
            )
    except MergemedError:
        raise
    except KeyError:
        raise SearchError(f"{run.folder}: no search has started there yet") from None
    except Exception as error:  # SQLAlchemy and drivers raise many kinds
        raise SearchError(
            f"storage {run.shown_storage}: cannot be used: "
            f"{redact(type(error).__name__ + ': ' + str(error).splitlines()[0])}"
        ) from None
    return study


def _checked_study(run: SearchRun, create: bool, study: Any) -> Any:
    space = run.space
    fingerprint = space.fingerprint()
    recorded = study.user_attrs.get("space_sha256")
    if recorded is None and create:
        study.set_user_attr("space_sha256", fingerprint)
    elif recorded is not None and recorded != fingerprint:
        raise SearchError(
            f"storage {run.shown_storage}: study {run.study_name} was made from another space"
        )
    return study


def _heartbeat() -> dict[str, Any]:
    """Heartbeat settings: a trial whose worker stopped beating is retried once (the
    callback's name changed in Optuna 4.9)."""
    from optuna import storages

    settings: dict[str, Any] = {
        "heartbeat_interval": HEARTBEAT_SECONDS,
        "grace_period": GRACE_SECONDS,
    }
    if hasattr(storages, "RetryHeartbeatStaleTrialCallback"):
        settings["heartbeat_stale_trial_callback"] = storages.RetryHeartbeatStaleTrialCallback(
            max_retry=1
        )
    else:  # Optuna < 4.9
        settings["failed_trial_callback"] = storages.RetryFailedTrialCallback(max_retry=1)
    return settings


def _directions(space: SearchSpace) -> list[str]:
    return ["minimize" if o == "forgetting" else "maximize" for o in space.objectives]


def _sampler(space: SearchSpace) -> Any:
    import optuna

    if space.strategy == "grid":
        return optuna.samplers.GridSampler(
            {n: list(range(len(d.grid()))) for n, d in space.vary.items()}, seed=space.seed
        )
    if space.strategy == "random":
        return optuna.samplers.RandomSampler(seed=space.seed)
    if space.strategy == "tpe":
        return optuna.samplers.TPESampler(seed=space.seed, multivariate=True)
    if space.strategy == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=space.seed)
    return optuna.samplers.CmaEsSampler(seed=space.seed)
