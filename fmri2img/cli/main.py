"""The ``fmri2img`` Typer app. Each command lives in its own thin module under
:mod:`fmri2img.cli` and calls exactly one library function."""

from __future__ import annotations

import os

# One clean line for user errors: no rich boxes, no pretty tracebacks.
os.environ.setdefault("TYPER_USE_RICH", "0")

import typer  # noqa: E402

from fmri2img import __version__  # noqa: E402

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


# --- command registry: one line per command module ----------------------------------
from fmri2img.cli import ui  # noqa: E402

app.command("ui", help=ui.command.__doc__)(ui.command)
from fmri2img.cli import figures  # noqa: E402
app.command("figures", help=figures.command.__doc__)(figures.command)
from fmri2img.cli import embed  # noqa: E402
app.command("embed", help=embed.command.__doc__)(embed.command)
from fmri2img.cli import index  # noqa: E402
app.command("index", help=index.command.__doc__)(index.command)
from fmri2img.cli import train  # noqa: E402
app.command("train", help=train.command.__doc__)(train.command)
from fmri2img.cli import eval as eval_cmd  # noqa: E402
app.command("eval", help=eval_cmd.command.__doc__)(eval_cmd.command)
from fmri2img.cli import adapt  # noqa: E402
app.command("adapt", help=adapt.command.__doc__)(adapt.command)
from fmri2img.cli import ablate  # noqa: E402
app.command("ablate", help=ablate.command.__doc__)(ablate.command)
from fmri2img.cli import synth  # noqa: E402
app.command("synth", help=synth.command.__doc__)(synth.command)
# --- end of command registry -----------------------------------------------------------


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
