"""The losses and primitives jitted and not (chex.variants), each against a float64 NumPy
reference of its paper's formula on the same inputs.

Tolerances: every reference is computed in float64 from the float32 inputs, so the difference
is the function's own float32 rounding. `python tests/test_variants.py` prints the largest
relative drift (max |got - want| / max |want|) of the checks; measured on an AMD EPYC Zen 4 VM
on 2026-12-04: at most 6.4e-7 for every loss and for Sinkhorn (both domains), 2.2e-6 for the
PCA-whitening (an eigendecomposition of a float32 covariance). RTOL = 2e-5 is 30 times the
first, WHITEN_RTOL = 1e-4 45 times the second: room for another CPU's rounding, and far below
what a wrong formula moves (1e-2 and more, see the hand-computed cases in the methods' tests).
"""

import functools

import chex
import jax.numpy as jnp
import numpy as np
from absl.testing import absltest

from jclust.cluster import em, l2_normalize, sinkhorn_knopp
from jclust.cluster.pca import fit_whitening, whiten
from jclust.methods import dec, losses, swav
from tests.test_sinkhorn import numpy_sinkhorn as ref_sinkhorn

RTOL = 2e-5
WHITEN_RTOL = 1e-4


def _rng(seed=0):
    return np.random.default_rng(seed)


def _f32(x):
    return np.asarray(x, np.float32)


# Float64 references, written from the papers' formulas.


def ref_soft_assignment(z, mu, alpha):
    sq = ((z[:, None, :] - mu[None]) ** 2).sum(-1)
    q = (1 + sq / alpha) ** (-(alpha + 1) / 2)
    return q / q.sum(1, keepdims=True)


def ref_target_distribution(q):
    w = q ** 2 / q.sum(0)
    return w / w.sum(1, keepdims=True)


def ref_kl(p, q):
    return np.mean(np.sum(p * np.log(p / q), axis=1))


def ref_swapped_prediction(scores, codes, temperature):
    log_p = scores / temperature
    log_p = log_p - np.log(np.exp(log_p).sum(-1, keepdims=True))
    num_views, num_assign = scores.shape[0], codes.shape[0]
    total = 0.0
    for s in range(num_assign):
        for v in range(num_views):
            if v != s:
                total += np.mean(-(codes[s] * log_p[v]).sum(-1))
    return total / (num_assign * (num_views - 1))


def ref_responsibilities(log_densities, log_weights):
    joint = log_densities + log_weights - np.log(np.exp(log_weights).sum())
    log_likelihood = np.log(np.exp(joint).sum(-1))
    return np.exp(joint - log_likelihood[:, None]), log_likelihood


def ref_cross_entropy(logits, labels, weights):
    log_p = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    nll = -log_p[np.arange(len(labels)), labels]
    return np.sum(weights * nll) / np.sum(weights)


def ref_whitened(x, dim):
    """PCA-whitened, L2-normalised rows, up to the sign of each component."""
    centred = x - x.mean(0)
    cov = centred.T @ centred / (len(x) - 1)
    values, vectors = np.linalg.eigh(cov)
    order = np.argsort(values)[::-1][:dim]
    white = centred @ vectors[:, order] / np.sqrt(values[order])
    return white / np.linalg.norm(white, axis=1, keepdims=True)


def relative_drift(got, want):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    return float(np.max(np.abs(got - want)) / np.max(np.abs(want)))


def assert_close(got, want, rtol=RTOL):
    # Relative to the largest magnitude: entries near zero are not held to a relative bound.
    assert relative_drift(got, want) <= rtol, (relative_drift(got, want), rtol)


