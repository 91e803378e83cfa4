"""ResNet-18/34/50 with the ImageNet stem (He et al. 2016, torchvision's / timm's v1.5) in Flax,
with weights read from timm's ``model.safetensors`` files (e.g. ``timm/resnet50.a1_in1k``).

The stem is a 7x7 stride-2 convolution (padding 3) + BatchNorm + ReLU and a 3x3 stride-2 max-pool
(padding 1); every convolution pads explicitly as torch does (k // 2 on each side), never
"SAME", which for stride 2 on an even size pads one row less at the top. A bottleneck block
strides on its 3x3 convolution (v1.5). BatchNorm epsilon is torch's 1e-5. Inputs are normalised
by ImageNet's mean/std, as timm's ResNets were trained. (``models/backbones.py``'s ``ResNet18``
is the CIFAR variant, trained from scratch.)

  model = ResNetImageNet(**RESNETS["resnet50"])
  variables = load_pretrained("timm/resnet50.a1_in1k", model)   # or a model.safetensors path
  features = model.apply(variables, images)   # {"stem", "layer1".."layer4", "pooled", "logits"}
"""

from __future__ import annotations

import os
import re
from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jclust.models.conv import default_kernel_init
from jclust.models.efficientnet import layer_width, normalise, pooled_and_logits
from jclust.models.pth import TORCH_LEAVES, WeightsError, flax_variables

Array = jax.Array

# name -> ResNetImageNet's attributes (torchvision's and timm's depths).
RESNETS = {
    "resnet18": {"block": "basic", "depths": (2, 2, 2, 2)},
    "resnet34": {"block": "basic", "depths": (3, 4, 6, 3)},
    "resnet50": {"block": "bottleneck", "depths": (3, 4, 6, 3)},
}
EXPANSION = {"basic": 1, "bottleneck": 4}
HUB_FILE = "model.safetensors"
HUB_INSTALL = "pip install huggingface_hub (or pip install 'jclust[hub]')"


def _conv(features: int, kernel: int, stride: int, name: str, dtype: Any) -> nn.Conv:
    """A bias-free k x k convolution padded as torch's ``Conv2d(padding=k // 2)``."""
    pad = kernel // 2
    return nn.Conv(features, (kernel, kernel), stride, padding=((pad, pad), (pad, pad)),
                   use_bias=False, dtype=dtype, kernel_init=default_kernel_init, name=name)


def _norm(name: str, dtype: Any) -> nn.BatchNorm:
    """torch's BatchNorm2d (epsilon 1e-5, momentum 0.1), with the running statistics: the
    network is used frozen."""
    return nn.BatchNorm(use_running_average=True, momentum=0.9, epsilon=1e-5, dtype=dtype,
                        name=name)


class Block(nn.Module):
    """A residual block named as timm's ``layer<i>.<j>``: basic (3x3 - 3x3) or bottleneck (1x1 -
    3x3 strided - 1x1 to 4 x width), plus the input, or its ``downsample`` (1x1 strided conv + BN)
    when the stride or the channels change; then ReLU."""
    kind: str
    width: int
    stride: int
    dtype: Any = None

    @nn.compact
    def __call__(self, x: Array) -> Array:
        outputs = self.width * EXPANSION[self.kind]
        if self.kind == "basic":
            y = nn.relu(_norm("bn1", self.dtype)(
                _conv(self.width, 3, self.stride, "conv1", self.dtype)(x)))
            y = _norm("bn2", self.dtype)(_conv(outputs, 3, 1, "conv2", self.dtype)(y))
        else:
            y = nn.relu(_norm("bn1", self.dtype)(_conv(self.width, 1, 1, "conv1", self.dtype)(x)))
            y = nn.relu(_norm("bn2", self.dtype)(
                _conv(self.width, 3, self.stride, "conv2", self.dtype)(y)))
            y = _norm("bn3", self.dtype)(_conv(outputs, 1, 1, "conv3", self.dtype)(y))
        if self.stride != 1 or x.shape[-1] != outputs:
            x = _norm("downsample_1", self.dtype)(
                _conv(outputs, 1, self.stride, "downsample_0", self.dtype)(x))
        return nn.relu(y + x)


