"""DeepCluster v1 on Fashion-MNIST (all 70,000 images), sized for 2 CPU cores.

  python -m jclust.main --config=configs/deepcluster.py --workdir=runs/deepcluster
  python -m jclust.main --config=configs/deepcluster.py:digits --workdir=runs/deepcluster_digits

Args (after the colon): "" (Fashion-MNIST), "digits" (scikit-learn's 8x8 digits, minutes) or
"cifar10" (TFDS cifar10, ResNet-18, Sobel input; sized for a GPU/TPU).
"""

from jclust import config_lib
import ml_collections


def get_config(arg: str = ""):
    config = config_lib.base_config()
    config.method = "deepcluster"

    # Pooling after the first conv too (28 -> 14 -> 7 -> 3) makes the convs ~4x cheaper, but on
    # Fashion-MNIST it cost ~0.06 ACC (docs/experiments/deepcluster_gpu.md).
    config.model = config_lib.small_cnn_model(pool_first=False)

    config.optim = config_lib.optim_section()
    # On Fashion-MNIST, 8 and 20 epochs ended alike (ACC ~0.66, BENCHMARKS.md) and ACC after
    # the second epoch moves up and down by +-0.05 between reclusterings; 5 epochs (with the
    # feature pass before each) keep a run within 30 min on 2 CPU cores.
    config.optim.epochs = 5
    config.optim.learning_rate = 0.05  # DeepCluster's SGD (backbone with momentum, head without)
    config.optim.momentum = 0.9
    config.optim.weight_decay = 1e-5

    config.deepcluster = ml_collections.ConfigDict()
    config.deepcluster.train_clusters = 100  # over-clustering: 10x the classes
    config.deepcluster.pca_dim = 32
    config.deepcluster.kmeans_iters = 20
    config.deepcluster.recluster_epochs = 1
    config.deepcluster.sampling = "uniform"  # uniform | reweight | none
    config.deepcluster.head_init_std = 0.01
    config.deepcluster.collapse_fraction = 0.5  # warn when one pseudo-class holds this much data
    config.deepcluster.eval_n_init = 10  # restarts of the K = num_clusters evaluation k-means
    config.deepcluster.crop_scale = (0.5, 1.0)  # random resized crop area fraction
    config.deepcluster.flip = True
    config.deepcluster.rotation_degrees = 0.0
    config.deepcluster.sobel = False  # grayscale + Sobel gradients before the network (colour data)

    if arg == "digits":
        config_lib.use_digits(config)
        config.deepcluster.flip = False  # a mirrored digit is not the same digit
        config.model.widths = (32, 64)
        config.model.pool_first = False
        config.deepcluster.train_clusters = 50
        config.deepcluster.pca_dim = 16
        config.optim.epochs = 30
        # 28 steps per epoch: reclustering every epoch leaves the network too few steps to fit
        # the pseudo-labels (the loss stays at ln K, then collapses).
        config.deepcluster.recluster_epochs = 5
        config.batch_size = 64
        config.log_every_steps = 50
        config.pictures.every_evals = 5
    elif arg == "cifar10":
        config_lib.use_cifar10(config)
        config.optim.epochs = 100
        config.deepcluster.sobel = True  # as DeepCluster does on colour images
        config.deepcluster.pca_dim = 128
        config.deepcluster.crop_scale = (0.2, 1.0)
        config.deepcluster.train_clusters = 100
    elif arg:
        raise config_lib.ConfigError(f"unknown config argument {arg!r}; use '', 'digits' or 'cifar10'")
    return config_lib.finalize(config)