class LossesAndPrimitives(chex.TestCase):

    @chex.variants(with_jit=True, without_jit=True)
    def test_dec_soft_assignment_target_and_kl(self):
        z, mu = _f32(_rng(0).normal(size=(40, 5))), _f32(_rng(1).normal(size=(6, 5)))
        for alpha in (1.0, 3.0):
            q = self.variant(functools.partial(dec.soft_assignment, alpha=alpha))(z, mu)
            chex.assert_shape(q, (40, 6))
            want_q = ref_soft_assignment(z.astype(np.float64), mu.astype(np.float64), alpha)
            assert_close(q, want_q)
        p = self.variant(dec.target_distribution)(q)
        assert_close(p, ref_target_distribution(np.asarray(q, np.float64)))
        kl = self.variant(dec.kl_divergence)(p, q)
        chex.assert_shape(kl, ())
        assert_close(kl, ref_kl(np.asarray(p, np.float64), np.asarray(q, np.float64)))

    @chex.variants(with_jit=True, without_jit=True)
    def test_swav_swapped_prediction_loss(self):
        scores = _f32(np.tanh(_rng(2).normal(size=(4, 16, 10))))  # cosines: 4 crops
        codes = _rng(3).random(size=(2, 16, 10))
        codes = _f32(codes / codes.sum(-1, keepdims=True))
        loss = self.variant(functools.partial(swav.swapped_prediction_loss, temperature=0.1))(
            scores, codes)
        chex.assert_shape(loss, ())
        assert_close(loss, ref_swapped_prediction(scores.astype(np.float64),
                                                  codes.astype(np.float64), 0.1))

    @chex.variants(with_jit=True, without_jit=True)
    def test_sinkhorn_codes(self):
        z = _rng(4).normal(size=(64, 16))
        c = _rng(5).normal(size=(12, 16))
        scores = _f32((z / np.linalg.norm(z, axis=1, keepdims=True))
                      @ (c / np.linalg.norm(c, axis=1, keepdims=True)).T)
        for log_domain in (False, True):
            out = self.variant(functools.partial(sinkhorn_knopp, epsilon=0.05, num_iters=3,
                                                 log_domain=log_domain))(scores)
            chex.assert_shape(out.codes, (64, 12))
            chex.assert_tree_all_finite(out)
            assert_close(out.codes, ref_sinkhorn(scores.astype(np.float64), 0.05, 3))

    @chex.variants(with_jit=True, without_jit=True)
    def test_em_responsibilities(self):
        log_densities = _f32(-np.abs(_rng(6).normal(size=(30, 5))) * 20)  # tiny densities too
        log_weights = _f32(_rng(7).normal(size=5))
        out = self.variant(em.responsibilities)(log_densities, log_weights)
        chex.assert_shape((out.responsibilities, out.log_likelihood), ((30, 5), (30,)))
        gamma, log_likelihood = ref_responsibilities(log_densities.astype(np.float64),
                                                     log_weights.astype(np.float64))
        assert_close(out.responsibilities, gamma)
        assert_close(out.log_likelihood, log_likelihood)

    @chex.variants(with_jit=True, without_jit=True)
    def test_cross_entropy_and_l2_normalize(self):
        logits = _f32(_rng(8).normal(size=(20, 7)) * 3)
        labels = _rng(9).integers(0, 7, size=20).astype(np.int32)
        weights = _f32(_rng(10).random(size=20))
        got = self.variant(losses.cross_entropy)(logits, labels, weights)
        assert_close(got, ref_cross_entropy(logits.astype(np.float64), labels,
                                            weights.astype(np.float64)))
        got = self.variant(losses.cross_entropy)(logits, labels)
        assert_close(got, ref_cross_entropy(logits.astype(np.float64), labels, np.ones(20)))
        x = _f32(_rng(11).normal(size=(6, 9)))
        x[2] = 0.0  # a zero row stays zero
        got = self.variant(l2_normalize)(x)
        norms = np.linalg.norm(x.astype(np.float64), axis=1, keepdims=True)
        assert_close(got, np.divide(x, norms, out=np.zeros((6, 9)), where=norms > 0))

    @chex.variants(with_jit=True, without_jit=True)
    def test_pca_whitening(self):
        x = _f32(_rng(12).normal(size=(200, 12)) @ _rng(13).normal(size=(12, 12)))
        mean, projection = self.variant(functools.partial(fit_whitening, dim=5))(x)
        got = np.asarray(self.variant(whiten)(jnp.asarray(x), mean, projection), np.float64)
        want = ref_whitened(x.astype(np.float64), 5)
        chex.assert_shape(got, (200, 5))
        got *= np.sign(np.sum(got * want, axis=0))  # each component's sign is arbitrary
        assert_close(got, want, WHITEN_RTOL)


def _print_drifts():
    """The measurement behind the tolerances: the largest relative drift of each check."""
    z, mu = _f32(_rng(0).normal(size=(40, 5))), _f32(_rng(1).normal(size=(6, 5)))
    q = dec.soft_assignment(z, mu)
    print("soft_assignment", relative_drift(q, ref_soft_assignment(z.astype(float), mu.astype(float), 1.0)))
    print("target", relative_drift(dec.target_distribution(q),
                                   ref_target_distribution(np.asarray(q, float))))
    z = _rng(4).normal(size=(64, 16))
    c = _rng(5).normal(size=(12, 16))
    scores = _f32((z / np.linalg.norm(z, axis=1, keepdims=True))
                  @ (c / np.linalg.norm(c, axis=1, keepdims=True)).T)
    for log_domain in (False, True):
        out = sinkhorn_knopp(scores, epsilon=0.05, num_iters=3, log_domain=log_domain)
        print("sinkhorn", log_domain, relative_drift(out.codes, ref_sinkhorn(scores.astype(float), 0.05, 3)))
    log_densities = _f32(-np.abs(_rng(6).normal(size=(30, 5))) * 20)
    log_weights = _f32(_rng(7).normal(size=5))
    out = em.responsibilities(log_densities, log_weights)
    gamma, ll = ref_responsibilities(log_densities.astype(float), log_weights.astype(float))
    print("em", relative_drift(out.responsibilities, gamma), relative_drift(out.log_likelihood, ll))
    x = _f32(_rng(12).normal(size=(200, 12)) @ _rng(13).normal(size=(12, 12)))
    mean, projection = fit_whitening(x, 5)
    got = np.asarray(whiten(jnp.asarray(x), mean, projection), float)
    want = ref_whitened(x.astype(float), 5)
    got *= np.sign(np.sum(got * want, axis=0))
    print("whiten", relative_drift(got, want))


if __name__ == "__main__":
    _print_drifts()
    absltest.main()
