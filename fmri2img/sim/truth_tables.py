"""Simulated truth tables shipped with the package (``fmri2img calibrate --write-truth``).

A planted synthetic world has no closed-form truth for H1-H3; ``calibrate`` simulates it as the mean
estimate over worlds of the same generator parameters and shape: independent worlds, or the new-stimuli
siblings of one world family (then the table names that family's ``world_seed``; docs/trust.md). The
tables in ``shipped_truth/`` were simulated for the worlds the project ships (the demo world); the
planted-truth check uses the one whose parameters and shape equal the world's, when the ablation
config names no table of its own.
"""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

#: Package folder of the shipped tables (``<setting>.json`` as ``calibrate --write-truth`` writes them).
SHIPPED_DIR = "shipped_truth"


def shipped_truth_tables() -> list[dict[str, Any]]:
    """Every shipped truth table, in file-name order."""
    folder = resources.files("fmri2img.sim").joinpath(SHIPPED_DIR)
    paths = sorted((p for p in folder.iterdir() if p.name.endswith(".json")), key=lambda p: p.name)
    return [json.loads(p.read_text(encoding="utf-8")) for p in paths]


def matching_truth(table: dict[str, Any] | None, truth: dict[str, Any] | None) -> dict[str, Any] | None:
    """``table`` when it was simulated for this world's generator parameters and shape (``truth`` is the
    world's ``truth/params.json``) and, for a table conditional on a world family (``world_seed``), for
    this world's family, else None."""
    if not table or not truth:
        return None
    same = table.get("params") == truth.get("params") and table.get("shape") == truth.get("shape")
    if "world_seed" in table:
        same = same and table["world_seed"] == truth.get("seeds", {}).get("world")
    return table if same else None


def truth_table_for(truth: dict[str, Any] | None, table: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """The truth table for a world: ``table`` (a config's own) when it matches, else the shipped one
    that matches, else None."""
    if table is not None:
        return matching_truth(table, truth)
    return next((t for t in shipped_truth_tables() if matching_truth(t, truth)), None)
