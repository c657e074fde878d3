"""``fmri2img ui``: open the MLflow UI on the project's tracking store (loopback by default)."""

from __future__ import annotations

import subprocess

import typer

from fmri2img.cli._common import TrackingUriOption, echo, handle_errors


@handle_errors
def command(
    tracking_uri: str = TrackingUriOption,
    host: str = typer.Option("127.0.0.1", help="Interface to bind; loopback unless you mean otherwise."),
    port: int = typer.Option(5000, help="Port of the UI."),
    print_only: bool = typer.Option(False, "--print", help="Print the command instead of running it."),
) -> None:
    """Open the MLflow UI on the tracking store (binds 127.0.0.1 unless --host says otherwise)."""
    from fmri2img.core.tracking import ui_command

    cmd = ui_command(tracking_uri, host=host, port=port)
    if print_only:
        typer.echo(" ".join(cmd))
        return
    echo(f"MLflow UI on http://{host}:{port} (Ctrl-C to stop)")
    raise typer.Exit(subprocess.call(cmd))
