"""The CLI spine: --version, --help on every command, the installed console script."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from fmri2img import __version__
from fmri2img.cli.main import app

runner = CliRunner()


def _commands():
    import typer.main

    group = typer.main.get_command(app)
    return sorted(group.commands)


def test_version():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.output.strip() == f"fmri2img {__version__}"


@pytest.mark.parametrize("command", _commands())
def test_help_on_every_command(command):
    result = runner.invoke(app, [command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output


def test_library_never_imports_typer():
    import pathlib

    root = pathlib.Path(__import__("fmri2img").__file__).parent
    offenders = [
        str(p.relative_to(root)) for p in root.rglob("*.py")
        if "cli" not in p.relative_to(root).parts and "import typer" in p.read_text()
    ]
    assert offenders == []


def test_console_script_subprocess():
    exe = shutil.which("fmri2img") or str(__import__("pathlib").Path(sys.executable).parent / "fmri2img")
    out = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == f"fmri2img {__version__}"
    bad = subprocess.run([exe, "no-such-command"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2
