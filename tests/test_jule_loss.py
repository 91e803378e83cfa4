"""JULE's weighted triplet loss by its formula."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np

from jclust.methods.jule_loss import triplet_loss


def test_all_negatives_used_when_there_are_few():
    # 4 samples: cluster 0 = {0, 1}, cluster 1 = {2}, cluster 2 = {3}; num_negatives >= 2 takes
    # every negative, so the loss is deterministic: pairs (0, 1) and (1, 0), negatives {2, 3}.
    x = np.array([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0], [-1.0, 0.0]], np.float32)
    labels = np.array([0, 0, 1, 2])
    gamma, margin = 2.0, 0.5
    d = ((x[:, None] - x[None]) ** 2).sum(-1)
    terms = [max(0.0, gamma * d[a, p] - d[a, n] + margin)
             for a, p in [(0, 1), (1, 0)] for n in (2, 3)]
    loss, count = triplet_loss(jnp.asarray(x), jnp.asarray(labels), jax.random.PRNGKey(0),
                               num_negatives=5, gamma=gamma, margin=margin)
    assert int(count) == 4
    np.testing.assert_allclose(loss, np.mean(terms), rtol=1e-5)


def test_sampled_negatives_are_distinct_other_cluster_samples():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(12, 3)).astype(np.float32)
    labels = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2, 3, 3, 3])
    loss, count = triplet_loss(jnp.asarray(x), jnp.asarray(labels), jax.random.PRNGKey(1),
                               num_negatives=2, margin=10.0)  # a big margin: every hinge active
    pairs = [(a, p) for a, p in itertools.permutations(range(12), 2) if labels[a] == labels[p]]
    assert int(count) == 2 * len(pairs)
    # With every hinge active the loss is linear: mean(gamma d_ap + margin) - mean(d_an), and
    # mean(d_an) lies within the range of each anchor's distances to other clusters.
    d = ((x[:, None] - x[None]) ** 2).sum(-1)
    mean_ap = np.mean([d[a, p] for a, p in pairs])
    neg_lo = np.mean([d[a, labels != labels[a]].min() for a, p in pairs])
    neg_hi = np.mean([d[a, labels != labels[a]].max() for a, p in pairs])
    assert mean_ap + 10.0 - neg_hi - 1e-4 <= float(loss) <= mean_ap + 10.0 - neg_lo + 1e-4


def test_no_pair_gives_zero_loss_and_gradients_flow():
    x = jnp.eye(3)
    loss, count = triplet_loss(x, jnp.array([0, 1, 2]), jax.random.PRNGKey(0))
    assert int(count) == 0 and float(loss) == 0.0
    grad = jax.grad(lambda e: triplet_loss(e, jnp.array([0, 0, 1]), jax.random.PRNGKey(0),
                                           margin=1.0)[0])(jnp.eye(3))
    assert np.any(np.asarray(grad) != 0)
