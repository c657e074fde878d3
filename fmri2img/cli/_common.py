"""Shared plumbing of the thin CLI modules: error translation and common options."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any

import typer

from fmri2img import interrupts
from fmri2img.errors import Fmri2imgError

TrackingUriOption = typer.Option(
    None, "--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or sqlite:///mlflow.db)."
)
ExperimentOption = typer.Option("fmri2img/imagery", "--experiment", help="MLflow experiment name.")


def fail(message: str, code: int = 2) -> None:
    """Print exactly one line on stderr and exit with ``code``."""
    line = " ".join(str(message).split())  # one line, whatever the message contained
    typer.echo(f"Error: {line}", err=True)
    raise typer.Exit(code)


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
