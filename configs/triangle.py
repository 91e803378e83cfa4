"""k-means + triangle-encoded deep features (Sitaula et al. 2019): the features of a frozen
network's layers, k-means codebooks per layer, triangle codes fused, then k-means with K clusters.
No training step; the fit runs once on the whole data set (jclust.methods.triangle).

  python -m jclust.main --config=configs/triangle.py:npz:/data/features.npz --workdir=runs/tri

Arg (after the first colon): the data source of feature vectors (``npz:PATH``, array
``feature`` [N, D]; ``triangle.layer_widths`` splits D into layers, () = one layer).
"""

import ml_collections

from jclust import config_lib


def get_config(arg: str = ""):
    config = config_lib.base_config()
    config.method = "triangle"
    config.data.source = arg or "npz:features.npz"
    config.triangle = ml_collections.ConfigDict()
    config.triangle.layer_widths = ()  # D_l of each layer of the concatenated features
    config.triangle.codebook_sizes = (256,)  # K_l per layer
    config.triangle.n_init = 3  # k-means++ restarts of each codebook
    config.triangle.eval_n_init = 10  # restarts of the final spherical k-means
    return config_lib.finalize(config)
