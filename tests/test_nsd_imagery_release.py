"""The NSD-Imagery release reader against a small release in the published layout (tests/_imagery_release.py)."""

from __future__ import annotations

import h5py
import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import scipy.io
import scipy.sparse
from PIL import Image
from _imagery_release import (
    TARGETS,
    build_release,
    truncate,
    write_behaviour,
    write_brick,
    write_design,
    write_pair_list,
    write_png,
)

from fmri2img.core.errors import CorruptFileError, InputError, MismatchError, MissingInputError
from fmri2img.data import nsd_constants as C
from fmri2img.data import nsd_imagery_release as R
from fmri2img.data import nsd_imagery_verify as V

KEY = ["beta_volume", "run_name", "task", "epoch", "stim_set", "cue", "trial", "onset_tr", "design_column"]


@pytest.fixture
def fx(tmp_path):
    return build_release(tmp_path / "release")


def read(fx, **kw):
    return R.read_release(fx.root, fx.subject, progress=False, **kw)


def normalised(frame: pd.DataFrame) -> pd.DataFrame:
    out = frame[KEY].astype(object)
    return out.where(out.notna(), None).reset_index(drop=True)


def fail(fx, exc_type, *fragments, **kw):
    """Read ``fx``, expect ``exc_type`` with a one-line message containing every fragment."""
    with pytest.raises(exc_type) as info:
        read(fx, **kw)
    message = str(info.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    return message


# --- the mapping ---------------------------------------------------------------------------------


def test_every_volume_maps_to_its_run_trial_task_and_cue(fx):
    release = read(fx)
    t = release.table
    assert len(t) == C.IMAGERY_BETAS and list(t.columns[: len(R.MAPPING_COLUMNS)]) == list(R.MAPPING_COLUMNS)
    pd.testing.assert_frame_equal(normalised(t), normalised(fx.truth))
    counts = t.assign(epoch=t["epoch"].fillna("-")).groupby(["task", "epoch"]).size().to_dict()
    assert counts == {("vision", "-"): 144, ("imagery", "-"): 288, ("attention", "cue"): 144,
                      ("attention", "detection"): 144}


def test_specific_volumes_including_both_attention_epochs(fx):
    t = read(fx).table.set_index("beta_volume")
    beh = fx.behaviour
    assert (t.loc[0, "run_name"], t.loc[0, "trial"], t.loc[0, "task"]) == ("visA", 1, "vision")
    assert t.loc[0, "cue"] == beh["visA"]["CONDITION"][0] and t.loc[0, "cue_shown"] == beh["visA"]["CUE"][0]
    for volume, epoch in ((48, "cue"), (49, "detection")):  # attA trial 1: two betas, cue epoch first
        row = t.loc[volume]
        assert (row["run_name"], row["trial"], row["task"], row["epoch"]) == ("attA", 1, "attention", epoch)
        assert row["cue"] == beh["attA"]["CONDITION"][0]
        assert row["rt"] == beh["attA"]["RT"][0] and row["button"] == beh["attA"]["BUTTON"][0]
    assert t.loc[49, "onset_tr"] - t.loc[48, "onset_tr"] == 3  # the detection epoch follows the 3-s cue epoch
    assert (t.loc[143, "run_name"], t.loc[143, "trial"], t.loc[143, "epoch"]) == ("attA", 48, "detection")
    assert (t.loc[144, "run_name"], t.loc[144, "trial"], t.loc[144, "task"]) == ("imgA_1", 1, "imagery")
    assert (t.loc[576, "run_name"], t.loc[719, "run_name"], t.loc[719, "trial"]) == ("imgA_2", "imgC_2", 48)
    c_word = dict(zip(C.IMAGERY_CUES["C"], TARGETS["C"]))
    assert t.loc[719, "stimulus"] == c_word[beh["imgC_2"]["CONDITION"][47]]
    assert t.loc[719, "RT"] == str(beh["imgC_2"]["RT"][47])  # raw columns stay available, as written


def test_set_b_stimuli_and_content_verified_ids(fx):
    release = read(fx)
    t = release.table[release.table["stim_set"] == "B"]
    by_cue = t.drop_duplicates("cue").set_index("cue")
    assert by_cue.loc["W", "stimulus"] == "shared0385_nsd28752.png"
    assert by_cue.loc["W", "nsd_id"] == 28751  # the fixture's names are 1-based, as the content shows
    assert by_cue.loc["T", "stimulus"] == "shared0000_nsd00000.png" and pd.isna(by_cue.loc["T", "nsd_id"])
    assert (fx.root / by_cue.loc["K", "stimulus_file"]).is_file()
    assert release.metadata["nsd_id_convention"] == "1-based"
    assert release.metadata["set_b_not_in_nsd"] == ["shared0000_nsd00000.png"]
    assert C.STIMULI_HDF5 in release.sources and C.IMAGERY_DESIGN in release.sources


def test_set_c_words_from_the_pair_list_else_the_letter(fx):
    assert set(read(fx).metadata["text_source"].values()) == {"pair_list"}
    fx.pair_lists["C"][1, 1] = "42"  # no word for cue Z
    write_pair_list(fx, "C")
    release = read(fx)
    t = release.table
    assert set(t.loc[t["cue"] == "Z", "stimulus"]) == {"Z"}
    assert release.metadata["text_source"]["Z"] == "cue_letter" and release.metadata["notes"]


@pytest.mark.parametrize("fmt, variant", [("hdf5", "fithrf"), ("nifti", "fithrf_GLMdenoise_RR")])
def test_both_beta_formats_and_glm_variants(tmp_path, fmt, variant):
    fx = build_release(tmp_path, beta_formats=(fmt,), variant=variant)
    release = read(fx, variant=variant, beta_format=fmt)
    assert release.metadata["beta_format"] == fmt and release.metadata["grid"] == [3, 2, 2]
    assert f"nsdimagerybetas_{variant}/" in release.metadata["beta_file"]
    pd.testing.assert_frame_equal(normalised(release.table), normalised(fx.truth))


def test_design_matrix_saved_as_matlab_v73_reads_the_same(fx):
    expected = read(fx).table
    write_design(fx, v73=True)
    assert fx.path("design").read_bytes()[:10] == b"MATLAB 7.3"
    pd.testing.assert_frame_equal(read(fx).table, expected)


def test_sparse_design_cells_read_the_same(fx):
    expected = read(fx).table
    cell = np.empty((1, 12), dtype=object)
    for k, matrix in enumerate(fx.design):
        cell[0, k] = scipy.sparse.csc_array(matrix)
    scipy.io.savemat(fx.path("design"), {"stimulus": cell})
    assert scipy.sparse.issparse(scipy.io.loadmat(fx.path("design"))["stimulus"][0, 0])
    pd.testing.assert_frame_equal(read(fx).table, expected)


def test_within_run_order_by_condition(tmp_path):
    fx = build_release(tmp_path, order="by_condition")
    t = read(fx, within_run_order="by_condition").table
    pd.testing.assert_frame_equal(normalised(t), normalised(fx.truth))
    assert not normalised(read(fx).table).equals(normalised(fx.truth))


@pytest.mark.parametrize("order", V.WITHIN_RUN_ORDERS)
def test_order_check_settles_the_within_run_order_by_content(tmp_path, order):
    fx = build_release(tmp_path, grid=(5, 4, 3), order=order, signal=1.0, seed=3)
    table = read(fx).table
    X = np.asarray(nib.load(fx.path("betas", ext="nii.gz")).dataobj).reshape(-1, C.IMAGERY_BETAS).T / 300.0
    result = V.within_run_order_check(X, table)
    assert result.favoured == order and result.conclusive
    other = next(o for o in V.WITHIN_RUN_ORDERS if o != order)
    with pytest.raises(MismatchError, match=f"favour within-run order '{order}'"):
        V.check_within_run_order(X, table, expected=other, beta_file="betas_nsdimagery.nii.gz")
    assert V.check_within_run_order(X, table, expected=order).favoured == order


def test_order_check_without_signal_is_inconclusive(fx):
    table = read(fx).table
    X = fx.betas.reshape(-1, C.IMAGERY_BETAS).T / 300.0
    result = V.within_run_order_check(X, table)
    assert not result.conclusive
    V.check_within_run_order(X, table, expected="by_condition")  # no evidence either way: no error


def test_format_mapping_is_a_plain_text_table(fx):
    release = read(fx)
    text = R.format_mapping(release.table, max_rows=50)
    lines = text.splitlines()
    assert lines[0].split()[:4] == ["beta_volume", "run", "run_name", "trial"]
    assert lines[49].split()[:6] == ["48", "2", "attA", "1", "attention", "cue"]
    assert lines[50].split()[5] == "detection" and lines[-1] == "... 670 more rows"
    assert len(R.format_mapping(release.table).splitlines()) == C.IMAGERY_BETAS + 1


def test_index_frame_has_what_the_index_needs(fx):
    frame = R.index_frame(read(fx))
    assert tuple(frame.columns) == R.INDEX_COLUMNS
    assert frame["beta_index"].tolist() == list(range(1, C.IMAGERY_BETAS + 1))
    ids = frame.drop_duplicates("cue").set_index("cue")
    assert ids.loc["W", "stimulus_id"] == "nsd-28751" and ids.loc["T", "stimulus_id"] == "img-B-shared0000_nsd00000"
    assert ids.loc["N", "text"] == "banana" and ids.loc["N", "image"] == "" and ids.loc["H", "text"] == ""
    assert (fx.root / ids.loc["H", "image"]).is_file()
    assert set(frame.loc[frame["task"] == "vision", "condition"]) == {"perception"}
    attention = frame[frame["task"] == "attention"]
    assert attention["epoch"].tolist()[:2] == ["cue", "detection"] and frame["epoch"].notna().sum() == 288
    assert attention["rt"].iloc[0] == attention["rt"].iloc[1] == fx.behaviour["attA"]["RT"].iloc[0]


def test_hand_written_tables_give_the_same_index_frame(fx):
    # the release's cue T shows no NSD image (shared0000_nsd00000.png): here T gets one, so that every
    # set B row of both sources carries an nsd_id to compare.
    fx.brick[9999] = fx.brick[10000] = fx.brick[10001] = fx.brick[28751][::-1].copy()
    fx.brick[10000], fx.brick[10001] = 255 - fx.brick[9999], fx.brick[9999].transpose(1, 0, 2).copy()
    write_brick(fx)
    fx.pair_lists["B"][5, 1] = "shared0100_nsd10000.png"
    write_pair_list(fx, "B")
    write_png(fx.path("target", stim_set="B", name="shared0100_nsd10000.png"), fx.brick[9999])
    expected = R.index_frame(read(fx))
    assert expected["nsd_id"].notna().sum() == 240  # every set B volume (visB, attB x 2, imgB_1, imgB_2)
    images = {}
    for row in expected.drop_duplicates("stim_name").itertuples():
        if row.image:
            images[row.stim_name] = f"images/{row.stim_name}.png"
            target = fx.root / C.IMAGERY_STIMULI_DIR / images[row.stim_name]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes((fx.root / row.image).read_bytes())
    trials_path = fx.root / C.IMAGERY_TRIALS.format(subject="subj01")
    expected[["beta_index", "run", "trial", "task", "stim_set", "stim_name", "cue"]].to_csv(
        trials_path, sep="\t", index=False)
    stim = expected.drop_duplicates("stim_name")
    pd.DataFrame({"stim_set": stim["stim_set"], "stim_name": stim["stim_name"], "cue": stim["cue"],
                  "image": [images.get(n, "") for n in stim["stim_name"]], "text": stim["text"],
                  "nsd_id": stim["nsd_id"].astype(object).where(stim["nsd_id"].notna(), "")}).to_csv(
        fx.root / C.IMAGERY_STIMULI_TABLE, sep="\t", index=False)
    got = R.index_frame_from_tables(fx.root, C.IMAGERY_TRIALS.format(subject="subj01"))
    assert tuple(got.columns) == R.INDEX_COLUMNS
    release_only = ["image", "epoch", "button", "rt", "is_correct"]  # the hand tables have no epochs or behaviour
    assert got[release_only[1:]].isna().all().all()
    pd.testing.assert_frame_equal(got.drop(columns=release_only), expected.drop(columns=release_only),
                                  check_dtype=False)
    assert got["image"].str.startswith(C.IMAGERY_STIMULI_DIR).sum() == (expected["image"] != "").sum()


# --- one test per invariant / bad input ----------------------------------------------------------


def test_missing_run_file(fx):
    fx.path("bdata", run="attB").unlink()
    fail(fx, MissingInputError, "nsdimagery_subj01_attB.tsv", "run attB")


def test_run_with_47_rows(fx):
    fx.behaviour["imgB_2"] = fx.behaviour["imgB_2"].iloc[:47]
    write_behaviour(fx, "imgB_2")
    fail(fx, InputError, "nsdimagery_subj01_imgB_2.tsv", "47 trial rows", "expected 48")


def test_unknown_cue_letter(fx):
    fx.behaviour["visB"].loc[4, "CONDITION"] = "Q"
    write_behaviour(fx, "visB")
    fail(fx, InputError, "nsdimagery_subj01_visB.tsv", "'Q'", "row 5", "W K B C D T")


def test_cue_letter_of_another_set(fx):
    fx.behaviour["imgC_1"].loc[0, "CONDITION"] = "H"
    write_behaviour(fx, "imgC_1")
    fail(fx, InputError, "nsdimagery_subj01_imgC_1.tsv", "'H'", "set C")


def test_condition_not_eight_times(fx):
    beh = fx.behaviour["visA"]
    other = next(c for c in C.IMAGERY_CUES["A"] if c != beh.loc[0, "CONDITION"])
    beh.loc[0, "CONDITION"] = other
    write_behaviour(fx, "visA")
    fail(fx, InputError, "nsdimagery_subj01_visA.tsv", "occurs", "expected 8")


@pytest.mark.parametrize("keep", [0.5, 0.002])
def test_truncated_nifti_beta_file(fx, keep):
    path = fx.path("betas", ext="nii.gz")
    truncate(path, keep)
    fail(fx, CorruptFileError, "betas_nsdimagery.nii.gz")


def test_truncated_hdf5_beta_file(tmp_path):
    fx = build_release(tmp_path, beta_formats=("hdf5",))
    truncate(fx.path("betas", ext="hdf5"), 0.6)
    fail(fx, CorruptFileError, "betas_nsdimagery.hdf5")


def test_beta_file_with_719_volumes(fx):
    nib.save(nib.Nifti1Image(fx.betas[..., :719], np.eye(4)), fx.path("betas", ext="nii.gz"))
    fail(fx, InputError, "betas_nsdimagery.nii.gz", "719 volumes", "expected 720")


def test_design_cell_onset_count_wrong(fx):
    cell = fx.design[4]  # attB: 96 onsets expected
    cell[tuple(np.argwhere(cell)[10])] = 0
    write_design(fx)
    fail(fx, InputError, "designmatrixGLMsingle.mat", "cell 5 (attB)", "95 onsets", "expected 96")


def test_design_with_eleven_cells(fx):
    fx.design = fx.design[:11]
    write_design(fx)
    fail(fx, InputError, "designmatrixGLMsingle.mat", "1x11", "1x12")


def test_two_onsets_in_one_tr(fx):
    cell = fx.design[0]
    (tr, col), (next_tr, next_col) = np.argwhere(cell)[:2]
    cell[tr, col], cell[next_tr, (next_col + 1) % 6] = 0, 1  # move the first onset onto the next trial's TR
    write_design(fx)
    fail(fx, InputError, "designmatrixGLMsingle.mat", "cell 1 (visA)", "2 onsets at TR")


def test_column_mapping_to_two_conditions_within_a_run(fx):
    beh = fx.behaviour["visB"]
    i = 0
    j = int(np.flatnonzero(beh["CONDITION"] != beh.loc[i, "CONDITION"])[0])
    beh.loc[[i, j], "CONDITION"] = beh.loc[[j, i], "CONDITION"].to_numpy()  # counts stay 8 each
    write_behaviour(fx, "visB")
    fail(fx, MismatchError, "designmatrixGLMsingle.mat", "set B, vision", "nsdimagery_subj01_visB.tsv",
         "expected one CONDITION per column")


def test_column_mapping_to_two_conditions_across_runs(fx):
    beh = fx.behaviour["imgA_2"]  # swap H and R throughout: consistent within imgA_2, not with imgA_1
    beh["CONDITION"] = beh["CONDITION"].map(lambda c: {"H": "R", "R": "H"}.get(c, c))
    write_behaviour(fx, "imgA_2")
    message = fail(fx, MismatchError, "designmatrixGLMsingle.mat", "set A, imagery", "'H'", "'R'")
    assert "imgA_1.tsv" in message and "imgA_2.tsv" in message


def test_attention_epochs_sharing_a_column(fx):
    cell = fx.design[1]  # attA: move the first detection onset into the cue epoch's column
    (cue_tr, cue_col), (det_tr, det_col) = np.argwhere(cell)[:2]
    cell[det_tr, det_col], cell[det_tr, cue_col] = 0, 1
    write_design(fx)
    fail(fx, InputError, "designmatrixGLMsingle.mat", "cell 2 (attA)", f"column {cue_col} for both epochs")


def test_set_b_image_matching_a_neighbouring_id(fx):
    write_png(fx.path("target", stim_set="B", name="shared0385_nsd28752.png"), fx.brick[28753])
    fail(fx, MismatchError, "shared0385_nsd28752.png", "imgBrick[28753]", "neighbouring id", "28752", "28751")


def test_set_b_images_with_mixed_conventions(fx):
    write_png(fx.path("target", stim_set="B", name="shared0413_nsd30857.png"), fx.brick[30857])  # 0-based
    fail(fx, MismatchError, "shared0413_nsd30857.png", "0-based", "1-based", "one convention")


def test_set_b_image_matching_nothing(fx):
    fx.brick[28751] = 255 - fx.brick[28751]
    write_brick(fx)
    fail(fx, MismatchError, "shared0385_nsd28752.png", "matches no", "near id 28752")


def test_missing_stimuli_hdf5(fx):
    fx.path("stimuli").unlink()
    fail(fx, MissingInputError, "nsd_stimuli.hdf5")


def test_missing_target_image(fx):
    fx.path("target", stim_set="A", name=TARGETS["A"][2]).unlink()
    fail(fx, MissingInputError, TARGETS["A"][2], "cue V")


def test_pair_list_with_five_pairs(fx):
    fx.pair_lists["B"] = fx.pair_lists["B"][:5]
    write_pair_list(fx, "B")
    fail(fx, InputError, "B_pair_list.mat", "5x3", "6x3")


def test_corrupt_design_file(fx):
    fx.path("design").write_bytes(b"not a MATLAB file at all" * 10)
    fail(fx, CorruptFileError, "designmatrixGLMsingle.mat")


def test_behaviour_without_condition_column(fx):
    fx.behaviour["attC"] = fx.behaviour["attC"].drop(columns="CONDITION")
    write_behaviour(fx, "attC")
    fail(fx, InputError, "nsdimagery_subj01_attC.tsv", "'CONDITION'")


def test_behaviour_with_bad_trial_numbers(fx):
    fx.behaviour["visC"].loc[3, "TRIAL"] = 1
    write_behaviour(fx, "visC")
    fail(fx, InputError, "nsdimagery_subj01_visC.tsv", "TRIAL", "'1'", "distinct")


def test_behaviour_rows_are_taken_in_trial_order(fx):
    expected = read(fx).table
    beh = fx.behaviour["imgB_1"]
    fx.behaviour["imgB_1"] = beh.iloc[::-1]  # same trials, file rows reversed: TRIAL restores the order
    write_behaviour(fx, "imgB_1")
    pd.testing.assert_frame_equal(read(fx).table, expected)


@pytest.mark.parametrize("kw, fragment", [
    ({"variant": "fithrf_GLMdenoise"}, "'fithrf_GLMdenoise_RR', 'fithrf'"),
    ({"beta_format": "mgh"}, "'auto', 'nifti', 'hdf5'"),
    ({"within_run_order": "random"}, "'chronological', 'by_condition'"),
])
def test_bad_options(fx, kw, fragment):
    fail(fx, InputError, fragment, **kw)


def test_any_nsd_subject(tmp_path):
    fx = build_release(tmp_path, subject="subj06")
    assert read(fx).metadata["subject"] == "subj06"
    with pytest.raises(InputError, match="subj09"):
        R.read_release(fx.root, "subj09", progress=False)


def test_set_b_match_near_copy_and_duplicates(tmp_path):
    """A near copy wins over a similar neighbour (synthetic images look alike); two exact copies are ambiguous."""
    rng = np.random.default_rng(1)
    base = rng.integers(0, 256, (16, 16, 3)).astype(float)
    similar = np.clip(base + rng.normal(0, 30, base.shape), 0, 255)  # r ~ 0.95 with base
    brick = np.stack([rng.integers(0, 256, (16, 16, 3)), base, similar, rng.integers(0, 256, (16, 16, 3))])
    with h5py.File(tmp_path / "b.hdf5", "w") as fh:
        fh["imgBrick"] = brick.astype(np.uint8)
    png = tmp_path / "shared0001_nsd00002.png"
    Image.fromarray(base.astype(np.uint8)).save(png)
    with h5py.File(tmp_path / "b.hdf5", "r") as fh:
        corr, best = V._match(png.name, png, fh["imgBrick"])
        assert best == 1 and corr[1] > 0.99 and corr[1] - corr[2] < V.MATCH_MARGIN
    with h5py.File(tmp_path / "b.hdf5", "a") as fh:
        fh["imgBrick"][2] = base.astype(np.uint8)
    with h5py.File(tmp_path / "b.hdf5", "r") as fh:
        assert V._match(png.name, png, fh["imgBrick"])[1] is None
