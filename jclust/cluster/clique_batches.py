"""CliqueCNN's training batches: a few cliques per batch, each tiled or subsampled to a fixed
number of samples (host NumPy, seeded; the batches are drawn once per round, ahead of training).

* ``mode="random"``: ``cliques_per_batch`` distinct cliques drawn with probability proportional to
  ``weights`` (uniform by default), as the authors' released training loop does.
* ``mode="heuristic"``: the first clique is drawn with probability proportional to ``weights``
  (e.g. each clique's loss); the other cliques are tried in ascending order of their mean
  similarity to the first one (mean_{a in A, b in B} s(a, b) = centroid_A . centroid_B) and
  accepted only if they pass the **triplet check** against every clique A chosen before them:
  max_{a in A, b in candidate} s(a, b) <= compactness(A), the minimum similarity within A (every
  member of A is at least as similar to the rest of A as to any member of the candidate). If the
  candidates run out, the batch is completed with the least similar unchosen cliques and marked
  as not passed.

A clique of s members gives ``samples_per_clique`` samples: a random permutation of its members,
tiled when s is smaller, its first ``samples_per_clique`` entries when s is larger. Similarity is
the dot product of L2-normalised features.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jclust.cluster.cliques import Cliques
from jclust.cluster.views import view_similarity_np

_BLOCK = 64  # heuristic candidates checked per matrix product


class CliqueBatches(NamedTuple):
    """Pre-sampled training batches (host arrays).

    Attributes:
      indices: [B, cliques_per_batch * samples_per_clique] int32 sample indices, clique-major.
      labels: [B, cliques_per_batch * samples_per_clique] int32, each sample's clique (its row of
        ``Cliques.members``): the classification target.
      cliques: [B, cliques_per_batch] int32, the cliques of each batch in the order chosen.
      passed: [B] bool, whether every clique passed the triplet check against those chosen before
        it (computed in both modes).
    """
    indices: np.ndarray
    labels: np.ndarray
    cliques: np.ndarray
    passed: np.ndarray


def _generator(rng) -> np.random.Generator:
    if isinstance(rng, np.random.Generator):
        return rng
    return np.random.default_rng(np.asarray(jax.random.bits(rng, (4,), jnp.uint32)))


def _max_cross(feats, valid, a, b) -> np.ndarray:
    """[len(a), len(b)]: max s(x, y) over members x of clique a[i] and y of clique b[j]."""
    w, v, d = feats.shape[1:]
    cross = view_similarity_np(feats[a].reshape(-1, v, d), feats[b].reshape(-1, v, d)).reshape(
        len(a), w, len(b), w)
    mask = valid[a][:, :, None, None] & valid[b][None, None, :, :]
    return np.where(mask, cross, -np.inf).max(axis=(1, 3))


def triplet_check(cliques: Cliques, features, chosen, candidates) -> np.ndarray:
    """[len(candidates)] bool: for every clique A in ``chosen``, max s(A, candidate) <=
    compactness(A) (module docstring).

    Args:
      cliques: members [C, W] (-1 = empty) and compactness [C].
      features: [N, D] float, rows L2-normalised, or views [N, V, D].
      chosen, candidates: clique indices.
    """
    feats, valid = _clique_features(cliques, features)
    compact = np.asarray(cliques.compactness)
    chosen, candidates = np.asarray(chosen, np.int64), np.asarray(candidates, np.int64)
    cross = _max_cross(feats, valid, chosen, candidates)
    return np.all(cross <= compact[chosen][:, None], axis=0)


def _clique_features(cliques: Cliques, features):
    members = np.asarray(cliques.members)
    valid = members >= 0
    features = np.asarray(features, np.float32)
    features = features[:, None, :] if features.ndim == 2 else features  # [N, V, D]
    return features[np.maximum(members, 0)] * valid[..., None, None], valid


def _heuristic_batch(first, centroids, feats, valid, compact, nonempty, count):
    """(cliques [count], passed) of one heuristic batch."""
    order = np.argsort(centroids @ centroids[first], kind="stable")
    order = order[(order != first) & nonempty[order]]
    chosen = [first]
    for start in range(0, len(order), _BLOCK):
        block = order[start:start + _BLOCK]
        ok = np.all(_max_cross(feats, valid, np.array(chosen), block) <= compact[chosen][:, None],
                    axis=0)
        while ok.any() and len(chosen) < count:
            i = int(np.argmax(ok))
            chosen.append(int(block[i]))
            ok[:i + 1] = False
            ok[i + 1:] &= _max_cross(feats, valid, block[i:i + 1], block[i + 1:])[0] <= compact[
                block[i]]
        if len(chosen) == count:
            return np.array(chosen), True
    taken = set(chosen)
    rest = [c for c in order if c not in taken]
    return np.array(chosen + rest[:count - len(chosen)]), False


def _passed_in_order(chosen, feats, valid, compact) -> np.ndarray:
    """[B] whether each row of ``chosen`` [B, c] passes the triplet check in its order."""
    passed = np.empty(len(chosen), bool)
    upper = np.triu(np.ones((chosen.shape[1],) * 2, bool), 1)  # pairs (earlier, later)
    for row, cl in enumerate(chosen):
        cross = _max_cross(feats, valid, cl, cl)
        passed[row] = np.all((cross <= compact[cl][:, None]) | ~upper)
    return passed


def _expand(rng, cliques: Cliques, chosen, samples_per_clique):
    """(indices, labels) [B, c * samples_per_clique] of the chosen cliques [B, c]."""
    members = np.asarray(cliques.members)[chosen]  # [B, c, W]
    sizes = np.asarray(cliques.sizes)[chosen]
    keys = np.where(members >= 0, rng.random(members.shape), 2.0)
    shuffled = np.take_along_axis(members, np.argsort(keys, axis=-1, kind="stable"), axis=-1)
    take = np.arange(samples_per_clique)[None, None, :] % np.maximum(sizes, 1)[..., None]
    indices = np.take_along_axis(shuffled, take, axis=-1)
    labels = np.broadcast_to(chosen[..., None], indices.shape)
    b = chosen.shape[0]
    return indices.reshape(b, -1).astype(np.int32), labels.reshape(b, -1).astype(np.int32)


def sample_clique_batches(rng, cliques: Cliques, features, *, num_batches: int = 1000,
                          cliques_per_batch: int = 8, samples_per_clique: int = 16,
                          mode: str = "random", weights=None) -> CliqueBatches:
    """CliqueCNN's pre-sampled training batches (module docstring).

    Args:
      rng: a np.random.Generator, or a jax PRNG key (turned into one).
      cliques: from :func:`jclust.cluster.cliques.build_cliques` (or grown).
      features: [N, D] float, rows L2-normalised, or views [N, V, D] (the heuristic's
        similarities and the check).
      num_batches: B (1,000 per round in the authors' code).
      cliques_per_batch: cliques per batch (8).
      samples_per_clique: samples per clique (16): 8 x 16 = 128.
      mode: ``"random"`` or ``"heuristic"``.
      weights: [C] non-negative clique weights (uniform by default; empty cliques never drawn).

    Returns:
      CliqueBatches (host arrays, fixed shapes); ``passed.mean()`` is the share of batches that
      passed the triplet check for all their cliques.
    """
    if mode not in ("random", "heuristic"):
        raise ValueError(f"mode must be 'random' or 'heuristic', got {mode!r}")
    rng = _generator(rng)
    feats, valid = _clique_features(cliques, features)
    compact = np.asarray(cliques.compactness)
    sizes = np.asarray(cliques.sizes)
    nonempty = sizes > 0
    w = np.ones(len(sizes)) if weights is None else np.asarray(weights, np.float64)
    if w.shape != sizes.shape or np.any(w < 0) or not np.isfinite(w).all():
        raise ValueError(f"weights must be [C] = {sizes.shape}, finite and >= 0")
    w = np.where(nonempty, w, 0.0)
    drawn = cliques_per_batch if mode == "random" else 1  # the cliques drawn by weight
    if np.count_nonzero(w) < drawn or np.count_nonzero(nonempty) < cliques_per_batch:
        raise ValueError(f"{cliques_per_batch} cliques per batch need as many non-empty cliques, "
                         f"{drawn} of them of positive weight")
    p = w / w.sum()
    if mode == "random":
        chosen = np.stack([rng.choice(len(p), cliques_per_batch, replace=False, p=p)
                           for _ in range(num_batches)])
        passed = _passed_in_order(chosen, feats, valid, compact)
    else:
        centroids = feats[:, :, 0].sum(axis=1) / np.maximum(sizes, 1)[:, None]
        rows = [_heuristic_batch(int(rng.choice(len(p), p=p)), centroids, feats, valid,
                                 compact, nonempty, cliques_per_batch) for _ in range(num_batches)]
        chosen = np.stack([r[0] for r in rows])
        passed = np.array([r[1] for r in rows])
    indices, labels = _expand(rng, cliques, chosen, samples_per_clique)
    return CliqueBatches(indices, labels, chosen.astype(np.int32), passed)