class ResNetImageNet(nn.Module):
    """uint8 images [B, H, W, C] (C 1 or 3; or float in [0, 1]) -> a dict of named features.

    Submodules are named after timm's (``conv1``, ``bn1``, ``layer<i>_<j>``, ``fc``) so that
    :func:`variables_from_state_dict` maps names alone. Always evaluation mode (running
    BatchNorm statistics).

    Attributes:
      block: "basic" (ResNet-18/34) or "bottleneck" (ResNet-50).
      depths: blocks per stage.
      widths: each stage's width (a bottleneck stage outputs 4x); smaller ones for tests.
      stem_width: channels of the 7x7 stem.
      num_classes: classifier outputs (0: no ``fc``, no ``"logits"``).
      input_norm: see :func:`jclust.models.efficientnet.normalise` ("imagenet": timm's).
      dtype: computation dtype (None: the parameters'); parameters stay float32.
    """
    block: str = "bottleneck"
    depths: Sequence[int] = (3, 4, 6, 3)
    widths: Sequence[int] = (64, 128, 256, 512)
    stem_width: int = 64
    num_classes: int = 1000
    input_norm: str = "imagenet"
    dtype: Any = None

    @nn.compact
    def __call__(self, images: Array, train: bool = False) -> dict[str, Array]:
        """Returns ``stem`` [B, H/4, W/4, stem_width] (after the max-pool), ``layer<i>`` each
        stage's output [B, H/s, W/s, widths[i-1] * expansion] (s = 4, 8, 16, 32), ``pooled``
        the last one's mean over positions and ``logits`` [B, num_classes] (sizes as torch's:
        floor((n + 2 * pad - k) / stride) + 1 at each stride)."""
        del train  # always the running statistics: the network is used frozen
        x = normalise(images, self.input_norm)
        x = nn.relu(_norm("bn1", self.dtype)(_conv(self.stem_width, 7, 2, "conv1", self.dtype)(x)))
        x = nn.max_pool(x, (3, 3), (2, 2), padding=((1, 1), (1, 1)))  # pads with -inf, as torch
        features = {"stem": x}
        for i, (depth, width) in enumerate(zip(self.depths, self.widths), start=1):
            for j in range(depth):
                stride = 2 if i > 1 and j == 0 else 1
                x = Block(self.block, width, stride, self.dtype, name=f"layer{i}_{j}")(x)
            features[f"layer{i}"] = x
        return pooled_and_logits(features, x, self.num_classes, self.dtype)


def feature_width(model: ResNetImageNet, layer: str) -> int:
    """Channels of ``model``'s feature ``layer``; a ValueError names the valid ones."""
    expansion = EXPANSION[model.block]
    widths = {"stem": model.stem_width,
              **{f"layer{i}": w * expansion for i, w in enumerate(model.widths, start=1)},
              "pooled": model.widths[-1] * expansion}
    return layer_width(widths, model.num_classes, layer, "ResNet")


def torch_key(collection: str, path: Sequence[str], ndim: int) -> str:
    """timm's name of a Flax leaf: ("batch_stats", ("layer2_0", "downsample_1", "var"), 1) ->
    "layer2.0.downsample.1.running_var"."""
    *modules, leaf = path
    parts = [re.sub(r"^(layer\d+|downsample)_(\d+)$", r"\1.\2", m) for m in modules]
    return ".".join(parts) + "." + TORCH_LEAVES[(collection, leaf, ndim)][0]


