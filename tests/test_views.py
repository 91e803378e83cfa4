"""The mirrored match (jclust.cluster.views): similarities over views, their k-NN lists, and
CliqueCNN's cliques, growth, triplet check and compactness over views, against NumPy references."""

import jax
import numpy as np
import pytest
from scipy import stats

from jclust import cluster as jcluster
from jclust.cluster.clique_batches import sample_clique_batches, triplet_check
from jclust.cluster.clique_growth import grow_cliques
from jclust.cluster.cliques import build_cliques, clique_compactness, grow_clique, make_cliques
from jclust.cluster.views import view_knn, view_similarity, view_similarity_np
from tests.test_cliques import dyadic_unit_vectors, reference_clique, unit


def reference_similarity(a, b):
    """max over the views' pairs of the dot products, float64: [A, V, D] x [B, V, D] -> [A, B]."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.einsum("iad,jbd->iajb", a, b).max(axis=(1, 3))


def dyadic_views(rng, n, dim=16):
    """[n, 2, dim] unit views whose dot products are exact in float32 (entries 0, 1/4, 1/2, 3/4,
    1), so ties fall the same way in float32 and float64."""
    return np.stack([dyadic_unit_vectors(rng, n, dim), dyadic_unit_vectors(rng, n, dim)], axis=1)


def test_view_similarity_is_the_largest_over_pairs_of_views():
    rng = np.random.default_rng(0)
    a, b = unit(rng.normal(size=(7, 2, 5))), unit(rng.normal(size=(9, 2, 5)))
    want = reference_similarity(a, b)
    # float32 products of unit vectors in 5 dimensions: rounding below 1e-6 (float64 control).
    np.testing.assert_allclose(np.asarray(view_similarity(a, b)), want, atol=1e-6)
    np.testing.assert_allclose(view_similarity_np(a, b), want, atol=1e-6)
    # One view is the plain dot product, computed as before (bit-equal).
    np.testing.assert_array_equal(np.asarray(view_similarity(a[:, :1], b[:, :1])),
                                  np.asarray(a[:, 0] @ b[:, 0].T))
    # Symmetric.
    np.testing.assert_array_equal(np.asarray(view_similarity(b, a)),
                                  np.asarray(view_similarity(a, b)).T)


def test_view_knn_is_the_brute_force_ranking():
    rng = np.random.default_rng(1)
    x = dyadic_views(rng, 60)
    s = reference_similarity(x, x)
    np.fill_diagonal(s, -np.inf)
    indices, sims = view_knn(x, 7, chunk_size=16)  # chunks that do not divide N
    # Exact products: the ranking by (similarity desc, index asc), as lax.top_k breaks ties.
    want = np.stack([np.lexsort((np.arange(60), -row))[:7] for row in s])
    np.testing.assert_array_equal(np.asarray(indices), want)
    np.testing.assert_array_equal(np.asarray(sims), np.take_along_axis(s, want, 1))
    with pytest.raises(ValueError, match="1 <= k < N"):
        view_knn(x, 60)


def mirror_pair():
    """A and B are each other's mirror image (similar only through the mirror); D is close to
    both (0.6 through a mirror for B); C is D's other neighbour (0.8)."""
    e = np.eye(3, dtype=np.float32)
    d = np.array([0.6, 0.0, 0.8], np.float32)
    return np.stack([np.stack([e[0], e[1]]),                  # A
                     np.stack([e[1], e[0]]),                  # B = mirror(A)
                     np.stack([e[2], e[2]]),                  # C
                     np.stack([d, d[[1, 0, 2]]])])            # D


def test_only_the_mirror_makes_a_and_b_a_clique():
    views = mirror_pair()
    neighbours = np.array([[1, 2, 3], [0, 2, 3], [0, 1, 3], [0, 1, 2]])
    # Growth from A (no purification: it would swap A for C in {A, D}, 0.8 > 0.6).
    members, _ = grow_clique(0, views, neighbours, clique_size=2, purify_passes=0)
    np.testing.assert_array_equal(np.asarray(members), [0, 1])  # s(A, B) = 1 through the mirror
    members, _ = grow_clique(0, views[:, 0], neighbours, clique_size=2, purify_passes=0)
    np.testing.assert_array_equal(np.asarray(members), [0, 3])  # without it: s(A, B) = 0 < 0.6
    members, _ = grow_clique(0, views, neighbours, clique_size=2)
    np.testing.assert_array_equal(np.asarray(members), [0, 1])  # compact: purification keeps it
    np.testing.assert_allclose(np.asarray(clique_compactness([[0, 1], [2, 3]], views)), [1.0, 0.8])
    np.testing.assert_allclose(np.asarray(clique_compactness([[0, 1]], views[:, 0])), [0.0])
    # The triplet check: {A, B} (compact through the mirror) and {C, D}; their closest pair is
    # 0.6 (A-D directly, B-D through a mirror), below either clique's compactness.
    cliques = make_cliques(np.array([[0, 1], [2, 3]]), views)
    np.testing.assert_array_equal(triplet_check(cliques, views, [0], [1]), [True])
    plain = make_cliques(np.array([[0, 1], [2, 3]]), views[:, 0])
    np.testing.assert_array_equal(triplet_check(plain, views[:, 0], [0], [1]), [False])


