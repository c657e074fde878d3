"""Process helpers for tests that start servers: the children of a process, read from /proc."""

from __future__ import annotations

from pathlib import Path


def children(pid: int) -> list[int]:
    """PIDs whose parent is ``pid`` (processes that exit while /proc is read are skipped)."""
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat[stat.rindex(")") + 2:].split()[1]) == pid:
                out.append(int(entry.name))
    return out
