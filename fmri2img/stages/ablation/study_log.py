"""What the ablation run shows in MLflow (``docs/mlflow_ui_notes.md``): the experiment opens on its runs
table with a description; the ablation run carries the report, ``hypotheses.json`` and the verdicts as
tags; a saved view (``fmri2img ui --compare``) lists the cells grouped by configuration and decoder."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fmri2img.core import tracking_layout

#: Columns of the compare view: the primary metric first (the runs are sorted by it), each with its interval.
HEADLINE_METRICS = ("imagery/cosine", "imagery/two_way", "imagery/retrieval_at_1", "imagery_vision/cosine",
                    "shared1000/cosine", "shared1000/two_way")
PRIMARY_METRIC = HEADLINE_METRICS[0]
#: The compare view's grouping (params of every cell run) and its extra param columns.
GROUP_BY = ("configuration", "decoder")
PARAM_COLUMNS = ("subject", "region")

#: The experiment's description (markdown, shown above its runs table).
DESCRIPTION = """\
**fmri2img imagery ablation.** Decoders of CLIP image embeddings from 7T fMRI (NSD), tested on
mental imagery (NSD-Imagery). The run **ablation** holds the study: report, figures,
`hypotheses.json`, verdict tags (`fmri2img.verdict.*`). Its child runs tagged `fmri2img.role = cell`
are the **cells**: one subject x one decoder (`ridge`, `mlp`, `two_stage`) x one configuration
(`perception_only`; `mixed`: imagery trials in training; `adapter_*`: a small adapter on the frozen
decoder; `finetune`: the whole decoder retrained). Runs tagged `fmri2img.role = checkpoint` train the
perception-only decoders the cells start from.

- **H1**: imagery transfers from a perception-trained decoder, degraded but above chance.
- **H2**: adding imagery trials to training improves imagery decoding without hurting perception.
- **H3**: a lightweight adapter recovers most of full fine-tuning's gain at a fraction of its cost.

To compare cells: **Views -> Compare cells** (or `fmri2img ui --compare`): the cells grouped by
configuration and decoder, `imagery/cosine` and other headline metrics as columns (`*_ci_low`,
`*_ci_high`: 95% bootstrap intervals). A cell's page shows its figure, curves, models and inputs.
"""


def start_study_run(run) -> None:
    """Mark the experiment as classic ML with :data:`DESCRIPTION` and ``run`` (a :class:`~fmri2img.core.tracking.Run`)
    as the study."""
    name = run.client.get_experiment(run.experiment_id).name
    tracking_layout.setup_experiment(run.client, name, DESCRIPTION)
    run.client.set_tag(run.run_id, tracking_layout.ROLE_TAG, tracking_layout.ROLE_STUDY)


def verdicts(hypotheses: Mapping[str, Any]) -> dict[str, str]:
    """``{"<decoder>.H1": "direction: supported; roadmap magnitude: not met", ..., "planted_truth": ...}``
    from the study's hypotheses (:mod:`fmri2img.reporting.hypotheses`)."""
    out = {f"{decoder}.{name}": f"direction: {result['direction']}; roadmap magnitude: {result['magnitude']}"
           for decoder, tests in sorted(hypotheses.get("decoders", {}).items())
           for name, result in sorted(tests.items()) if name in ("H1", "H2", "H3")}
    truth = hypotheses.get("planted_truth")
    if isinstance(truth, Mapping):
        out["planted_truth"] = (f"{truth['n_ok']} of {truth['n_checked']} intervals cover the truth"
                                if truth["n_checked"] else "not checked (no truth table for this world)")
    return out


def finish_study_run(run, summary_dir: Path, hypotheses: Mapping[str, Any]) -> str:
    """Attach the report, ``hypotheses.json`` and verdict tags to the study run; save the compare
    view; return its key. The run stays open (its ``tracking.run`` closes it)."""
    report = Path(summary_dir) / "report.md"
    tracking_layout.finish_study(run.client, run.run_id, report=report if report.is_file() else None,
                                 hypotheses=hypotheses, verdicts=verdicts(hypotheses), close=False)
    state = tracking_layout.compare_view_state(
        group_by=GROUP_BY, metrics=HEADLINE_METRICS, params=PARAM_COLUMNS,
        search_filter=f"tags.`{tracking_layout.ROLE_TAG}` = '{tracking_layout.ROLE_CELL}'", order_by=PRIMARY_METRIC)
    return tracking_layout.save_view(run.client, run.experiment_id, state)
