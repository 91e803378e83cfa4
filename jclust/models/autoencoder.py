"""Fully connected autoencoder (DEC / IDEC style)."""

from typing import Sequence

import jax
import jax.numpy as jnp
import flax.linen as nn

from jclust.precision import float_dtype

Array = jax.Array

# DEC-keras initialises every Dense layer with
# VarianceScaling(scale=1/3, mode="fan_in", distribution="uniform"), i.e.
# U(-sqrt(1/fan_in), sqrt(1/fan_in)).
dec_kernel_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def flatten_inputs(x: Array) -> Array:
    """Flattens a batch of images into float vectors.

    Args:
      x: [B, ...], e.g. [B, H, W, C] images. uint8 is scaled to [0, 1] by
        1/255; any other dtype is only cast to float32 (no rescaling).

    Returns:
      float32 [B, prod(...)], e.g. [B, H*W*C].
    """
    x = jnp.asarray(x)
    if x.dtype == jnp.uint8:
        x = x.astype(float_dtype()) / 255.0
    else:
        x = x.astype(float_dtype())
    return x.reshape(x.shape[0], -1)


class MLPAutoencoder(nn.Module):
    """Symmetric MLP autoencoder D-500-500-2000-10-2000-500-500-D (by default).

    Hidden layers use ReLU; the embedding layer and the reconstruction layer are
    linear. Kernels use DEC-keras's init (``variance_scaling(1/3, "fan_in",
    "uniform")``), biases are zero.

    Attributes:
      output_dim: input/reconstruction size D.
      hidden: encoder hidden sizes; the decoder uses them reversed.
      embed_dim: embedding size.

    Example (x: float32 [B, 784])::

      model = MLPAutoencoder(output_dim=784)
      variables = model.init(key, x)
      z, x_rec = model.apply(variables, x)
      z = model.apply(variables, x, method=MLPAutoencoder.encode)
      x_rec = model.apply(variables, z, method=MLPAutoencoder.decode)
    """

    output_dim: int
    hidden: Sequence[int] = (500, 500, 2000)
    embed_dim: int = 10

    def setup(self):
        self.encoder = [nn.Dense(h, kernel_init=dec_kernel_init) for h in self.hidden]
        self.embed = nn.Dense(self.embed_dim, kernel_init=dec_kernel_init)
        self.decoder = [
            nn.Dense(h, kernel_init=dec_kernel_init) for h in reversed(self.hidden)
        ]
        self.reconstruct = nn.Dense(self.output_dim, kernel_init=dec_kernel_init)

    def encode(self, x: Array) -> Array:
        """[B, D] -> embedding z [B, embed_dim]."""
        for layer in self.encoder:
            x = nn.relu(layer(x))
        return self.embed(x)

    def decode(self, z: Array) -> Array:
        """[B, embed_dim] -> reconstruction [B, D]."""
        for layer in self.decoder:
            z = nn.relu(layer(z))
        return self.reconstruct(z)

    def __call__(self, x: Array) -> tuple[Array, Array]:
        """[B, D] -> (z [B, embed_dim], x_rec [B, D])."""
        z = self.encode(x)
        return z, self.decode(z)
