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
