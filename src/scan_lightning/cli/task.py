"""One wrapper for every task (train, evaluate, export, each training phase): failures are logged with their
cause, W&B is always closed; and one entry-point helper that turns a rejected config into exit status 2."""
from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from typing import Any, TypeVar

from hydra.errors import HydraException
from omegaconf import DictConfig

from scan_lightning.utils.config import ConfigError, RunStopped
from scan_lightning.utils.logs import get_logger

log = get_logger(__name__)
T = TypeVar("T")
USER_ERRORS = (ConfigError, ValueError, FileNotFoundError)
_task_started = False   # set when a task starts: Hydra's own composition errors come before it


def close_wandb() -> None:
    """Finish the W&B run, if W&B was used, so the next task (phase, sweep job) starts its own."""
    if "wandb" in sys.modules and sys.modules["wandb"].run is not None:
        sys.modules["wandb"].finish()


def task_wrapper(task: Callable[[DictConfig], T]) -> Callable[[DictConfig], T]:
    """Run ``task(cfg)``; an unexpected failure is logged (to the run's log file as well) and re-raised; W&B is
    closed whatever happens. Rejected input (:data:`USER_ERRORS`) is re-raised unlogged for the entry point."""

    @functools.wraps(task)
    def wrapped(cfg: DictConfig) -> T:
        try:
            return task(cfg)
        except USER_ERRORS:
            raise
        except RunStopped as err:
            log.error(str(err))
            raise
        except BaseException as err:
            log.error(f"{task.__name__} failed: {type(err).__name__}: {err}")
            raise
        finally:
            close_wandb()

    return wrapped


def run_entry_point(task: Callable[[DictConfig], Any], cfg: DictConfig, prefix: str = "Invalid configuration") -> Any:
    """What a ``@hydra.main`` function does: run ``task``; rejected input -> one line on stderr, exit status 2; a
    run that stopped for a named reason (:class:`RunStopped`) -> that reason on stderr, exit status 3."""
    global _task_started
    _task_started = True
    try:
        return task(cfg)
    except USER_ERRORS as err:
        print(f"{prefix}: {err}", file=sys.stderr)
        sys.exit(2)
    except RunStopped as err:
        print(f"Run stopped: {err}", file=sys.stderr)
        sys.exit(err.exit_code)


def cli(hydra_main: Callable[[], Any]) -> None:
    """Run a ``@hydra.main`` function as a command. Anything that stops Hydra before the task starts (an override
    it cannot compose: unknown option, typo'd key, bad value type; a run directory it cannot create) is one message
    on stderr and exit status 2, like every other rejected input; Hydra's own report would be status 1, with a
    traceback for the run directory. A task that fails keeps its full traceback, as does everything with
    ``HYDRA_FULL_ERROR=1``."""
    asked_for_trace = os.environ.get("HYDRA_FULL_ERROR") == "1"
    os.environ["HYDRA_FULL_ERROR"] = "1"   # Hydra re-raises instead of printing its own report
    try:
        hydra_main()
    except Exception as err:
        if _task_started or asked_for_trace:
            raise
        print(hydra_error_message(err), file=sys.stderr)
        sys.exit(2)


def hydra_error_message(err: Exception) -> str:
    """The one-line reason Hydra stopped before the task: its own message, or which folder could not be made."""
    if isinstance(err, OSError) and not isinstance(err, HydraException):   # MissingConfigException is one
        where = f" {err.filename}" if err.filename else ""
        return (f"Cannot create the run directory{where}: {err.strerror or err}. Choose a writable folder with "
                "hydra.run.dir=... (hydra.sweep.dir=... with -m) or paths.log_dir=...")
    cause = f"\n{err.__cause__}" if err.__cause__ is not None and str(err.__cause__) not in str(err) else ""
    return f"{err}{cause}"
