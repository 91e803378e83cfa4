"""CliqueCNN's cliques: growth and purification against a plain NumPy reference, complete against
single linkage, the dissimilar-seed rule, chunking, Student-t growth, the batch sampler and its
triplet check, and the diagnostics.

Most tests use "dyadic" unit vectors: entries in multiples of 1/4 whose squares sum to exactly 1,
so every dot product (a multiple of 1/16) and every partial sum is exact in float32 and float64,
whatever the summation order: integer results can then be compared exactly on any CPU, ties
included (ties are frequent, which tests the tie rules: lowest sample index)."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from jclust.cluster.clique_batches import sample_clique_batches, triplet_check
from jclust.cluster.clique_growth import grow_cliques, student_t_sf
from jclust.cluster.clique_stats import (clique_coverage, clique_purity, clique_sample_counts,
                                         clique_similarity)
from jclust.cluster.cliques import Cliques, build_cliques, grow_clique, make_cliques, purify_clique
from jclust.cluster.rank import dissimilar_seed, rank_select
from jclust.cluster.graph import knn

# Squared entries (in 1/16) of unit vectors: each pattern sums to 16.
_PATTERNS = [(16,), (4, 4, 4, 4), (9, 4, 1, 1, 1), (4, 4, 4, 1, 1, 1, 1), (9, 1, 1, 1, 1, 1, 1, 1),
             (4,) + (1,) * 12, (1,) * 16]


def dyadic_unit_vectors(rng, n, dim=16):
    x = np.zeros((n, dim), np.float32)
    for i in range(n):
        squares = _PATTERNS[rng.integers(len(_PATTERNS))]
        where = rng.choice(dim, len(squares), replace=False)
        x[i, where] = np.sqrt(squares) / 4 * rng.choice([-1, 1], len(squares))
    return x


def unit(x):
    x = np.asarray(x, np.float64)
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


# ---------------------------------------------------------------- a plain NumPy reference


def reference_clique(seed, x, neighbours, size, available, passes, s=None):
    """Greedy complete-linkage growth and purification, written out plainly (float64; ``s``: the
    N x N similarities, by default those of x)."""
    s = x.astype(np.float64) @ x.astype(np.float64).T if s is None else s
    members = [seed]

    def best(rest, pool_owners):
        pool = {int(c) for m in pool_owners for c in neighbours[m]}
        cands = [c for c in pool if c not in members and available[c]]
        if not cands:
            return None, None
        scored = [(min(s[c, j] for j in rest), -c) for c in cands]
        score, neg = max(scored)
        return -neg, score

    while len(members) < size:
        c, _ = best(members, members)
        if c is None:
            break
        members.append(c)
    for _ in range(passes if len(members) >= 2 else 0):
        rest_min = [min(s[m, j] for j in members if j != m) for m in members]
        rest_sum = [sum(s[m, j] for j in members if j != m) for m in members]
        w = min(range(len(members)), key=lambda i: (rest_min[i], rest_sum[i], i))
        rest = [m for i, m in enumerate(members) if i != w]
        c, score = best(rest, rest)
        if c is None or not score > rest_min[w]:
            break
        members[w] = c
    return members


def test_growth_and_purification_match_the_numpy_reference():
    rng = np.random.default_rng(0)
    x = dyadic_unit_vectors(rng, 150)
    neighbours = np.asarray(knn(x, 10).indices)
    available = rng.random(150) < 0.8
    for seed in rng.choice(150, 25, replace=False):
        for passes in (0, 6):
            members, size = grow_clique(seed, x, neighbours, clique_size=6, available=available,
                                        purify_passes=passes)
            expected = reference_clique(int(seed), x, neighbours, 6, available, passes)
            assert int(size) == len(expected)
            np.testing.assert_array_equal(members[:len(expected)], expected)


# ---------------------------------------------------------------- growth and purification


def three_groups(rng, noise=12):
    """3 tight groups of 8 unit vectors around e0, e1, e2 (cos ~0.99 within, ~0 across) and noise
    points around e3..e11."""
    dim = 16
    groups = [np.eye(dim)[g] + 0.05 * rng.normal(size=(8, dim)) for g in range(3)]
    noise = np.eye(dim)[3 + np.arange(noise) % 9] + 0.3 * rng.normal(size=(noise, dim))
    return unit(np.concatenate(groups + [noise]))


def test_cliques_are_the_groups():
    x = three_groups(np.random.default_rng(1))
    neighbours = knn(x, 10).indices
    for seed in range(24):
        members, size = grow_clique(seed, x, neighbours)
        assert int(size) == 8
        assert set(np.asarray(members).tolist()) == set(range(8 * (seed // 8), 8 * (seed // 8) + 8))
    # Batch-wise: three cliques from dissimilar seeds are the three groups, whichever comes first.
    found = build_cliques(jax.random.key(0), x[:24], knn(x[:24], 10).indices,
                          num_initial_batches=4, cliques_per_batch=3)
    chex.assert_shape(found.members, (12, 8))
    groups = np.sort(np.asarray(found.members) // 8, axis=1)
    assert np.all(groups == groups[:, :1])  # every clique within one group
    assert all(sorted(groups[b * 3:b * 3 + 3, 0]) == [0, 1, 2] for b in range(4))
    np.testing.assert_allclose(found.compactness, clique_compactness_numpy(found, x), rtol=1e-6)


def clique_compactness_numpy(found, x):
    out = []
    for row in np.asarray(found.members):
        m = row[row >= 0]
        s = x[m].astype(np.float64) @ x[m].astype(np.float64).T
        out.append(s[~np.eye(len(m), dtype=bool)].min())
    return np.array(out)


def test_complete_linkage_refuses_a_chain_that_single_linkage_follows():
    # Points on a tangent plane of the sphere: a chain along x (steps of 0.1) and a small group
    # along y. Single linkage from s follows the chain; complete linkage takes the group.
    plane = {"s": (0, 0), "c1": (0.1, 0), "c2": (0.2, 0), "c3": (0.3, 0),
             "b1": (0, 0.12), "b2": (0.06, 0.13)}
    names = list(plane)
    x = unit([(px, py, 1.0) for px, py in plane.values()])
    s = x @ x.T
    single = [0]
    while len(single) < 4:
        rest = [c for c in range(6) if c not in single]
        single.append(max(rest, key=lambda c: max(s[c, j] for j in single)))
    assert [names[i] for i in single] == ["s", "c1", "c2", "c3"]
    members, _ = grow_clique(0, x, knn(x, 5).indices, clique_size=4, purify_passes=0)
    assert [names[i] for i in np.asarray(members)] == ["s", "c1", "b2", "b1"]


def test_purification_swaps_a_planted_bad_member():
    x = three_groups(np.random.default_rng(2))
    neighbours = knn(x, 20).indices
    planted = np.array([0, 1, 2, 3, 4, 5, 6, 30])  # 7 of group 0, noise point 30; 7 is outside
    out = np.asarray(purify_clique(planted, x, neighbours))
    np.testing.assert_array_equal(out, [0, 1, 2, 3, 4, 5, 6, 7])
    assert set(np.asarray(purify_clique(planted, x, neighbours, passes=0))) == set(planted)
    # Unavailable replacements are not used.
    available = np.ones(len(x), bool)
    available[7] = False
    out = np.asarray(purify_clique(planted, x, neighbours, available=available))
    assert 7 not in out


# ---------------------------------------------------------------- dissimilar seeds, chunks


def test_rank_select_is_a_stable_argsort():
    rng = np.random.default_rng(3)
    values = rng.choice(np.array([-np.inf, -1.5, -0.0, 0.0, 1e-30, 0.25, 0.5, 0.5, np.inf],
                                 np.float32), 300)
    order = np.argsort(values, kind="stable")
    ranks = np.array([0, 1, 17, 150, 299] + list(rng.integers(0, 300, 20)))
    select = jax.jit(jax.vmap(rank_select, in_axes=(None, 0)))
    np.testing.assert_array_equal(select(jnp.asarray(values), ranks), order[ranks])


def test_dissimilar_seed_picks_from_the_least_similar_share():
    rng = np.random.default_rng(4)
    max_sim = np.round(rng.normal(size=400), 1).astype(np.float32)  # many ties
    lowest = set(np.argsort(max_sim, kind="stable")[:20].tolist())
    draw = jax.jit(jax.vmap(lambda key: dissimilar_seed(key, jnp.asarray(max_sim), 20)))
    picks = set(np.asarray(draw(jax.random.split(jax.random.key(0), 300))).tolist())
    assert picks <= lowest and len(picks) >= 15


@pytest.mark.parametrize("seed_fraction", [1 / 200, 0.05])
def test_each_next_seed_is_among_the_least_similar_to_the_batch(seed_fraction):
    rng = np.random.default_rng(5)
    x = dyadic_unit_vectors(rng, 200)
    available = rng.random(200) < 0.9
    found = build_cliques(jax.random.key(1), x, knn(x, 8).indices, num_initial_batches=3,
                          cliques_per_batch=5, clique_size=4, seed_fraction=seed_fraction,
                          purify_passes=0, available=available)  # members[0] is the seed
    s = x @ x.T
    m = max(1, int(seed_fraction * 200))
    for batch in np.asarray(found.members).reshape(3, 5, 4):
        assert np.all(available[batch]) and len(set(batch.ravel())) == batch.size  # disjoint
        for j in range(1, 5):
            taken = batch[:j].ravel()
            max_sim = np.where(available, s[taken].max(axis=0), np.inf)
            max_sim[taken] = np.inf
            assert batch[j, 0] in np.argsort(max_sim, kind="stable")[:m]


def test_chunk_size_does_not_change_the_cliques():
    rng = np.random.default_rng(6)
    x = dyadic_unit_vectors(rng, 300)
    neighbours = knn(x, 12).indices
    runs = [build_cliques(jax.random.key(2), x, neighbours, num_initial_batches=7,
                          cliques_per_batch=4, clique_size=6, max_size=10, chunk_size=c)
            for c in (3, 7)]
    for run in runs[1:]:
        np.testing.assert_array_equal(run.members, runs[0].members)
        np.testing.assert_array_equal(run.sizes, runs[0].sizes)
    chex.assert_shape(runs[0].members, (28, 10))
    assert np.all(np.asarray(runs[0].members)[:, 6:] == -1)
    grown = [grow_cliques(jax.random.key(3), runs[0], x, neighbours, max_size=12, null_samples=50,
                          chunk_size=c) for c in (1, 5)]
    np.testing.assert_array_equal(grown[0].members, grown[1].members)
    other = build_cliques(jax.random.key(4), x, neighbours, num_initial_batches=7,
                          cliques_per_batch=4, clique_size=6, max_size=10)
    assert not np.array_equal(other.members, runs[0].members)


# ---------------------------------------------------------------- Student-t growth


def test_student_t_sf_matches_scipy():
    x = np.linspace(-4.0, 6.0, 41)
    for df in (4.0, 30.0, 499.0):
        # Measured on x in [-4, 6]: the float64 control (JAX_ENABLE_X64=1) is within 3e-12
        # relative of scipy; float32 within 7.4e-4 (df = 499: the incomplete beta at z = df /
        # (df + x^2) near 1), 4x below the tolerance.
        np.testing.assert_allclose(student_t_sf(jnp.asarray(x), df), stats.t.sf(x, df), rtol=3e-3)


def test_student_t_growth_adds_close_points_and_not_a_far_one():
    rng = np.random.default_rng(7)
    dim = 32
    centre = np.eye(dim)[0]
    group = unit(centre + 0.15 * rng.normal(size=(8, dim)))
    close = unit(centre + 0.15 * rng.normal(size=(10, dim)))  # points 8..17
    far = unit(0.25 * centre + rng.normal(size=(1, dim)) / np.sqrt(dim))  # 18: ~1.3 null sd up
    noise = unit(rng.normal(size=(600, dim)))
    x = np.concatenate([group, close, far, noise])
    neighbours = knn(x, len(x) - 1).indices  # every sample is a candidate
    grown = grow_cliques(jax.random.key(5), make_cliques(np.arange(8)[None], x), x, neighbours,
                         max_size=16)
    chex.assert_shape(grown.members, (1, 16))
    members = np.asarray(grown.members[0])
    np.testing.assert_array_equal(members[:8], np.arange(8))  # the old members first
    # Capped at 16: the 8 close points most similar to the clique, most similar first.
    v = x[8:18] @ x[:8].mean(axis=0)
    np.testing.assert_array_equal(members[8:], 8 + np.argsort(-v)[:8])
    assert 18 not in members and int(grown.sizes[0]) == 16
    # The planted points against the noise's null: every close point significant, the far not.
    null = x[19:] @ x[:8].mean(axis=0)
    p = stats.t.sf((x[8:19] @ x[:8].mean(axis=0) - null.mean()) / null.std(ddof=1), len(null) - 1)
    assert np.all(p[:10] < 1e-4) and p[10] > 0.01


# ---------------------------------------------------------------- triplet check and sampler


def test_triplet_check_accepts_and_rejects_constructed_pairs():
    e = np.eye(8)
    a = unit(e[0] + 0.1 * e[1:4])                     # compact: min similarity ~0.99
    b = unit(e[5] + 0.1 * e[6:8])                     # far from A
    c = unit(np.stack([e[0] + 0.12 * e[1], e[4], e[4] + 0.1 * e[5]]))  # one member close to A
    x = np.concatenate([a, b, c])
    cliques = make_cliques(np.array([[0, 1, 2, -1], [3, 4, -1, -1], [5, 6, 7, -1]]), x)
    np.testing.assert_array_equal(triplet_check(cliques, x, [0], [1, 2]), [True, False])
    # C is not compact (min similarity 0): B passes after C only if no pair is more similar than
    # 0, while C passes after the compact B. The check is not symmetric.
    np.testing.assert_array_equal(triplet_check(cliques, x, [1], [2]), [True])
    np.testing.assert_array_equal(triplet_check(cliques, x, [2], [1]), [False])
    np.testing.assert_array_equal(triplet_check(cliques, x, [0, 1], [2]), [False])


def sampler_data():
    """5 tight groups of 12 unit vectors (around e0..e4); point 3 is a copy of point 0."""
    rng = np.random.default_rng(8)
    x = unit(np.concatenate([np.eye(16)[g] + 0.05 * rng.normal(size=(12, 16)) for g in range(5)]))
    x[3] = x[0]
    members = np.full((6, 12), -1)
    members[0, :3] = [0, 1, 2]           # tiled: 3 members for 8 samples
    members[1, :12] = np.arange(12, 24)  # subsampled: 12 members for 8 samples
    members[2, :4] = [24, 25, 26, 27]
    members[3, :4] = [36, 37, 38, 39]
    members[4, :4] = [3, 4, 5, 6]        # holds a copy of clique 0's point 0: fails against it
    return make_cliques(members, x), x


@pytest.mark.parametrize("mode", ["random", "heuristic"])
def test_sampler_shapes_tiling_and_determinism(mode):
    cliques, x = sampler_data()
    run = sample_clique_batches(jax.random.key(0), cliques, x, num_batches=40, cliques_per_batch=3,
                                samples_per_clique=8, mode=mode)
    chex.assert_shape([run.indices, run.labels], (40, 24))
    assert run.indices.dtype == run.labels.dtype == np.int32
    members = np.asarray(cliques.members)
    for b in range(40):
        assert len(set(run.cliques[b])) == 3 and 5 not in run.cliques[b]  # 5 is empty
        for j, c in enumerate(run.cliques[b]):
            part = run.indices[b, 8 * j:8 * j + 8]
            assert np.all(run.labels[b, 8 * j:8 * j + 8] == c)
            assert set(part) <= set(members[c][members[c] >= 0])
            counts = np.bincount(part, minlength=60)[members[c][members[c] >= 0]]
            assert counts.max() - counts.min() <= 1  # tiles of a permutation / a subsample
    again = sample_clique_batches(jax.random.key(0), cliques, x, num_batches=40,
                                  cliques_per_batch=3, samples_per_clique=8, mode=mode)
    for a, b in zip(run, again):
        np.testing.assert_array_equal(a, b)
    other = sample_clique_batches(np.random.default_rng(1), cliques, x, num_batches=40,
                                  cliques_per_batch=3, samples_per_clique=8, mode=mode)
    assert not np.array_equal(other.indices, run.indices)


def test_heuristic_batches_pass_the_triplet_check():
    cliques, x = sampler_data()
    weights = np.array([1.0, 0, 0, 0, 0, 0])  # the first clique is always 0
    run = sample_clique_batches(jax.random.key(1), cliques, x, num_batches=20, cliques_per_batch=4,
                                samples_per_clique=4, mode="heuristic", weights=weights)
    assert np.all(run.cliques[:, 0] == 0) and np.all(run.passed)
    assert not np.any(run.cliques == 4)  # 4 fails against 0; 1, 2 and 3 pass
    # Five cliques cannot all pass: the batch is completed with clique 4 and marked.
    run = sample_clique_batches(jax.random.key(1), cliques, x, num_batches=5, cliques_per_batch=5,
                                samples_per_clique=4, mode="heuristic", weights=weights)
    assert not np.any(run.passed) and np.all(run.cliques[:, 4] == 4)


# ---------------------------------------------------------------- diagnostics


def test_diagnostics_against_brute_force():
    rng = np.random.default_rng(9)
    x = unit(rng.normal(size=(50, 6)))
    members = np.full((5, 6), -1)
    for c in range(5):
        size = rng.integers(1, 7)
        members[c, :size] = rng.choice(50, size, replace=False)
    cliques = make_cliques(members, x)
    counts = np.zeros(50, int)
    for row in members:
        counts[row[row >= 0]] += 1
    np.testing.assert_array_equal(clique_sample_counts(cliques, 50), counts)
    assert float(clique_coverage(cliques, 50)) == pytest.approx(np.mean(counts > 0))
    s = x.astype(np.float64) @ x.astype(np.float64).T
    rows = [row[row >= 0] for row in members]
    intra = [s[a, b] for r in rows for a in r for b in r if a != b]
    inter = [s[a, b] for i, r in enumerate(rows) for j, q in enumerate(rows) if i != j
             for a in r for b in q]
    sim = clique_similarity(cliques, x)
    # float32 against float64: the float64 control (JAX_ENABLE_X64) agrees to ~1e-16; float32
    # differs by < 1e-6 here, 5x below the tolerance.
    assert float(sim.intra) == pytest.approx(np.mean(intra), abs=5e-6)
    assert float(sim.inter) == pytest.approx(np.mean(inter), abs=5e-6)
    labels = np.arange(50) % 3
    purity = [np.bincount(labels[r]).max() / len(r) for r in rows]
    np.testing.assert_allclose(clique_purity(cliques, labels), purity, rtol=1e-6)
    assert np.isnan(clique_purity(Cliques(jnp.full((1, 3), -1), jnp.zeros(1, jnp.int32),
                                          jnp.full(1, jnp.inf)), labels)[0])
