"""Compare population-interval rules on finished calibrations, without rerunning a world.

Every row of ``calibration_worlds.csv`` keeps the mean squares its interval came from, so the
intervals another rule would have reported can be remade and judged against the same truths::

    python projects/imagery/interval_rules.py outputs/calibration_family/calibration_worlds.csv \
        [--seeds 1010-1049]

Prints one markdown table: per setting, decoder and statistic, the coverage (count), width factor
and rejections of the null value under each rule of :data:`RULES` (docs/trust.md).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from fmri2img.core.errors import InputError
from fmri2img.evaluation.calibration import remake_intervals, summarize
from fmri2img.evaluation.intervals import nadeau_bengio_factor
from fmri2img.reporting.hypotheses import mostly_no_op
from fmri2img.stages.calibrate import KEPT_INITIAL_COLUMN

#: Imagery folds of the research track's H2/H3 statistics (projects/imagery/configs/calibrate*.yaml: folds: 3).
N_FOLDS = 3

#: rule name -> keyword arguments of :func:`remake_intervals` (``no_ops``: then :func:`withdraw_no_ops`).
RULES = {
    "Satterthwaite df": {"cap_df": False},
    "capped df (reported)": {"cap_df": True},
    "capped df + Nadeau-Bengio folds": {"cap_df": True, "fold_factor": nadeau_bengio_factor(N_FOLDS)},
    "capped df + no-op-fold rule": {"cap_df": True, "no_ops": True},
}


def withdraw_no_ops(rows: pd.DataFrame) -> pd.DataFrame:
    """``rows`` with H3's intervals withdrawn (NaN bounds) where the chosen adapter kept its initial weights in
    half of its fold models or more (subjects x folds: an H3 row's ``n_subjects x n_items``), by the report's own test
    (:func:`~fmri2img.reporting.hypotheses.mostly_no_op`); rescores runs made before the rule."""
    h3 = rows["statistic"] == "h3_specific_gain"
    no_op = h3 & mostly_no_op(rows[KEPT_INITIAL_COLUMN], rows["n_subjects"] * rows["n_items"])
    out = rows.copy()
    out.loc[no_op, ["low", "high", "se"]] = float("nan")
    return out


def _seed_range(text: str) -> tuple[int, int]:
    first, _, last = text.partition("-")
    try:
        return int(first), int(last or first)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--seeds {text!r}: expected FIRST-LAST, e.g. 1010-1049") from None


def compare(rows: pd.DataFrame) -> pd.DataFrame:
    """One row per (setting, decoder, statistic) and rule: coverage, width factor, rejections."""
    rows = rows[rows["estimand"] == "population"]
    h3 = rows["statistic"] == "h3_specific_gain"
    counted = KEPT_INITIAL_COLUMN in rows.columns and rows.loc[h3, KEPT_INITIAL_COLUMN].notna().all()
    parts = []
    for rule, kwargs in RULES.items():
        kwargs = dict(kwargs)
        no_ops = kwargs.pop("no_ops", False)
        if no_ops and not counted:  # runs made before the column: the rule cannot be applied
            continue
        remade = remake_intervals(rows, **kwargs)
        parts.append(summarize(withdraw_no_ops(remade) if no_ops else remade).assign(rule=rule))
    return pd.concat(parts, ignore_index=True)


def markdown(table: pd.DataFrame) -> str:
    lines = ["| setting | decoder | statistic | rule | coverage (count) | calibrated would cover | width factor "
             "| rejects null value |", "|---|---|---|---|---|---|---|---|"]
    for _, r in table.sort_values(["setting", "decoder", "statistic"], kind="stable").iterrows():
        lines.append(f"| {r['setting']} | {r['decoder']} | {r['statistic']} | {r['rule']} | {r['coverage']:.0%} "
                     f"({r['n_covered']}/{r['n_defined']}) | {r['expected_coverage']:.0%} | {r['width_factor']:.2f} "
                     f"| {r['n_rejected']}/{r['n_defined']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("worlds", nargs="+", type=Path, help="calibration_worlds.csv files of fmri2img calibrate")
    parser.add_argument("--seeds", type=_seed_range, help="only these world seeds, FIRST-LAST")
    args = parser.parse_args(argv)
    for path in args.worlds:
        if not path.is_file():
            print(f"Error: {path}: no such file (expected a calibration_worlds.csv).", file=sys.stderr)
            return 2
    rows = pd.concat([pd.read_csv(p) for p in args.worlds], ignore_index=True)
    if args.seeds:
        rows = rows[rows["world_seed"].between(*args.seeds)]
    try:
        print(markdown(compare(rows)))
    except InputError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
