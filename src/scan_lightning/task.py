"""One wrapper for every task (train, evaluate, export, each training phase): failures are logged with their
cause, W&B is always closed; and one entry-point helper that turns a rejected config into exit status 2."""
from __future__ import annotations

import functools
import sys
from typing import Any, Callable, TypeVar

from omegaconf import DictConfig

from scan_lightning.config import ConfigError, RunStopped
from scan_lightning.logs import get_logger

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
    """Run a ``@hydra.main`` function as a command. Hydra reports an override it cannot compose (unknown option,
    typo'd key, bad value type) with exit status 1; here that is status 2, like every other rejected input."""
    try:
        hydra_main()
    except SystemExit as err:
        if err.code == 1 and not _task_started:
            sys.exit(2)
        raise
