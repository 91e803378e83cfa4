"""JULE end to end: periods of triplet training and merges down to the target, and exact resume."""

import json
import os

import numpy as np
import pytest

from jclust import config_lib, methods, train
from jclust.config_lib import ConfigError
from jclust.methods import jule
from tests.conftest import ROOT, assert_resume_matches, final_params

CONFIG = os.path.join(ROOT, "configs", "jule.py:digits")
TINY = {
    "data.limit": 256, "batch_size": 32, "eval_batch_size": 128,
    "model.widths": (8, 16), "model.dense": 32, "jule.embed_dim": 16, "jule.neighbours": 5,
    "jule.eta": 0.6, "jule.epochs_per_period": 1, "optim.max_epochs": 6,
    "log_every_steps": 8, "checkpoint_every_steps": 4, "keep_checkpoints": 50,
    "pictures.every_evals": 0, "tensorboard": False,
}


def tiny_config(**overrides):
    return config_lib.apply_overrides(config_lib.load_config(CONFIG), {**TINY, **overrides})


def test_agglomerate_reaches_exactly_the_target_or_does_one_pass():
    x = np.random.default_rng(0).normal(size=(300, 6)).astype(np.float32)
    kwargs = dict(neighbours=6, eta=0.5, cluster_neighbours=5, local_weight=1.0, cache_size=8)
    initial, info = jule.agglomerate(x, None, 300, **kwargs)
    c = int(initial.max()) + 1
    assert info["merges"] == 0 and c == info["clusters_before"] > 20
    one_pass, info = jule.agglomerate(x, initial, 7, max_merges=300, **kwargs)
    assert info["merges"] == int(np.ceil(0.5 * c))
    assert int(one_pass.max()) + 1 == c - info["merges"]
    # A pass only merges: every new cluster is a union of old ones.
    for old in range(c):
        assert len(np.unique(one_pass[initial == old])) == 1
    final, _ = jule.agglomerate(x, None, 7, **kwargs)
    assert sorted(np.unique(final).tolist()) == list(range(7))


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("jule_ref"))
    final = train.train_and_evaluate(tiny_config(), workdir)
    return workdir, final


def test_periods_merge_down_to_the_target_and_stop(reference_run):
    workdir, final = reference_run
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f]
    counts = [r["clusters"] for r in records if "clusters" in r]
    assert counts[0] > 10 and counts[-1] == 10
    assert all(a > b for a, b in zip(counts, counts[1:]))  # every period merges
    assert [r["period"] for r in records if "period" in r] == list(range(len(counts)))
    _, state = final_params(workdir)
    assert int(state.cluster.num_clusters) == 10
    assert int(state.step) < 6 * 8  # stopped once the target was reached
    assert 0.0 <= final["acc"] <= 1.0 and final["clusters_used"] <= 10


def test_resume_restores_memberships_and_period(reference_run, tmp_path):
    ref_dir, _ = reference_run
    # Step 12: inside period 2 (steps 8..15), after the first merges.
    assert_resume_matches(ref_dir, str(tmp_path / "resumed"), 12, tiny_config())


def test_bad_configs_are_config_errors():
    spec = methods.DataSpec(64, (8, 8, 1), True)
    with pytest.raises(ConfigError, match="eta"):
        methods.make(tiny_config(**{"jule.eta": 0.0}), spec)
    with pytest.raises(ConfigError, match="merge_cache"):
        methods.make(tiny_config(**{"jule.merge_cache": 2}), spec)
    with pytest.raises(ConfigError, match="num_clusters"):
        methods.make(tiny_config(num_clusters=100), spec)
