"""The project's own files agree with each other: pins, MLproject entry points, .gitignore."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _constraints() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "requirements" / "constraints.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            pins[name.lower().replace("_", "-")] = version
    return pins


def test_torch_pair_pinned_identically_everywhere():
    pins = _constraints()
    make_pair = re.search(r"TORCH_PAIR := (.+)", (ROOT / "Makefile").read_text()).group(1).split()
    conda = yaml.safe_load((ROOT / "conda.yaml").read_text())
    pip_section = next(d["pip"] for d in conda["dependencies"] if isinstance(d, dict))
    for spec in make_pair:
        name, version = spec.split("==")
        assert pins[name] == version, spec
        assert spec in pip_section, spec
    assert "-c requirements/constraints.txt" in pip_section
    assert "python=3.11" in conda["dependencies"]


def test_every_dependency_is_locked():
    import tomllib

    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    pins = _constraints()
    for dep in deps:
        name = re.split(r"[<>=!~ ]", dep)[0].lower().replace("_", "-")
        assert name in pins, f"{name} is not in requirements/constraints.txt"


def test_mlproject_entry_points_call_real_commands():
    import typer.main

    from fmri2img.cli.main import app

    commands = typer.main.get_command(app).commands
    project = yaml.safe_load((ROOT / "MLproject").read_text())
    assert (ROOT / project["conda_env"]).is_file()
    stages = {"synth", "index", "embed", "train", "eval", "adapt", "ablate", "figures"}
    assert stages <= set(project["entry_points"])
    for name, entry in project["entry_points"].items():
        argv = shlex.split(entry["command"])
        assert argv[0] == "fmri2img" and argv[1] in commands, name
        options = {p.opts[0] for p in commands[argv[1]].params} | {o for p in commands[argv[1]].params for o in p.opts}
        for token in argv[2:]:
            if token.startswith("--"):
                assert token in options, f"{name}: {token} is not an option of fmri2img {argv[1]}"
        for param in re.findall(r"{(\w+)}", entry["command"]):
            assert param in entry.get("parameters", {}), f"{name}: {{{param}}} has no parameter"


def test_gitignore_lists_generated_paths():
    ignored = (ROOT / ".gitignore").read_text().split()
    for path in (".venv/", "data/synthetic/", "cache/", "outputs/", "checkpoints/", "mlruns/", "mlflow.db",
                 "__pycache__/"):
        assert path in ignored, path


def test_every_shipped_config_validates():
    from fmri2img.core.config import load_config
    from fmri2img.stages.ablation.matrix import AblationConfig
    from fmri2img.stages.calibrate import CalibrationConfig

    configs = sorted((ROOT / "projects" / "imagery" / "configs").glob("*.yaml"))
    assert configs
    for path in configs:
        load_config(CalibrationConfig if path.name.startswith("calibrate") else AblationConfig, path).validate()
