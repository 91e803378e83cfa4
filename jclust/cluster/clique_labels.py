"""Disjoint cliques: every sample in at most one clique, so that a clique index is a label.

CliqueCNN's cliques (:func:`jclust.cluster.cliques.build_cliques`) are disjoint within an
initial batch, not across batches; trained with one softmax over all cliques, a sample in two
cliques would carry two labels. :func:`disjoint_cliques` builds the initial batches in
sequential chunks, each among the samples the earlier chunks left, and gives what overlap remains
(within a chunk) to the clique of lowest index (:func:`first_clique_labels`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jclust.cluster.cliques import Cliques, build_cliques, make_cliques


def disjoint_cliques(key: jax.Array, features, neighbours, *, num_initial_batches: int,
                     cliques_per_batch: int, clique_size: int, seed_fraction: float,
                     purify_passes: int, chunk: int) -> tuple[np.ndarray, Cliques]:
    """:func:`jclust.cluster.build_cliques` in sequential chunks of ``chunk`` initial batches, each
    chunk choosing among the samples earlier chunks left: (each sample's clique [N], -1 for none;
    the cliques [B * cliques_per_batch, clique_size]), disjoint (module docstring)."""
    n = features.shape[0]
    available = np.ones((n,), bool)
    keys = jax.random.split(key, -(-num_initial_batches // chunk))
    parts = []
    for i, start in enumerate(range(0, num_initial_batches, chunk)):
        part = build_cliques(
            keys[i], features, neighbours,
            num_initial_batches=min(chunk, num_initial_batches - start),
            cliques_per_batch=cliques_per_batch, clique_size=clique_size,
            seed_fraction=seed_fraction, purify_passes=purify_passes,
            available=jnp.asarray(available), chunk_size=chunk)
        members = np.asarray(part.members)
        available[members[members >= 0]] = False
        parts.append(members)
    labels = first_clique_labels(np.concatenate(parts), n)
    return labels, cliques_from_labels(labels, num_initial_batches * cliques_per_batch,
                                       clique_size, features)


def first_clique_labels(members: np.ndarray, num_samples: int) -> np.ndarray:
    """[N] the lowest-index clique of ``members`` [C, W] holding each sample (-1: none), with
    cliques left with fewer than two samples dropped."""
    rows = np.repeat(np.arange(members.shape[0]), members.shape[1])
    flat = members.ravel()
    keep = flat >= 0
    rows, flat = rows[keep], flat[keep]
    first = np.full((num_samples,), members.shape[0], np.int64)
    np.minimum.at(first, flat, rows)
    labels = np.where(first < members.shape[0], first, -1)
    sizes = np.bincount(labels[labels >= 0], minlength=members.shape[0])
    return np.where((labels >= 0) & (sizes[np.maximum(labels, 0)] >= 2), labels, -1
                    ).astype(np.int32)


def cliques_from_labels(labels: np.ndarray, num_cliques: int, width: int, features
                        ) -> Cliques:
    """The :class:`~jclust.cluster.Cliques` table [num_cliques, width] of disjoint labels [N]
    (members in sample order; a clique wider than ``width`` keeps its first ``width``)."""
    members = np.full((num_cliques, width), -1, np.int32)
    samples = np.flatnonzero(labels >= 0)
    order = samples[np.argsort(labels[samples], kind="stable")]
    sorted_labels = labels[order]
    starts = np.searchsorted(sorted_labels, np.arange(num_cliques))
    slot = np.arange(order.size) - starts[sorted_labels]
    fits = slot < width
    members[sorted_labels[fits], slot[fits]] = order[fits]
    return make_cliques(jnp.asarray(members), features)


def grown_labels(labels: np.ndarray, grown: Cliques) -> np.ndarray:
    """Adds the Student-t growth's new members to ``labels`` where they are in no clique yet (the
    clique of lowest index first)."""
    added = first_clique_labels(np.asarray(grown.members), labels.shape[0])
    return np.where(labels >= 0, labels, added).astype(np.int32)