def variables_from_state_dict(state_dict: Mapping[str, np.ndarray], model: ResNetImageNet,
                              source: str = "the state dict") -> dict:
    """timm's (or torchvision's) ResNet state dict -> ``model``'s ``{"params", "batch_stats"}``
    (float32). ``num_batches_tracked`` entries are ignored; every other key must be the model's,
    with its shape.

    Raises:
      WeightsError: a missing, unexpected or mis-shaped key, named (with both shapes) and
        prefixed by ``source``.
    """
    abstract = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)))
    return flax_variables(dict(state_dict), abstract, torch_key, source=source, network="ResNet")


def read_safetensors(path: str) -> dict[str, np.ndarray]:
    """``{name: array}`` of a ``.safetensors`` file (``safetensors.numpy.load_file``).

    Raises:
      WeightsError: no such file, safetensors not installed, a truncated or corrupt file.
    """
    if not os.path.isfile(path):
        raise WeightsError(f"no such weights file: {path}")
    try:
        from safetensors.numpy import load_file  # pylint: disable=import-outside-toplevel
    except ImportError:
        raise WeightsError(f"{path}: reading .safetensors files needs safetensors: pip install "
                           f"safetensors (or pip install 'jclust[resnet]')") from None
    try:
        return load_file(path)
    except Exception as e:  # safetensors' SafetensorError (a truncated header/data), OSError
        raise WeightsError(f"{path}: truncated or corrupt safetensors file ({type(e).__name__}: "
                           f"{e}); download or save it again") from None


def is_hub_name(value: str) -> bool:
    """A Hugging Face hub repository ("timm/resnet50.a1_in1k", or with timm's "hf-hub:" prefix)
    rather than a file: not an existing path, one "/" between two names, no file extension."""
    value = value.removeprefix("hf-hub:")
    return (not os.path.exists(value)
            and re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", value) is not None
            and not value.endswith((".safetensors", ".pth", ".pt", ".bin")))


def locate(weights: str) -> str:
    """A weights value -> a local file: a path as it is, a hub name downloaded (its
    ``model.safetensors``, through huggingface_hub's cache; imported only here).

    Raises:
      WeightsError: a hub name without huggingface_hub installed, or a failed download (offline,
        no such repository); both name the fixes.
    """
    weights = os.fspath(weights)
    if not is_hub_name(weights):
        return weights
    name = weights.removeprefix("hf-hub:")
    try:
        from huggingface_hub import hf_hub_download  # pylint: disable=import-outside-toplevel
    except ImportError:
        raise WeightsError(f"{weights!r} is not a file, so it was taken for a Hugging Face hub "
                           f"name, which needs huggingface_hub: {HUB_INSTALL}; or give the path "
                           f"of a downloaded {HUB_FILE}") from None
    try:
        return hf_hub_download(name, HUB_FILE)
    except Exception as e:  # offline, no such repository, no such file in it
        raise WeightsError(f"could not download {HUB_FILE} of {name!r} from the Hugging Face hub "
                           f"({type(e).__name__}: {e}); when offline, give the path of a "
                           f"downloaded {HUB_FILE}") from None


def default_weights(name: str = "resnet50") -> str:
    """There are none offline.

    Raises:
      WeightsError: always, naming the two ways to give weights.
    """
    raise WeightsError(f"no default {name} weights (none ship with jclust): pass "
                       f"config.data.backbone.weights=PATH of a timm {HUB_FILE}, or a hub name "
                       f"such as timm/{name}.a1_in1k ({HUB_INSTALL}, and network access)")


def load_pretrained(path_or_name: str, model: ResNetImageNet | None = None) -> dict:
    """``model``'s (default: ResNet-50's) variables from timm's ``model.safetensors``: a path,
    or a hub name such as ``timm/resnet50.a1_in1k`` (downloaded, see :func:`locate`).

    Raises:
      WeightsError: no such file, a hub name that cannot be fetched, an unreadable file, or one
        that does not fit ``model``.
    """
    path = locate(path_or_name)
    return variables_from_state_dict(read_safetensors(path), model or ResNetImageNet(), path)
