"""Stride-1 convolutions (3x3 SAME; k x k VALID) with a CPU-friendly im2col lowering.

XLA:CPU lowers the *kernel gradient* of ``lax.conv_general_dilated`` very
slowly (5-10x slower than torch; see ENVIRONMENT.md, Part 3 (d)). Writing the
3x3 conv as "9 shifted slices of the padded input, concatenated on the channel
axis, then one matmul" turns the forward pass and both gradients into plain
matmuls, which made small-CNN training about 3.5x faster on CPU with the same
results. On GPU/TPU the native convolution is fast, so ``impl="auto"`` keeps it
there.
"""

import math
from typing import Any

import jax
import jax.numpy as jnp
import flax.linen as nn
from jax import lax

Array = jax.Array

IMPLS = ("auto", "native", "im2col")


def drawn_as_matrix(init: nn.initializers.Initializer) -> nn.initializers.Initializer:
    """``init`` for a conv kernel [*window, Cin, Cout], drawn as the matrix
    [prod(window) * Cin, Cout] and reshaped: the same numbers, since JAX's random bits fill an
    array in row-major order whatever its shape, and the same fan-in. XLA:CPU compiles a normal or
    truncated-normal draw of a 4-D shape in ~4-5 s and of a 2-D one in ~0.4 s (measured on 2 cores,
    jax 0.10), and a model's init compiles one draw per kernel shape. Only for inits whose scale
    depends on the fan-in alone (``lecun_normal``, ``he_normal``, ``normal``): a matrix has
    another fan-out than the kernel."""

    def init_kernel(key, shape, dtype=jnp.float32):
        matrix = (math.prod(shape[:-1]), shape[-1])
        return init(key, matrix, dtype).reshape(shape)

    return init_kernel


default_kernel_init = drawn_as_matrix(nn.linear.default_kernel_init)  # nn.Conv's lecun_normal


def resolve_impl(impl: str) -> str:
    """Resolves ``impl`` to ``"native"`` or ``"im2col"``.

    ``"auto"`` becomes ``"im2col"`` when ``jax.default_backend() == "cpu"`` and
    ``"native"`` otherwise (GPU/TPU keep XLA's own convolution). The choice is
    made in Python, i.e. at trace time, so a jitted function keeps the
    implementation it was traced with.

    Raises:
      ValueError: if ``impl`` is not one of ``"auto"``, ``"native"``, ``"im2col"``.
    """
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    if impl == "auto":
        return "im2col" if jax.default_backend() == "cpu" else "native"
    return impl


def im2col3x3(x: Array) -> Array:
    """Extracts 3x3 SAME patches as channels: [B, H, W, C] -> [B, H, W, 9*C].

    Channel ``(dy * 3 + dx) * C + c`` of the output holds input channel ``c`` at
    offset ``(dy - 1, dx - 1)`` (zero outside the image), which matches the row
    order of ``kernel.reshape(9 * C, Cout)`` for an HWIO ``[3, 3, C, Cout]``
    kernel.
    """
    return im2col_valid(jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0))), 3)


def conv3x3(
    x: Array,
    kernel: Array,
    bias: Array | None = None,
    impl: str = "auto",
    precision: Any = None,
) -> Array:
    """3x3, stride 1, SAME-padded 2-D cross-correlation in NHWC layout.

    Args:
      x: input, [B, H, W, Cin].
      kernel: HWIO kernel, [3, 3, Cin, Cout] (same layout as ``nn.Conv``).
      bias: optional bias, [Cout].
      impl: ``"native"`` (``lax.conv_general_dilated``), ``"im2col"`` (9 shifted
        slices + one matmul) or ``"auto"`` (see :func:`resolve_impl`).
      precision: passed to the underlying conv / dot_general.

    Returns:
      [B, H, W, Cout]. Both implementations compute the same function; results
      differ only by float summation order.
    """
    if kernel.shape[:2] != (3, 3) or kernel.ndim != 4:
        raise ValueError(f"kernel must be [3, 3, Cin, Cout], got {kernel.shape}")
    if x.ndim != 4 or x.shape[-1] != kernel.shape[2]:
        raise ValueError(
            f"x must be [B, H, W, {kernel.shape[2]}] (NHWC), got {x.shape}"
        )
    impl = resolve_impl(impl)
    if impl == "native":
        y = lax.conv_general_dilated(
            x,
            kernel,
            window_strides=(1, 1),
            padding=((1, 1), (1, 1)),
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
            precision=precision,
        )
    else:
        cin, cout = kernel.shape[2], kernel.shape[3]
        cols = im2col3x3(x)
        y = lax.dot_general(
            cols,
            kernel.reshape(9 * cin, cout),
            (((3,), (0,)), ((), ())),
            precision=precision,
        )
    if bias is not None:
        y = y + bias.reshape(1, 1, 1, -1)
    return y


