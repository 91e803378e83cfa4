"""benchmarks/readout.py: each read-out is k-means on its space, whitening included."""

import numpy as np

from benchmarks import readout


def test_readouts_cluster_each_space_and_whitening_recovers_a_low_variance_split():
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1], 100)
    # h: the classes differ along a low-variance direction (0.05 apart) under two directions of
    # large class-free variance; raw k-means splits along the large ones, whitening to 3 rescales
    # every direction to unit variance, so the class split becomes the widest gap.
    h = np.concatenate([rng.normal(size=(200, 2)) * 3.0,
                        (labels[:, None] * 0.05 + rng.normal(size=(200, 1)) * 0.004)], 1)
    features = np.eye(2)[labels] + rng.normal(size=(200, 2)) * 0.01  # a perfect feature pass
    rows = readouts(features, h, labels)
    assert rows["feature pass"]["acc"] == 1.0
    assert rows["backbone"]["acc"] < 0.75
    assert rows["backbone whitened to 3"]["acc"] == 1.0


def readouts(features, h, labels):
    return readout.readouts(features.astype(np.float32), h.astype(np.float32), labels, 2, [3],
                            seed=0)
