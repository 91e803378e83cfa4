"""DEC on Fashion-MNIST (all 70,000 images), sized for 2 CPU cores.

  python -m jclust.main --config=configs/dec.py --workdir=runs/dec
  python -m jclust.main --config=configs/dec.py:digits --workdir=runs/dec_digits

Args (after the colon):
  ""        Fashion-MNIST (local IDX files, else TFDS): the benchmarked recipe and the README's
            main job, 7-14 min on 2 cores.
  "digits"  scikit-learn's 8x8 digits, a two-minute run.
  "tpu"     the DEC-keras protocol (300 epochs of pretraining, up to 20,000 DEC steps) on TFDS
            Fashion-MNIST, sized for an accelerator (about an hour on 2 CPU cores); used by
            colab/tpu.ipynb.
"""

from jclust import config_lib
import ml_collections


def dec_sections(config: ml_collections.ConfigDict) -> None:
    """Adds the model, pretrain, dec and kmeans sections shared by DEC, IDEC and DELIUS."""
    config.model = ml_collections.ConfigDict()
    config.model.name = "mlp_autoencoder"
    config.model.hidden = (500, 500, 2000)
    config.model.embed_dim = 10

    config.pretrain = ml_collections.ConfigDict()
    # DEC-keras's optimiser for MNIST/Fashion-MNIST (SGD, momentum 0.9) at half its rate of 1, 60
    # epochs instead of its 300. Rate 1 sits at the edge of stability: on a 10,000-image subset of
    # Fashion-MNIST (seed 0) the autoencoder died at step 400 (one code for every image; ACC 0.302).
    # Rate 0.5, 3 seeds (BENCHMARKS.md, issue 30's panel): Fashion-MNIST 70k DEC 0.631 -> 0.635,
    # IDEC 0.626 -> 0.624; fm10k DEC 0.506 -> 0.651. Tried before on Fashion-MNIST
    # (docs/experiments/dec.md): 100 constant epochs, no gain; 150 epochs with a cosine decay,
    # mean ACC 0.563 over 3 seeds against 0.587 (the k-means initialisation, not the autoencoder,
    # decides most of the spread).
    config.pretrain.epochs = 60
    config.pretrain.optimizer = "sgd"
    config.pretrain.learning_rate = 0.5
    config.pretrain.momentum = 0.9     # SGD only
    config.pretrain.lr_schedule = "constant"  # constant | cosine (to 0 at the end of pretraining)
    config.pretrain.augment_shift = 0  # random translation (pixels) of the training images
    config.pretrain.input_dropout = 0.0  # denoising: fraction of input features zeroed
    # SGD's stable rate falls as the inputs' power E||x||^2 grows (docs/experiments/
    # dec_input_power.py, 500 steps of this recipe, seed 0: Fashion-MNIST, E||x||^2 = 163, trains
    # at rate 1 and 2 and diverges at 4; colour clip art (the panel's oc7), 1,683, diverges at 1
    # and trains at 0.3). Each pretraining step is scaled by min(1, this / the batch's mean
    # ||x||^2) (jclust.optim.input_power_scale): Fashion-MNIST and digits (~160) train at the rate
    # as given, bit for bit; oc7 at ~0.24 of it (rate x cap = 200 at rate 0.5, as 200 was at rate
    # 1, so oc7's effective rate is unchanged). SGD only; 0 turns it off.
    config.pretrain.max_input_power = 400.0

    config.dec = ml_collections.ConfigDict()
    config.dec.alpha = 1.0            # Student-t degrees of freedom
    config.dec.gamma = 0.1            # IDEC: weight of the KL term (reconstruction weight is 1)
    config.dec.update_interval = 140  # steps between target-distribution updates (T)
    config.dec.tol = 0.001            # stop when fewer than this fraction of labels change
    # DEC-keras: 20000. On Fashion-MNIST ACC/NMI stop moving after ~3000 steps while the label
    # change stays above tol (0.1-0.5 % per update); 8000 keeps the main job within 15 min.
    config.dec.max_steps = 8000
    config.dec.optimizer = "sgd"
    config.dec.learning_rate = 0.01
    config.dec.momentum = 0.9          # SGD only
    config.dec.augment_shift = 0

    config.kmeans = ml_collections.ConfigDict()
    config.kmeans.n_init = 20
    config.kmeans.max_iter = 300
    # Where the centroids come from (dec.initial_centroids): "embedding" (DEC: k-means on the
    # embedding), "whitened" (k-means on the PCA-whitened, L2-normalised embedding) or "spectral"
    # (spectral clustering of a k-NN graph of that whitened embedding, N2D's manifold step); the
    # centroids are the clusters' means in the embedding, where the Student-t kernel works.
    # Fashion-MNIST, seeds 0/1/2, DEC (BENCHMARKS.md): embedding 0.576/0.575/0.611, whitened
    # 0.583/0.580/0.649, spectral 0.630/0.637/0.627.
    config.kmeans.space = "spectral"
    config.kmeans.num_neighbours = 10  # of the k-NN graph ("spectral" only; at most N - 1)

    # An evaluation comes every update_interval (140) steps, ~5 s of training on 2 cores; the
    # pictures take ~1 s on 70,000 images, so they are redrawn every 5th evaluation (and at the end).
    config.pictures.every_evals = 5


def get_config(arg: str = ""):
    config = config_lib.base_config()
    config.method = "dec"
    dec_sections(config)
    # Every epoch lasts at least 10,000 examples: a few thousand images get several passes
    # an epoch, about the steps the schedules were tuned with (Fashion-MNIST's 70,000 are
    # unchanged). Issue 30's panel, ACC mean of 2 seeds (BENCHMARKS.md): fm3k 0.566 ->
    # 0.583, digits28 0.718 -> 0.781 (IDEC, one seed: 0.491 -> 0.572, 0.702 -> 0.786).
    config.min_epoch_examples = 10_000
    if arg == "digits":
        config.min_epoch_examples = 0  # 8 x 8 digits: epochs of their own
        config_lib.use_digits(config)
        config.pretrain.epochs = 300
        # Rate 0.5 (the default's) did not help here: DEC 0.883 +- 0.047 -> 0.859 +- 0.073, IDEC
        # 0.866 +- 0.054 -> 0.846 +- 0.043 (3 seeds, BENCHMARKS.md); it keeps DEC-keras's rate 1.
        config.pretrain.learning_rate = 1.0
        config.pretrain.max_input_power = 200.0
        config.dec.update_interval = 30
        config.dec.max_steps = 3000
        # On 1,797 digits the spectral initialisation did worse (3 seeds, DEC 0.806 +- 0.041
        # against 0.883 +- 0.047; BENCHMARKS.md).
        config.kmeans.space = "whitened"
        config.pictures.every_evals = 1
        config.log_every_steps = 100
    elif arg == "tpu":
        config.data.source = "tfds:fashion_mnist"  # train + test merged, 70,000 images
        config.pretrain.epochs = 300
        config.pretrain.learning_rate = 1.0  # DEC-keras's own rate
        config.pretrain.max_input_power = 200.0
        config.pretrain.lr_schedule = "constant"
        config.dec.max_steps = 20000
        config.log_every_steps = 1000
        config.checkpoint_every_steps = 5000
    elif arg:
        raise config_lib.ConfigError(f"unknown config argument {arg!r}; use '', 'digits' or 'tpu'")
    return config_lib.finalize(config)
