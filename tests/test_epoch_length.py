"""config.min_epoch_examples: an epoch of every schedule spans several passes over a small data
set, so that its durations in steps (and its reclusters) are those of a larger one."""

import json
import os

import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from jclust import config_lib, methods, train
from jclust.methods import jule
from jclust.methods.common import steps_per_epoch
from tests import test_deepcluster, test_jule
from tests.conftest import assert_resume_matches


@pytest.mark.parametrize("n, minimum, expected", [(1000, 0, 10), (1000, 5000, 50),
                                                   (1000, 500, 10), (1050, 0, 10)])
def test_an_epoch_is_one_pass_or_at_least_min_epoch_examples(n, minimum, expected):
    config = ml_collections.ConfigDict({"batch_size": 100, "min_epoch_examples": minimum})
    assert steps_per_epoch(config, methods.DataSpec(n, (8, 8, 1), True)) == expected


def test_jule_groups_every_pass_of_a_period_that_spans_several():
    """A period of 1 epoch over 512 examples of 256 is 2 passes: the order holds a grouped
    pass for each (every example once, same-label runs of 4), not one pass and then a shuffle
    of it (where ~1 in 10 neighbours would share a label)."""
    config = test_jule.tiny_config(**{"jule.batch_groups": 4, "min_epoch_examples": 512})
    method = methods.from_config(config, methods.DataSpec(256, (8, 8, 1), True))
    assert method.phases[0].num_steps == 6 * 16 and method.phases[0].recluster_every == 16
    labels = np.arange(256) % 10
    state = jule.JuleState(labels=jnp.asarray(labels, jnp.int32),
                           num_clusters=jnp.asarray(10, jnp.int32),
                           period=jnp.asarray(1, jnp.int32))
    order = np.asarray(method.sampler(state).order)
    assert order.shape == (2 * 256,)
    for one_pass in order.reshape(2, 256):
        np.testing.assert_array_equal(np.sort(one_pass), np.arange(256))
        assert np.mean(labels[one_pass[1:]] == labels[one_pass[:-1]]) > 0.6
    default = methods.from_config(test_jule.tiny_config(**{"jule.batch_groups": 4}),
                                  methods.DataSpec(256, (8, 8, 1), True))
    np.testing.assert_array_equal(np.asarray(default.sampler(state).order), order[:256])


@pytest.fixture(scope="module")
def two_pass_run(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("two_pass"))
    config = test_deepcluster.tiny_config(min_epoch_examples=512)
    return workdir, train.train_and_evaluate(config, workdir), config


def test_deepcluster_trains_and_reclusters_by_the_longer_epoch(two_pass_run):
    workdir, final, _ = two_pass_run
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        steps = [json.loads(line)["step"] for line in f]
    # 3 epochs of 512 examples in batches of 32 (256 examples: 2 passes an epoch), a recluster
    # (and its evaluation) every epoch.
    assert steps == [0, 16, 32, 48] and final["step"] == 48


def test_resume_in_an_epoch_s_second_pass_is_bit_equal(two_pass_run, tmp_path):
    workdir, _, config = two_pass_run
    assert_resume_matches(workdir, str(tmp_path / "resumed"), 24, config)


def test_a_negative_minimum_is_refused():
    config = test_deepcluster.tiny_config(min_epoch_examples=-1)
    with pytest.raises(config_lib.ConfigError, match="min_epoch_examples"):
        config_lib.validate(config, methods.REGISTRY)
