"""Triangle encoding of Coates, Lee & Ng (AISTATS 2011), "An Analysis of Single-Layer Networks in
Unsupervised Feature Learning", §3.1.2: a soft, sparse code of x against K centroids,

  f_k(x) = max(0, mu(z) - z_k),   z_k = ||x - c_k||_2,   mu(z) = (1/K) sum_j z_j.

A centroid farther than the average distance gets 0, so about half of the K features are zero
(sum_k (mu - z_k) = 0: the positive part of that sum is all that is kept). Sitaula et al. (PSIVT
2019) encode pretrained deep features this way, with centroids learned by k-means on the
training features.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def centroid_distances(x: jax.Array, centroids: jax.Array, *,
                       max_block_elements: int = 1 << 24) -> jax.Array:
    """Euclidean distances [N, K] of rows x [N, D] to centroids [K, D], float32.

    Computed from the differences x_i - c_k, a block of rows at a time (at most
    ``max_block_elements`` differences in memory, 64 MiB by default), not from the expansion
    |x|^2 - 2 x.c + |c|^2: that one loses the small distances to cancellation (an example that is
    its own cluster's centroid came out 6e-3 away instead of 0 for 1280-d features), and the
    triangle code is made of differences of distances.
    """
    x = x.astype(jnp.float32)
    centroids = centroids.astype(jnp.float32)
    rows = max(1, max_block_elements // max(centroids.size, 1))

    def row_distances(row):
        return jnp.sqrt(jnp.sum(jnp.square(row[None, :] - centroids), axis=-1))

    return jax.lax.map(row_distances, x, batch_size=min(rows, max(x.shape[0], 1)))


def triangle_encode(x: jax.Array, centroids: jax.Array) -> jax.Array:
    """The triangle code of each row of x.

    Args:
      x: [N, D] features.
      centroids: [K, D], K >= 2 (with one centroid every code is 0).

    Returns:
      [N, K] float32, f_k = max(0, mean_j z_j - z_k) with z the distances to the centroids.

    Raises:
      ValueError: x and centroids are not 2-D with the same D, or K < 2.
    """
    if x.ndim != 2 or centroids.ndim != 2 or x.shape[1] != centroids.shape[1]:
        raise ValueError(f"x must be [N, D] and centroids [K, D], got {x.shape} and "
                         f"{centroids.shape}")
    if centroids.shape[0] < 2:
        raise ValueError(f"the triangle code needs K >= 2 centroids, got {centroids.shape[0]}")
    z = centroid_distances(x, centroids)
    return jnp.maximum(jnp.mean(z, axis=1, keepdims=True) - z, 0.0)
