"""A tiny synthetic world + index + embeddings shared by the pipeline tests (built once per session)."""

from __future__ import annotations

from pathlib import Path

#: One 750-trial session, 250 images (30 shared), 300 voxels: small enough for seconds-long tests.
TINY = dict(grid=(10, 12, 10), n_mask_voxels=300, n_sessions=1, n_shared=30)


def build_tiny(root: Path, subjects=("subj01",), seed: int = 0, null: bool = False) -> dict[str, Path]:
    from fmri2img.data.index import build_index
    from fmri2img.embeddings.cache import synthetic_truth_set
    from fmri2img.sim.world import WorldShape, write_world

    data = root / "data"
    cache = root / "cache"
    write_world(data, subjects=subjects, scale=WorldShape(**TINY), seed=seed, null=null, progress=False)
    indices = {}
    for subject in subjects:
        indices[subject] = build_index(subject, data, cache, output=cache / "indices" / f"{subject}.parquet",
                                       manifest_dir=root / "manifests", progress=False)
    synthetic_truth_set(data, cache)
    return {"data": data, "cache": cache, "manifests": root / "manifests", **indices}
