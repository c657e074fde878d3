"""The Slurm cluster tests submit to: found through the Slurm client commands, never mocked.

CI starts a single-node cluster with ``scripts/slurm/start-cluster.sh`` (which prints the
``SLURM_CONF`` to export); on a lab machine the tests use whatever cluster ``SLURM_CONF`` (or
``/etc/slurm/slurm.conf``) names. Tests take the session fixture ``slurm_cluster`` (conftest.py),
which skips them with the reason when no cluster answers, or fails them where
``FMRI2IMG_REQUIRE_SLURM=1`` says a cluster must be there (CI).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass

#: Set to 1 (CI does) to fail, not skip, the tests that need a cluster when none answers.
REQUIRE_ENV = "FMRI2IMG_REQUIRE_SLURM"
START_HINT = 'start one (as root) with: eval "$(scripts/slurm/start-cluster.sh)"'
#: Node states in which a node takes jobs (sinfo's %T).
USABLE_STATES = ("idle", "mixed", "allocated", "completing")
COMMAND_TIMEOUT_S = 20


@dataclass(frozen=True)
class SlurmCluster:
    """What the tests need to know of the cluster (sinfo's view of the default partition)."""

    conf: str | None
    partition: str
    nodes: str
    cpus: int
    mem_mb: int


def run(*args: str) -> subprocess.CompletedProcess:
    """Run a Slurm client command; its output as text."""
    return subprocess.run(list(args), capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S, check=False)


def find_cluster() -> tuple[SlurmCluster | None, str]:
    """The cluster the client commands reach, or None and why not."""
    conf = os.environ.get("SLURM_CONF")
    where = f"SLURM_CONF={conf}" if conf else "SLURM_CONF unset"
    if shutil.which("sinfo") is None:
        return None, f"Slurm's client commands are not installed; {START_HINT}"
    if conf and not os.path.isfile(conf):  # the commands would look for a config server in DNS first
        return None, f"{where} names no file; {START_HINT}"
    try:
        # scontrol ping answers at once; sinfo retries a stopped controller for ~10 s
        ping = run("scontrol", "ping")
        info = run("sinfo", "-h", "-o", "%P|%N|%T|%c|%m") if " is UP" in ping.stdout else ping
    except subprocess.TimeoutExpired:
        return None, f"Slurm's controller gave no answer within {COMMAND_TIMEOUT_S}s ({where}); {START_HINT}"
    if info is ping or info.returncode != 0:
        lines = (info.stdout + info.stderr).strip().splitlines()
        return None, f"no Slurm controller answers ({where}: {lines[0] if lines else 'no message'}); {START_HINT}"
    rows = [line.split("|") for line in info.stdout.splitlines() if line.count("|") == 4]
    usable = [r for r in rows if r[0].endswith("*") and r[2].rstrip("*~#!%$@^-") in USABLE_STATES]
    if not usable:
        return None, f"the default partition has no usable node ({where}; sinfo: {info.stdout.strip()!r})"
    partition, nodes, _, cpus, mem = usable[0]
    accounting = run("sacct", "-n", "-X", "-P", "-o", "JobID", "--starttime", "now")
    if accounting.returncode != 0:
        return None, (f"the cluster has no accounting ({accounting.stderr.strip()}); without slurmdbd a "
                      "killed task is never seen as failed")
    return SlurmCluster(conf, partition.rstrip("*"), nodes, int(cpus.rstrip("+")), int(mem.rstrip("+"))), ""


def sacct_states(job_id: str) -> dict[str, str]:
    """Final or current state of each job of an array, ``{"12_0": "COMPLETED", ...}``."""
    out = run("sacct", "-n", "-X", "-P", "-o", "JobID,State", "-j", job_id).stdout
    return dict(line.split("|", 1) for line in out.splitlines() if "|" in line)


def squeue_ids(job_name: str) -> list[str]:
    """Ids of the queued or running jobs named ``job_name``."""
    return run("squeue", "-h", "-n", job_name, "-o", "%i").stdout.split()
