"""k-means + triangle-encoded deep features (Sitaula et al. 2019): the features of two layers of
a frozen ImageNet network, a k-means codebook per layer, the layers' triangle codes fused, then
k-means with K clusters. No training step: the fit runs once on the whole data set
(jclust.methods.triangle).

  python -m jclust.main --config=configs/triangle.py:folder:/data/photos --workdir=runs/tri \
      --config.num_clusters=7
  python -m jclust.main --config=configs/triangle.py:npz:/data/features.npz --workdir=runs/tri

Arg (after the first colon): the data source. Images (``folder:``, ``fashion_mnist``, ...) go
through EfficientNet-Lite0 with its ImageNet weights (``data.backbone``): the pooled outputs of
block group 5 (112-d, 14x14 at 224) and of the head (1280-d), the mid-level and the last layer,
kept as they are (``normalize_layers=False``: the method standardises each layer itself).
Codebooks of 64 and 256 centroids: smaller than each layer, as the paper's "deep features of
smaller size" asks. ``npz:`` feature vectors skip the network (``triangle.layer_widths`` then
splits them into layers; () = one layer). Without an argument: Fashion-MNIST (at 96x96, as every
small-image source: ``config_lib.backbone_image_size``).
"""

import ml_collections

from jclust import config_lib


def get_config(arg: str = ""):
    config = config_lib.base_config()
    config.method = "triangle"
    config.data.source = arg or "fashion_mnist"
    config.triangle = ml_collections.ConfigDict()
    config.triangle.layer_widths = ()  # () = those of data.backbone.layers (or one layer)
    config.triangle.codebook_sizes = (64, 256)  # K_l per layer
    config.triangle.n_init = 3  # k-means++ restarts of each codebook
    config.triangle.eval_n_init = 10  # restarts of the final spherical k-means
    if config.data.source.startswith("npz:"):
        config.triangle.codebook_sizes = (256,)
    else:
        config.data.backbone.name = "efficientnet_lite0"
        config.data.backbone.layers = ("group5", "pooled")
        config.data.backbone.normalize_layers = False
        config.data.backbone.image_size = config_lib.backbone_image_size(config.data.source)
    return config_lib.finalize(config)