def test_growth_and_purification_over_views_match_the_numpy_reference():
    rng = np.random.default_rng(2)
    x = dyadic_views(rng, 120)
    s = reference_similarity(x, x)
    neighbours = np.asarray(view_knn(x, 10)[0])
    available = rng.random(120) < 0.8
    for seed in rng.choice(120, 20, replace=False):
        for passes in (0, 6):
            members, size = grow_clique(seed, x, neighbours, clique_size=6, available=available,
                                        purify_passes=passes)
            expected = reference_clique(int(seed), x, neighbours, 6, available, passes, s=s)
            assert int(size) == len(expected)
            np.testing.assert_array_equal(np.asarray(members[:len(expected)]), expected)


def test_two_equal_views_are_one_view():
    """With the mirror's features equal to the image's, every step gives the plain result."""
    rng = np.random.default_rng(3)
    x = dyadic_unit_vectors(rng, 200)
    both = np.stack([x, x], axis=1)
    neighbours = np.asarray(jcluster.knn(x, 12).indices)
    np.testing.assert_array_equal(np.asarray(view_knn(both, 12)[0][:, :4]), neighbours[:, :4])
    key = jax.random.key(4)
    plain = build_cliques(key, x, neighbours, num_initial_batches=6, cliques_per_batch=3,
                          clique_size=5, max_size=9)
    mirrored = build_cliques(key, both, neighbours, num_initial_batches=6, cliques_per_batch=3,
                             clique_size=5, max_size=9)
    np.testing.assert_array_equal(np.asarray(mirrored.members), np.asarray(plain.members))
    np.testing.assert_array_equal(np.asarray(mirrored.compactness), np.asarray(plain.compactness))
    # Cliques of 4: every mean similarity to a clique is exact (dyadic / 4) by either path.
    fours = make_cliques(rng.permutation(200)[:40].reshape(10, 4), x)
    grown = [grow_cliques(jax.random.key(5), fours, f, neighbours, max_size=9, null_samples=50,
                          p_value=0.05) for f in (x, both)]
    assert np.sum(np.asarray(grown[0].sizes)) > 40
    np.testing.assert_array_equal(np.asarray(grown[1].members), np.asarray(grown[0].members))
    batches = [sample_clique_batches(np.random.default_rng(6), plain, f, num_batches=5,
                                     cliques_per_batch=3, samples_per_clique=4, mode="heuristic")
               for f in (x, both)]
    np.testing.assert_array_equal(batches[1].indices, batches[0].indices)
    np.testing.assert_array_equal(batches[1].passed, batches[0].passed)


def test_student_t_growth_over_views_against_scipy():
    """Candidates join when their mean similarity over views to the members is significant
    against the null draws' (a location-scale Student-t, scipy), most similar first."""
    rng = np.random.default_rng(7)
    dim, n = 16, 400
    centre = np.eye(dim)[0]
    views = unit(rng.normal(size=(n, 2, dim)))
    views[:8, 0] = unit(centre + 0.2 * rng.normal(size=(8, dim)))        # the clique
    views[8:14, 1] = unit(centre + 0.2 * rng.normal(size=(6, dim)))      # close through a mirror
    neighbours = np.asarray(view_knn(views, n - 1)[0])                   # every sample a candidate
    key = jax.random.key(8)
    cliques = make_cliques(np.arange(8)[None], views)
    grown = grow_cliques(key, cliques, views, neighbours, max_size=20, null_samples=300,
                         p_value=1e-3)
    null = np.asarray(jax.random.randint(jax.random.split(key, 1)[0], (300,), 0, n))
    null = null[null >= 8]
    v = reference_similarity(views, views[:8]).mean(axis=1)
    loc, scale = v[null].mean(), v[null].std(ddof=1) * np.sqrt(1 + 1 / len(null))
    p = stats.t.sf((v - loc) / scale, len(null) - 1)
    joined = np.flatnonzero(p < 1e-3)
    joined = joined[joined >= 8]
    want = joined[np.argsort(-v[joined], kind="stable")][:12]
    members = np.asarray(grown.members[0])
    np.testing.assert_array_equal(members[:8], np.arange(8))
    np.testing.assert_array_equal(members[8:8 + len(want)], want)
    assert set(range(8, 14)) <= set(want.tolist())  # the mirrored close points joined
