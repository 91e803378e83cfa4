"""Neural network models (flax.linen). Models know nothing about clustering methods."""

import flax.linen as nn

from jclust.models.autoencoder import MLPAutoencoder, dec_kernel_init, flatten_inputs
from jclust.models.backbones import Backbone, ResNet18, make_backbone, sobel_filter
from jclust.models.cnn import JuleCNN, SmallCNN, max_pool_2x2
from jclust.models.conv import (Conv3x3, ConvValid, conv3x3, conv_valid, drawn_as_matrix, im2col3x3,
                                im2col_valid, resolve_impl)
from jclust.models.efficientnet import EfficientNetLite, load_pretrained
from jclust.models.neck import MixtureHead, NonLinearNeck, ProjectionHead
from jclust.models.pth import WeightsError, read_state_dict

_MODELS = {
    "mlp_autoencoder": MLPAutoencoder,
    "small_cnn": SmallCNN,
}


def get_model(name: str, **kwargs) -> nn.Module:
    """Builds a model by name, e.g. ``get_model("small_cnn", num_outputs=10)``.

    Args:
      name: one of ``"mlp_autoencoder"``, ``"small_cnn"``.
      **kwargs: the model's fields (e.g. ``output_dim=784`` for the autoencoder).

    Raises:
      ValueError: for an unknown name; the message lists the valid names.
    """
    try:
        cls = _MODELS[name]
    except KeyError:
        raise ValueError(
            f"unknown model {name!r}; valid names: {', '.join(sorted(_MODELS))}"
        ) from None
    return cls(**kwargs)


__all__ = [
    "Backbone",
    "ResNet18",
    "make_backbone",
    "sobel_filter",
    "Conv3x3",
    "ConvValid",
    "EfficientNetLite",
    "JuleCNN",
    "MLPAutoencoder",
    "MixtureHead",
    "NonLinearNeck",
    "SmallCNN",
    "conv3x3",
    "conv_valid",
    "dec_kernel_init",
    "drawn_as_matrix",
    "flatten_inputs",
    "get_model",
    "im2col3x3",
    "im2col_valid",
    "load_pretrained",
    "max_pool_2x2",
    "read_state_dict",
    "resolve_impl",
    "WeightsError",
]