class Conv3x3(nn.Module):
    """3x3, stride 1, SAME-padded convolution, NHWC, with selectable lowering.

    Parameters are named and shaped exactly like
    ``nn.Conv(features, (3, 3), padding="SAME")``: ``kernel`` [3, 3, Cin, Cout]
    and ``bias`` [Cout], so variables can be swapped between ``impl`` values and
    with ``nn.Conv``.

    Attributes:
      features: number of output channels Cout.
      use_bias: whether to add a bias.
      impl: ``"auto"`` (im2col on CPU, native on GPU/TPU, chosen at trace
        time), ``"native"`` or ``"im2col"``.
      kernel_init: kernel initializer (default: ``nn.Conv``'s, lecun_normal, drawn as a matrix).
      bias_init: bias initializer (default: zeros, as ``nn.Conv``).
      dtype: computation dtype (default: inferred from inputs and params).
      param_dtype: parameter dtype.
      precision: passed to the conv / matmul.
    """

    features: int
    use_bias: bool = True
    impl: str = "auto"
    kernel_init: nn.initializers.Initializer = default_kernel_init
    bias_init: nn.initializers.Initializer = nn.initializers.zeros_init()
    dtype: Any = None
    param_dtype: Any = jnp.float32
    precision: Any = None

    @nn.compact
    def __call__(self, x: Array) -> Array:
        """Applies the convolution: [B, H, W, Cin] -> [B, H, W, features]."""
        resolve_impl(self.impl)  # fail early on a bad name, even before init
        kernel = self.param(
            "kernel",
            self.kernel_init,
            (3, 3, x.shape[-1], self.features),
            self.param_dtype,
        )
        bias = (
            self.param("bias", self.bias_init, (self.features,), self.param_dtype)
            if self.use_bias
            else None
        )
        x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
        return conv3x3(x, kernel, bias, impl=self.impl, precision=self.precision)


def im2col_valid(x: Array, size: int) -> Array:
    """Extracts size x size VALID patches as channels: [B, H, W, C] -> [B, H', W', size*size*C].

    H' = H - size + 1 and W' = W - size + 1. Channel ``(dy * size + dx) * C + c`` holds input
    channel ``c`` at offset ``(dy, dx)`` from the patch's top-left corner, the row order of
    ``kernel.reshape(size * size * C, Cout)`` for an HWIO kernel.
    """
    _, h, w, _ = x.shape
    if size < 1 or size > min(h, w):
        raise ValueError(f"patch size {size} does not fit a {h}x{w} map")
    ho, wo = h - size + 1, w - size + 1
    cols = [x[:, dy : dy + ho, dx : dx + wo, :] for dy in range(size) for dx in range(size)]
    return jnp.concatenate(cols, axis=-1)


def conv_valid(x: Array, kernel: Array, bias: Array | None = None, impl: str = "auto",
               precision: Any = None) -> Array:
    """k x k, stride 1, VALID (unpadded) 2-D cross-correlation in NHWC layout.

    Args:
      x: input, [B, H, W, Cin].
      kernel: HWIO kernel, [k, k, Cin, Cout] (``nn.Conv``'s layout).
      bias: optional bias, [Cout].
      impl: ``"native"``, ``"im2col"`` (k*k shifted slices + one matmul: on XLA:CPU the kernel
        gradient then is a matmul too) or ``"auto"`` (see :func:`resolve_impl`).
      precision: passed to the underlying conv / dot_general.

    Returns:
      [B, H - k + 1, W - k + 1, Cout]; both implementations compute the same function.
    """
    if kernel.ndim != 4 or kernel.shape[0] != kernel.shape[1]:
        raise ValueError(f"kernel must be [k, k, Cin, Cout], got {kernel.shape}")
    if x.ndim != 4 or x.shape[-1] != kernel.shape[2]:
        raise ValueError(f"x must be [B, H, W, {kernel.shape[2]}] (NHWC), got {x.shape}")
    size, cin, cout = kernel.shape[0], kernel.shape[2], kernel.shape[3]
    if resolve_impl(impl) == "native":
        y = lax.conv_general_dilated(x, kernel, window_strides=(1, 1), padding="VALID",
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                     precision=precision)
    else:
        y = lax.dot_general(im2col_valid(x, size), kernel.reshape(size * size * cin, cout),
                            (((3,), (0,)), ((), ())), precision=precision)
    if bias is not None:
        y = y + bias.reshape(1, 1, 1, -1)
    return y


class ConvValid(nn.Module):
    """k x k, stride 1, VALID convolution, NHWC, with selectable lowering.

    Parameters are named and shaped like ``nn.Conv(features, (size, size), padding="VALID")``.

    Attributes:
      features: output channels.
      size: kernel side k.
      impl: ``"auto"``, ``"native"`` or ``"im2col"`` (:func:`resolve_impl`).
      kernel_init: kernel initializer (default: ``nn.Conv``'s, drawn as a matrix).
      dtype: computation dtype (default: inferred from inputs and params).
    """

    features: int
    size: int
    impl: str = "auto"
    kernel_init: nn.initializers.Initializer = default_kernel_init
    dtype: Any = None

    @nn.compact
    def __call__(self, x: Array) -> Array:
        """[B, H, W, Cin] -> [B, H - size + 1, W - size + 1, features]."""
        resolve_impl(self.impl)
        kernel = self.param("kernel", self.kernel_init,
                            (self.size, self.size, x.shape[-1], self.features), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros_init(), (self.features,), jnp.float32)
        x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
        return conv_valid(x, kernel, bias, impl=self.impl)
