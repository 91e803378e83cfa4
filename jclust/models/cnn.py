"""Small convolutional network (the "small CNN" of ENVIRONMENT.md, Part 3 (d))."""

from typing import Any, Sequence

import jax
import jax.numpy as jnp
import flax.linen as nn

from jclust.models.conv import Conv3x3, ConvValid, drawn_as_matrix, resolve_impl
from jclust.precision import float_dtype

Array = jax.Array


def _windows(x: Array) -> Array:
    """[B, H, W, C] (H, W even) -> [B, H/2, 2, W/2, 2, C]."""
    b, h, w, c = x.shape
    return x.reshape(b, h // 2, 2, w // 2, 2, c)


# 2x2 pooling as a reshape + max made a SmallCNN train step 10-15 % faster on
# XLA:CPU than nn.max_pool (reduce_window / select_and_scatter), with bit-equal
# values. Plain autodiff of a reshape-max would split the gradient between tied
# maxima (common after ReLU on flat image regions), whereas nn.max_pool sends it
# all to the first maximum in row-major window order; this custom JVP does the
# same, so gradients are bit-equal too, and forward mode still works.
@jax.custom_jvp
def _pool_even(x: Array) -> Array:
    return _windows(x).max(axis=(2, 4))


@_pool_even.defjvp
def _pool_even_jvp(primals, tangents):
    (x,), (t,) = primals, tangents
    y = _pool_even(x)
    xw, tw = _windows(x), _windows(t)
    out = tw[:, :, 1, :, 1, :]  # the last window slot wins if no earlier one does
    taken = jnp.zeros(y.shape, bool)
    for i, j in ((0, 0), (0, 1), (1, 0)):
        hit = (xw[:, :, i, :, j, :] == y) & ~taken
        out = jnp.where(hit, tw[:, :, i, :, j, :], out)
        taken = taken | hit
    return y, out


def max_pool_2x2(x: Array) -> Array:
    """2x2, stride-2, VALID max-pool: [B, H, W, C] -> [B, H//2, W//2, C].

    Values and gradients equal ``nn.max_pool(x, (2, 2), strides=(2, 2))``
    exactly, including ties; a trailing odd row/column is dropped, as VALID
    padding does.
    """
    _, h, w, _ = x.shape
    return _pool_even(x[:, : h // 2 * 2, : w // 2 * 2])


class SmallCNN(nn.Module):
    """conv3x3-32, conv3x3-64, pool, conv3x3-128, pool, dense-128 (+ optional head).

    Every conv is followed by ReLU; every conv after the first is followed by a
    2x2 stride-2 max-pool (so ``widths`` of any length >= 1 works). The flattened
    map goes through ``Dense(dense)`` + ReLU to give the representation; with
    ``num_outputs`` set, a linear head maps it to ``num_outputs`` logits.

    At 28x28x1 with the default widths and ``num_outputs=10`` this has 896,906
    parameters, like the torch and flax networks measured in ENVIRONMENT.md.

    Attributes:
      widths: output channels of the 3x3 convs.
      dense: size of the representation returned by :meth:`features`.
      conv_impl: ``"auto"``, ``"native"`` or ``"im2col"``; see
        :class:`jclust.models.conv.Conv3x3`. Parameters do not depend on it.
      num_outputs: size of the linear head, or None for no head.
      pool_first: also pool after the first conv (4x fewer multiply-adds in the later convs at
        28x28; the CPU-sized variant DeepCluster uses on Fashion-MNIST).
      global_pool: average the last map over its positions instead of flattening it, so that
        one network takes inputs of any size (SwAV's multi-crop feeds two resolutions).
      dtype: computation dtype of the convs and the dense layers (None: float32); parameters
        stay float32 (mixed precision with ``jnp.bfloat16``).
      output_relu: the representation is ``Dense`` + ReLU; False: the dense layer's output
        before the ReLU (as fc7 before its ReLU, the similarity feature CliqueCNN's authors use;
        a head on it then applies the ReLU itself).
    """

    widths: Sequence[int] = (32, 64, 128)
    dense: int = 128
    conv_impl: str = "auto"
    num_outputs: int | None = None
    pool_first: bool = False
    global_pool: bool = False
    dtype: Any = None
    output_relu: bool = True

    def setup(self):
        resolve_impl(self.conv_impl)
        self.convs = [Conv3x3(w, impl=self.conv_impl, dtype=self.dtype) for w in self.widths]
        self.fc = nn.Dense(self.dense, dtype=self.dtype)
        if self.num_outputs is not None:
            self.head = nn.Dense(self.num_outputs)

    def features(self, x: Array) -> Array:
        """Representation: [B, H, W, C] (float32, or uint8 scaled by 1/255) -> [B, dense]."""
        if x.dtype == jnp.uint8:
            x = x.astype(float_dtype()) / 255.0
        for i, conv in enumerate(self.convs):
            x = nn.relu(conv(x))
            if i > 0 or self.pool_first:
                x = max_pool_2x2(x)
        x = jnp.mean(x, axis=(1, 2)) if self.global_pool else x.reshape(x.shape[0], -1)
        x = self.fc(x)
        return nn.relu(x) if self.output_relu else x

    def __call__(self, x: Array) -> Array:
        """[B, H, W, C] -> logits [B, num_outputs], or features [B, dense] without a head."""
        h = self.features(x)
        if self.num_outputs is not None:
            return self.head(h if self.output_relu else nn.relu(h))
        return h


class JuleCNN(nn.Module):
    """The JULE reference's network for MNIST: [conv5x5-50, BN, ReLU, maxpool 2] -> [conv5x5-50,
    BN, ReLU] -> flatten (jwyang/JULE.torch ``models_def``; 3,200 features at 28x28).

    Every conv is unpadded (VALID) and followed by BatchNorm and ReLU; every conv but the last by
    a 2x2 max-pool. The reference's linear 3200 -> 160 layer is the method's head, not part of
    the backbone. Convs are initialised N(0, 0.01^2) as in the reference.

    Attributes:
      widths: output channels of the convs.
      size: kernel side of the convs.
      conv_impl: ``"auto"``, ``"native"`` or ``"im2col"`` (:func:`jclust.models.resolve_impl`).
      dtype: computation dtype (None: float32); parameters and batch statistics stay float32.
    """

    widths: Sequence[int] = (50, 50)
    size: int = 5
    conv_impl: str = "auto"
    dtype: Any = None

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        """[B, H, W, C] (float32, or uint8 scaled by 1/255) -> [B, flattened features]."""
        if x.dtype == jnp.uint8:
            x = x.astype(float_dtype()) / 255.0
        for i, width in enumerate(self.widths):
            x = ConvValid(width, self.size, impl=self.conv_impl,
                          kernel_init=drawn_as_matrix(nn.initializers.normal(0.01)),
                          dtype=self.dtype)(x)
            x = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                                     dtype=self.dtype)(x))
            if i < len(self.widths) - 1:
                x = max_pool_2x2(x)
        return x.reshape(x.shape[0], -1)

    @staticmethod
    def output_dim(input_shape: Sequence[int], widths: Sequence[int], size: int) -> int:
        """Length of the flattened output for one [H, W, C] input."""
        h, w = input_shape[:2]
        for i in range(len(widths)):
            h, w = h - size + 1, w - size + 1
            if i < len(widths) - 1:
                h, w = h // 2, w // 2
        if h < 1 or w < 1:
            raise ValueError(f"a {input_shape[0]}x{input_shape[1]} input is too small for "
                             f"{len(widths)} {size}x{size} convs")
        return h * w * widths[-1]
