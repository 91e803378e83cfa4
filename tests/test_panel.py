"""benchmarks/panel.py: its members and its table (the runs are quality.py's, tested there)."""

import json
import os

import numpy as np
import pytest
import skimage.transform

from benchmarks import panel


def test_stratified_subset_takes_the_same_count_of_every_class_and_is_fixed():
    labels = np.repeat(np.arange(4), [50, 60, 70, 80])
    index = panel.stratified_subset(labels, 20, seed=3)
    assert np.all(np.diff(index) > 0)
    np.testing.assert_array_equal(np.bincount(labels[index]), [20, 20, 20, 20])
    np.testing.assert_array_equal(index, panel.stratified_subset(labels, 20, seed=3))
    assert not np.array_equal(index, panel.stratified_subset(labels, 20, seed=4))
    with pytest.raises(ValueError, match="class 0 has 50"):
        panel.stratified_subset(labels, 51, seed=3)


def test_enlarge_is_the_bilinear_resize_scikit_image_computes():
    """Both sample the 8 x 8 grid at the 28 x 28 grid's pixel centres, clamped at the edges;
    float32 against float64 interpolation then rounds to the same uint8 except at .5 ties."""
    images = np.random.default_rng(0).integers(0, 256, size=(3, 8, 8, 1), dtype=np.uint8)
    got = panel.enlarge(images)
    assert got.shape == (3, 28, 28, 1) and got.dtype == np.uint8
    ref = np.stack([skimage.transform.resize(image.astype(np.float64), (28, 28, 1), order=1,
                                             mode="edge", anti_aliasing=False,
                                             preserve_range=True) for image in images])
    assert np.abs(got.astype(np.float64) - ref).max() <= 0.5 + 1e-3


def test_oc7_is_every_subject_of_the_clip_art_at_28x28_in_colour(tmp_path, monkeypatch):
    """The member from a stand-in for /usr/share/openclipart/png: one label per subject folder
    (sorted), colour kept, other folders ignored; every run is told its 7 clusters."""
    from benchmarks import openclipart_subset
    from PIL import Image

    colours = {}
    for i, subject in enumerate(openclipart_subset.SUBJECTS + ("signs_and_symbols",)):
        os.makedirs(tmp_path / subject)
        for j in range(2):
            colours[subject, j] = (30 * i, 200 - 90 * j, 255 - 30 * i)
            Image.new("RGB", (40 + 7 * j, 33), colours[subject, j]).save(tmp_path / subject / f"{j}.png")
    monkeypatch.setattr(openclipart_subset, "ROOT", str(tmp_path))
    images, labels = panel.member_arrays("oc7")
    assert images.shape == (14, 28, 28, 3) and images.dtype == np.uint8
    np.testing.assert_array_equal(labels, np.repeat(np.arange(7), 2))
    for n, (subject, j) in enumerate((s, j) for s in openclipart_subset.SUBJECTS for j in range(2)):
        np.testing.assert_array_equal(images[n], np.broadcast_to(colours[subject, j], (28, 28, 3)))


def test_every_run_on_a_member_gets_its_data_and_the_member_s_overrides(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(panel, "member_source", lambda name, data_dir: f"npz:{name}.npz")
    monkeypatch.setattr(panel.quality, "main", lambda args: calls.append(args) or 0)
    panel.main(["--methods=dec,swav", "--members=oc7,fm3k", "--seeds=0",
                f"--workdir={tmp_path}", "--override", "seed={seed}"])
    overrides = [[a for i, a in enumerate(args) if i and args[i - 1] == "--override"]
                 for args in calls]
    oc7 = ["data.source=npz:oc7.npz", "num_clusters=7", "data.image_shape=(28,28,3)", "seed={seed}"]
    assert overrides == [oc7, oc7, ["data.source=npz:fm3k.npz", "seed={seed}"],
                         ["data.source=npz:fm3k.npz", "seed={seed}"]]


def test_table_shows_finished_pairs_and_the_mean_over_complete_members(tmp_path):
    def write(method, member, seed, acc, seconds=60.0):
        path = tmp_path / method / member / f"seed{seed}"
        os.makedirs(path)
        (path / "result.json").write_text(json.dumps({"seed": seed, "acc": acc,
                                                      "seconds": seconds}))
    write("dec", "fm3k", 0, 0.5)
    write("dec", "fm3k", 1, 0.7)
    write("dec", "digits28", 0, 0.8)
    write("dec", "digits28", 1, 0.6, seconds=180.0)
    write("swav", "fm3k", 0, 0.9)
    lines = panel.table(str(tmp_path), ["dec", "swav"], ["fm3k", "digits28"], [0, 1]).splitlines()
    assert lines[0] == "| method | fm3k | digits28 | panel mean ACC |"
    assert lines[2] == ("| dec | 0.600 ± 0.141 (1.0 min) | 0.700 ± 0.141 (2.0 min) | 0.650 |")
    assert lines[3] == "| swav | 0.900 ± 0.000 (1.0 min, 1 of 2 seeds) | – | – |"


def test_unknown_member_or_method_is_one_error_line(capsys):
    with pytest.raises(SystemExit, match="unknown members"):
        panel.main(["--members=fm5k", "--workdir=/nonexistent"])
    with pytest.raises(SystemExit, match="unknown methods"):
        panel.main(["--methods=kmeans", "--workdir=/nonexistent"])


def test_kept_results_carry_a_panel_across_machines(tmp_path):
    """--keep: finished seeds are copied with their provenance, restored into a fresh workdir
    (where quality.py re-uses them and the table reads them), and refused under other overrides."""
    keep, first, second = (str(tmp_path / d) for d in ("keep", "first", "second"))
    local = tmp_path / "first" / "swav" / "fm3k" / "seed1"
    os.makedirs(local)
    (local / "result.json").write_text(json.dumps({"seed": 1, "acc": 0.7, "seconds": 60.0}))
    provenance = {"machine": "cpu X", "commit": "abc1234", "overrides": ["min_epoch_examples=1"]}
    panel.keep_finished(keep, first, "swav", "fm3k", [0, 1], provenance)
    kept = tmp_path / "keep" / "swav" / "fm3k" / "seed1" / "result.json"
    assert json.loads(kept.read_text()) == {"seed": 1, "acc": 0.7, "seconds": 60.0, **provenance}
    assert not (tmp_path / "keep" / "swav" / "fm3k" / "seed0").exists()
    panel.restore_kept(keep, second, "swav", "fm3k", [0, 1], ["min_epoch_examples=1"])
    restored = tmp_path / "second" / "swav" / "fm3k" / "seed1" / "result.json"
    assert restored.read_text() == kept.read_text()
    assert "0.700 ± 0.000 (1.0 min, 1 of 2 seeds)" in panel.table(second, ["swav"], ["fm3k"], [0, 1])
    with pytest.raises(SystemExit, match="ran with overrides"):
        panel.restore_kept(keep, str(tmp_path / "third"), "swav", "fm3k", [1], [])
    assert len(panel.commit(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))) >= 7
