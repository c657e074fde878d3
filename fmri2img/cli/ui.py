"""``fmri2img ui``: open the MLflow UI on the project's tracking store (loopback by default)."""

from __future__ import annotations

import webbrowser

import typer

from fmri2img.cli._common import ExperimentOption, TrackingUriOption, echo, handle_errors
from fmri2img.core.errors import InputError


@handle_errors
def command(
    tracking_uri: str = TrackingUriOption,
    experiment: str = ExperimentOption,
    host: str = typer.Option("127.0.0.1", help="Interface to bind; loopback unless you mean otherwise."),
    port: int = typer.Option(5000, min=1, max=65535, help="Port of the UI."),
    compare: bool = typer.Option(False, "--compare", help="Print (and with --open, open) the view that compares "
                                 "the cells, grouped by configuration and decoder, headline metrics as columns."),
    create: bool = typer.Option(False, "--create", help="Open a new empty store if the store does not exist."),
    open_browser: bool = typer.Option(False, "--open", help="Open the page in the default web browser."),
    workers: int = typer.Option(1, min=1, help="Server worker processes."),
    print_only: bool = typer.Option(False, "--print", help="Print the store, URLs and command; start nothing."),
) -> None:
    """Open the MLflow UI on the tracking store (binds 127.0.0.1 unless --host says otherwise)."""
    from fmri2img.core import tracking_layout as layout
    from fmri2img.core import ui_server

    store = ui_server.resolve_store(tracking_uri, create=create)
    base = f"http://{host}:{port}"
    exp_id = ui_server.experiment_id(store, experiment)
    if compare and (exp_id is None or not ui_server.has_view(store, exp_id)):
        raise InputError(f"Experiment {experiment!r} in {store.uri} has no compare view (experiment tag "
                         f"{layout.SHARED_VIEW_TAG_PREFIX}{layout.COMPARE_VIEW_KEY}); `fmri2img ablate` writes it.")
    url = layout.runs_url(base, exp_id, layout.COMPARE_VIEW_KEY if compare else None) if exp_id else base
    cmd = ui_server.server_command(store, host=host, port=port, workers=workers)
    typer.echo(f"Store: {store.uri}")
    typer.echo(f"Artifacts: {store.artifact_root or 'as the store says'}")
    typer.echo(f"{'Compare' if compare else 'Runs'}: {url}")
    if print_only:
        typer.echo(" ".join(cmd))
        return
    ui_server.check_port_free(host, port)

    def announce(proc) -> None:
        if ui_server.wait_until_up(f"{base}/health", proc, timeout=120):
            echo(f"MLflow UI on {base} (Ctrl-C to stop)")
            if open_browser:

                webbrowser.open(url)

    raise typer.Exit(ui_server.serve(cmd, on_start=announce))
