"""Beta-extraction benchmark: masked reads of one NSD session vs plain decompression (issue 9).

Measures, side by side in one run and each in a fresh subprocess (so each peak RSS, read from
``/proc/self/status`` ``VmHWM`` in the child, or ``getrusage(RUSAGE_CHILDREN)`` for ``gzip``, is
that measurement's alone):

* ``gzip -dc FILE > /dev/null`` and Python ``zlib`` streaming decompression of the ``.nii.gz``
  (what any reader must at least pay);
* :func:`fmri2img.data.nsd.read_masked_betas` on the ``.nii.gz`` (the function the index stage
  calls, via ``build_beta_cache``), reading the session ``--reads`` times in one process, as the
  index stage reads session after session, to show that the peak RSS stays flat;
* the same function on the ``.hdf5`` twin.

The masked outputs of both formats must be equal (exit status 1 otherwise). Prints a table and,
last, exactly two lines: ``extract_vs_decompress=<x>`` (time of the faster plain decompression /
time of our ``.nii.gz`` extraction; bar >= 0.8) and ``peak_rss_mb=<x>`` (peak RSS of the
``.nii.gz`` extraction child; bar <= ~1.5 x one session's raw int16 volume). MB = 2**20 bytes.
``extract_vs_decompress_cpu`` (the same ratio in CPU seconds) is printed too: on a shared, loaded
machine it is steadier than wall time.

    python benchmarks/bench_extract.py --tiny                      # seconds (CI)
    python benchmarks/bench_extract.py --root /tmp/bench_nsd       # writes one NSD-size session
                                                                   # there if absent (~90 s, ~3 GB)
    python benchmarks/bench_extract.py --root /tmp/bench_nsd --repeats 3 --reads 2
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np

#: Bytes of compressed input handed to zlib per call in the plain-decompression baseline.
ZLIB_CHUNK = 16 * 1024 * 1024

#: A session written in seconds for CI: 750 volumes of a 16 x 20 x 16 grid, 800 nsdgeneral voxels.
TINY_SHAPE = dict(grid=(16, 20, 16), n_mask_voxels=800, n_sessions=1, n_shared=30)

#: Bar on the peak RSS (issue 9): this many times one session's raw volume.
RSS_BAR_FACTOR = 1.5

MODES = ("gzip", "zlib", "nifti", "hdf5")


def _hwm_mb() -> float:
    """Peak resident set size of this process in MB (``VmHWM``)."""
    with open("/proc/self/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # kB on Linux


def _files(root: Path, subject: str, session: int) -> dict[str, Path]:
    from fmri2img.data import nsd_constants

    return {
        "nifti": root / nsd_constants.BETAS_NII.format(subject=subject, session=session),
        "hdf5": root / nsd_constants.BETAS_HDF5.format(subject=subject, session=session),
        "mask": root / nsd_constants.NSDGENERAL.format(subject=subject),
    }


def worker(mode: str, root: Path, subject: str, session: int, reads: int, save: str | None) -> dict:
    """One measurement in this (fresh) process; returns a JSON-able dict."""
    files = _files(root, subject, session)
    if mode == "gzip":
        with open(os.devnull, "wb") as null:
            t0 = time.perf_counter()
            subprocess.run(["gzip", "-dc", str(files["nifti"])], stdout=null, check=True)
            seconds = time.perf_counter() - t0
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        return {"mode": mode, "seconds": seconds, "cpu_seconds": usage.ru_utime + usage.ru_stime,
                "peak_rss_mb": usage.ru_maxrss / 1024.0}
    if mode == "zlib":
        t0, c0 = time.perf_counter(), time.process_time()
        n_out = 0
        with open(files["nifti"], "rb") as fh:
            dec = zlib.decompressobj(wbits=zlib.MAX_WBITS | 16)  # gzip container
            while chunk := fh.read(ZLIB_CHUNK):
                while chunk:
                    n_out += len(dec.decompress(chunk))
                    chunk = dec.unused_data  # next gzip member, if any
                    if chunk:
                        n_out += len(dec.flush())
                        dec = zlib.decompressobj(wbits=zlib.MAX_WBITS | 16)
            n_out += len(dec.flush())
        seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
        return {"mode": mode, "seconds": seconds, "cpu_seconds": cpu, "peak_rss_mb": _hwm_mb(), "bytes_out": n_out}

    from fmri2img.data import nsd

    voxels = nsd.mask_voxels(nsd.read_mask(files["mask"]))  # once per subject in the index stage
    start_mb = _hwm_mb()
    seconds, cpu, hwm = [], [], []
    X = invalid = None
    for _ in range(reads):
        X = invalid = None  # as build_beta_cache: the previous session's output is gone
        t0, c0 = time.perf_counter(), time.process_time()
        X, invalid = nsd.read_masked_betas(files[mode], voxels)
        seconds.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
        hwm.append(_hwm_mb())
    if save:
        np.save(save + ".X.npy", X, allow_pickle=False)
        np.save(save + ".invalid.npy", invalid, allow_pickle=False)
    # the first read counts (a fresh process, as conservative as it gets); the others are printed
    return {"mode": mode, "seconds": seconds[0], "cpu_seconds": cpu[0], "all_seconds": seconds, "peak_rss_mb": hwm[-1],
            "hwm_after_each_read_mb": hwm, "start_rss_mb": start_mb, "shape": list(X.shape)}


def _run_child(mode: str, args, save: str | None) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", mode, "--root", str(args.root),
           "--subject", args.subject, "--session", str(args.session), "--reads", str(args.reads)]
    if save:
        cmd += ["--save", save]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr)
        raise SystemExit(f"worker {mode} failed (exit {proc.returncode})")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def ensure_world(root: Path, subject: str, session: int, tiny: bool) -> bool:
    """Write a one-session world at ``root`` unless its beta files are there; True if written."""
    files = _files(root, subject, session)
    if all(p.is_file() for p in files.values()):
        return False
    from fmri2img.sim.world import WorldShape, write_world

    scale = WorldShape(**TINY_SHAPE) if tiny else "nsd"
    print(f"writing a {'tiny' if tiny else 'NSD-size'} session ({subject}, {session} session(s)) into {root} ...",
          flush=True)
    t0 = time.perf_counter()
    write_world(root, subjects=(subject,), scale=scale, sessions=session, beta_format="both",
                progress=False, force=root.exists() and any(root.iterdir()))
    print(f"  written in {time.perf_counter() - t0:.1f} s", flush=True)
    return True


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, default=None,
                    help="world / NSD root holding the session; written there if absent (default: a temp dir)")
    ap.add_argument("--subject", default="subj01")
    ap.add_argument("--session", type=int, default=1)
    ap.add_argument("--tiny", action="store_true", help="a tiny session written in seconds (CI)")
    ap.add_argument("--repeats", type=int, default=1, help="rounds of all measurements (min time is kept)")
    ap.add_argument("--reads", type=int, default=2,
                    help="sessions read in sequence by each extraction child (peak RSS must stay flat)")
    ap.add_argument("--modes", default=",".join(MODES), help="comma-separated subset of " + ",".join(MODES))
    ap.add_argument("--worker", choices=MODES, help=argparse.SUPPRESS)
    ap.add_argument("--save", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.worker:
        print(json.dumps(worker(args.worker, args.root, args.subject, args.session, args.reads, args.save)))
        return 0

    scratch = Path(tempfile.mkdtemp(prefix="bench_extract-"))
    try:
        if args.root is None:
            args.root = scratch / "world"
        ensure_world(args.root, args.subject, args.session, args.tiny)
        return _bench(args, scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _bench(args, scratch: Path) -> int:
    import nibabel as nib

    files = _files(args.root, args.subject, args.session)
    shape = nib.load(files["nifti"]).shape
    raw_mb = float(np.prod(shape)) * 2 / 2**20  # int16
    modes = [m for m in args.modes.split(",") if m]
    results: dict[str, list[dict]] = {m: [] for m in modes}
    for _ in range(args.repeats):  # interleaved rounds: load changes hit every mode alike
        for mode in modes:
            save = str(scratch / mode) if mode in ("nifti", "hdf5") else None
            results[mode].append(_run_child(mode, args, save))
    best = {m: min(rs, key=lambda r: r["seconds"]) for m, rs in results.items()}
    peak = {m: max(r["peak_rss_mb"] for r in rs) for m, rs in results.items()}

    gz_mb = files["nifti"].stat().st_size / 2**20
    print(f"\nsession {files['nifti'].name}: shape {shape}, raw int16 {raw_mb:.0f} MB, .nii.gz {gz_mb:.0f} MB, "
          f"{args.repeats} round(s), {args.reads} read(s) per extraction child")
    print(f"{'method':<34} {'time_s':>8} {'cpu_s':>7} {'MB/s raw':>9} {'peak_rss_mb':>12}")
    labels = {"gzip": "gzip -dc > /dev/null", "zlib": "python zlib stream (16 MB chunks)",
              "nifti": "read_masked_betas(.nii.gz)", "hdf5": "read_masked_betas(.hdf5)"}
    for mode in modes:
        t = best[mode]["seconds"]
        print(f"{labels[mode]:<34} {t:8.2f} {best[mode]['cpu_seconds']:7.2f} {raw_mb / t:9.0f} {peak[mode]:12.0f}")
    for mode in ("nifti", "hdf5"):
        if mode in modes:
            r = best[mode]
            print(f"  {mode}: RSS after imports+mask {r['start_rss_mb']:.0f} MB; peak after each read "
                  + ", ".join(f"{x:.0f}" for x in r["hwm_after_each_read_mb"]) + " MB; per-read s "
                  + ", ".join(f"{x:.2f}" for x in r["all_seconds"]))

    status = 0
    if "nifti" in modes and "hdf5" in modes:
        same = all(
            np.array_equal(np.load(scratch / f"nifti.{k}.npy"), np.load(scratch / f"hdf5.{k}.npy"))
            for k in ("X", "invalid")
        )
        print(f"formats_equal={same}")
        if not same:
            print("ERROR: .nii.gz and .hdf5 extractions differ", file=sys.stderr)
            status = 1
    if "nifti" in modes:
        print(f"rss_bar_mb={RSS_BAR_FACTOR * raw_mb:.0f}")
    decomp = [best[m]["seconds"] for m in ("gzip", "zlib") if m in modes]
    ratio = min(decomp) / best["nifti"]["seconds"] if decomp and "nifti" in modes else float("nan")
    if decomp and "nifti" in modes:  # CPU seconds: less sensitive to a loaded machine than wall time
        cpu_decomp = min(best[m]["cpu_seconds"] for m in ("gzip", "zlib") if m in modes)
        print(f"extract_vs_decompress_cpu={cpu_decomp / best['nifti']['cpu_seconds']:.3f}")
    print(f"extract_vs_decompress={ratio:.3f}")
    print(f"peak_rss_mb={peak.get('nifti', float('nan')):.0f}")
    return status


if __name__ == "__main__":
    sys.exit(main())
