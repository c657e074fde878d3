"""The ``fmri2img`` Typer app. Each command lives in its own thin module under
:mod:`fmri2img.cli` and calls exactly one library function."""

from __future__ import annotations

import os

# One clean line for user errors: no rich boxes, no pretty tracebacks.
os.environ.setdefault("TYPER_USE_RICH", "0")

import typer  # noqa: E402

from fmri2img import __version__  # noqa: E402
from fmri2img.cli import ablate, adapt, calibrate, embed, figures, index, reconstruct, synth, train, ui  # noqa: E402
from fmri2img.cli import eval as evaluate  # noqa: E402  (the module is named after the command)

app = typer.Typer(
    name="fmri2img",
    help="Decode CLIP embeddings from 7T fMRI: perception (NSD) vs imagery (NSD-Imagery) benchmark.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"fmri2img {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version_callback, is_eager=True, help="Show the version and exit."
    ),
) -> None:
    """fmri2img: a reproducible perception-vs-imagery fMRI decoding benchmark."""


# --- command registry: one line per command ----------------------------------------------
for name, module in (("ui", ui), ("figures", figures), ("embed", embed), ("index", index), ("train", train),
                     ("eval", evaluate), ("adapt", adapt), ("ablate", ablate), ("synth", synth),
                     ("calibrate", calibrate), ("reconstruct", reconstruct)):
    app.command(name, help=module.command.__doc__)(module.command)
# --- end of command registry -----------------------------------------------------------


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
