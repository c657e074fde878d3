"""Shared plumbing of the thin CLI modules: error translation, common options, choices.

Each command imports the stage it runs when it runs (the one measured exception to imports at the
top of a module: importing every stage costs several seconds of torch, MLflow and open_clip
imports, so ``fmri2img --help`` and option errors would no longer be instant)."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable, Sequence
from enum import Enum
from typing import Any

import typer

from fmri2img.core import interrupts
from fmri2img.core.constants import DEFAULT_EXPERIMENT
from fmri2img.core.errors import Fmri2imgError

TrackingUriOption = typer.Option(
    None, "--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or sqlite:///mlflow.db)."
)
ExperimentOption = typer.Option(DEFAULT_EXPERIMENT, "--experiment", help="MLflow experiment name.")


def choices(name: str, values: Sequence[str]) -> type[Enum]:
    """A string Enum of ``values`` (from :mod:`fmri2img.core.vocab`) for a Typer option."""
    return Enum(name, {value: value for value in values}, type=str)


def fail(message: str, code: int = 2) -> None:
    """Print exactly one line on stderr and exit with ``code``."""
    line = " ".join(str(message).split())  # one line, whatever the message contained
    typer.echo(f"Error: {line}", err=True)
    raise typer.Exit(code)


def _forget_escaped_interrupt() -> None:
    """Clear CPython's "unhandled KeyboardInterrupt" flag, so ``python -m fmri2img.cli.main``
    exits 130 like the ``fmri2img`` script.

    When SIGINT lands while code run by ``exec``/``eval`` of a *string* executes (libraries do
    this), the KeyboardInterrupt leaving that call sets the flag even though we handle it later,
    and under ``python -m`` ``Py_RunMain`` then kills the process with SIGINT at exit instead of
    returning our status. Every ``exec`` of a string resets the flag first (CPython
    ``Python/pythonrun.c``, ``run_eval_code_obj``); a trivial one leaves it reset."""
    exec("pass")  # noqa: S102 - a constant string, for the side effect described above


def handle_errors(func: Callable[..., Any]) -> Callable[..., Any]:
    """Turn the package's own errors into one stderr line + exit 2; Ctrl-C into exit 130."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            with interrupts.installed():  # a Ctrl-C swallowed by a finalizer is raised again
                return func(*args, **kwargs)
        except Fmri2imgError as exc:
            fail(str(exc), exc.exit_code)
        except KeyboardInterrupt:
            _forget_escaped_interrupt()
            typer.echo("Interrupted; the MLflow run was marked KILLED and partial outputs removed.", err=True)
            raise typer.Exit(130) from None
        except BaseException as exc:
            if type(exc).__name__ == "_Terminated":
                typer.echo("Terminated; the MLflow run was marked KILLED.", err=True)
                raise typer.Exit(143) from None
            raise

    return wrapper


def echo(message: str) -> None:
    """Progress/result messages go to stderr so stdout stays clean for piping."""
    print(message, file=sys.stderr)
