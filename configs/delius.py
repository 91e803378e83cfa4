"""DELIUS recipe: DEC on features of a frozen encoder, for image collections such as paintings.

Either pre-computed features in an ``.npz`` (array ``feature`` [N, D], optional ``label``/``name``):

  python -m jclust.main --config=configs/delius.py:npz:/data/art_features.npz --workdir=runs/art

or a folder of images encoded by a trained jclust run's encoder (the images are resized to the
shape that encoder was trained on):

  python -m jclust.main --config=configs/delius.py:folder:/data/paintings \
      --config.data.encoder_workdir=runs/dec --workdir=runs/paintings

Arg (after the first colon): the data source. Defaults follow Castellano & Vessio's notebook:
autoencoder D-500-500-2000-10 trained 200 epochs with Adam, then DEC with Adam, update interval
140, at most 8000 steps, tol 0.001.
"""

from jclust import config_lib


def get_config(arg: str = ""):
    config = config_lib.load_sibling(__file__, "dec.py")
    config.method = "dec"
    config.data.source = arg or "npz:features.npz"
    config.num_clusters = 10
    config.pretrain.epochs = 200
    config.pretrain.optimizer = "adam"
    config.pretrain.learning_rate = 1e-3
    config.dec.optimizer = "adam"
    config.dec.learning_rate = 1e-3
    config.dec.update_interval = 140
    config.dec.max_steps = 8000
    return config_lib.finalize(config)
