"""SwAV on Fashion-MNIST (all 70,000 images), sized for 2 CPU cores.

  python -m jclust.main --config=configs/swav.py --workdir=runs/swav
  python -m jclust.main --config=configs/swav.py:digits --workdir=runs/swav_digits

Args (after the colon): "" (Fashion-MNIST: 8 epochs on the 2 large crops, ~12 min on 2 cores),
"digits" (scikit-learn's 8x8 digits with multi-crop, a minute) or "cifar10" (TFDS cifar10,
ResNet-18, 2x32 + 6x18 crops, 3000 prototypes and a queue; sized for a GPU/TPU).
Reference defaults (ImageNet, facebookresearch/swav): 3000 prototypes, 128-d features, temperature
0.1, epsilon 0.05, 3 Sinkhorn iterations, 2x224 + 6x96 crops, prototypes frozen for the first
epoch, a queue of 3840 from epoch 15 at batch 256; scaled down here to 70,000 small images.
"""

from jclust import config_lib
import ml_collections


def get_config(arg: str = ""):
    config = config_lib.base_config()
    config.method = "swav"

    # pool_first keeps the step affordable on 2 cores (as for DeepCluster-v2). Fashion-MNIST
    # trains on the 2 large crops only, through the flattening network: with 2 x 16^2 small crops
    # and global pooling (the multi-crop network) seed 0 ended at 0.572, below its untrained
    # network's 0.628; without them it reached 0.70 by epoch 2 (BENCHMARKS.md). Multi-crop needs
    # global_pool=True (one network for two resolutions); the digits and CIFAR-10 configs use it.
    config.model = config_lib.small_cnn_model(pool_first=True)
    config.model.global_pool = False

    config.optim = config_lib.optim_section()
    config.optim.epochs = 8
    config.optim.learning_rate = 0.05
    config.optim.lr_schedule = "cosine"
    config.optim.momentum = 0.9
    config.optim.weight_decay = 1e-5

    config.swav = ml_collections.ConfigDict()
    # K = 10x the classes, as the over-clustering of DeepCluster here; evaluation then uses
    # k-means with K = num_clusters on the features ("auto" -> "kmeans").
    config.swav.prototypes = 100
    config.swav.feature_dim = 64
    config.swav.projection_hidden = 128
    # BatchNorm in the projection head, as the reference: without it a fresh small CNN gives
    # nearly parallel z, uniform codes and a collapse at loss = ln K (measured on digits).
    config.swav.projection_batch_norm = True
    config.swav.temperature = 0.1
    config.swav.epsilon = 0.05
    config.swav.sinkhorn_iters = 3
    # Same codes as the reference's multiplicative updates, but finite for any epsilon.
    config.swav.sinkhorn_log_domain = True
    config.swav.hard_codes = False
    # No prototype update for this long (steps or epochs: config_lib.steps), as the reference's
    # 4096-batch runs.
    config.swav.freeze_prototypes_steps = -1
    config.swav.freeze_prototypes_epochs = 1.0
    # Batch 256 against 100 prototypes needs no queue (the reference uses one when the batch is
    # much smaller than K); 0 turns it off.
    config.swav.queue_length = 0
    config.swav.queue_start_epoch = 2
    config.swav.num_small_crops = 0
    config.swav.small_crop_size = (16, 16)  # when num_small_crops > 0
    # At 28x28 the reference's ImageNet scales (0.14-1 / 0.05-0.14) leave little of an item;
    # crops too small to predict from keep the loss at ln K (seen on digits).
    config.swav.large_crop_scale = (0.4, 1.0)
    config.swav.small_crop_scale = (0.2, 0.5)
    config.swav.flip = True
    # "prototypes" (needs K = num_clusters) | "kmeans" (on z) | "backbone" (DeepCluster v1's rule
    # on the backbone features) | "auto" (prototypes if K = num_clusters, else kmeans). On
    # Fashion-MNIST, k-means on z never beat the untrained network (0.411 at the end of seed 0);
    # the same recipe's backbone features under DeepCluster v1's rule gave 0.572 (BENCHMARKS.md).
    config.swav.assignment = "backbone"
    config.swav.eval_pca_dim = 32  # "backbone": PCA-whitening dimension
    config.swav.eval_n_init = 10
    config.swav.collapse_prototype_fraction = 0.1
    config.swav.collapse_patience_steps = 200
    config.eval_every_epochs = 2.0  # each costs a feature pass, ~30 s

    # Every epoch lasts at least 10,000 examples: a few thousand images get several passes
    # an epoch, about the steps the schedules were tuned with (Fashion-MNIST's 70,000 are
    # unchanged). Issue 30's panel, ACC mean of 2 seeds (BENCHMARKS.md): fm3k 0.585 ->
    # 0.612, digits28 0.870 -> 0.930.
    config.min_epoch_examples = 10_000
    if arg == "digits":
        config.min_epoch_examples = 0  # 8 x 8 digits: epochs of their own
        config_lib.use_digits(config)
        config.model.pool_first = False
        config.batch_size = 64
        config.optim.epochs = 20
        config.swav.prototypes = 30
        config.swav.assignment = "auto"
        config.model.global_pool = True
        config.swav.num_small_crops = 2
        config.swav.small_crop_size = (6, 6)
        # Measured (one seed, 20 epochs): these scales 0.746; no small crops and (0.5, 1) 0.676;
        # the Fashion-MNIST scales below (0.3-1 / 0.1-0.4) destroy 8x8 digits (loss at ln K).
        config.swav.large_crop_scale = (0.5, 1.0)
        config.swav.small_crop_scale = (0.3, 0.7)
        config.swav.flip = False  # a mirrored digit is not the same digit
        config.swav.queue_length = 256  # batch 64 against 30 prototypes: the queue helps here
        config.swav.queue_start_epoch = 5
        config.swav.collapse_patience_steps = 100
        config.eval_every_epochs = 5.0
        config.log_every_steps = 100
        config.pictures.every_evals = 5
    elif arg == "cifar10":
        config_lib.use_cifar10(config)
        config.optim.epochs = 500
        config.optim.learning_rate = 0.3
        config.swav.prototypes = 3000
        config.swav.feature_dim = 128
        config.swav.projection_hidden = 2048
        config.swav.queue_length = 3840
        config.swav.queue_start_epoch = 50
        config.swav.freeze_prototypes_epochs = 2.0  # as solo-learn
        config.swav.num_small_crops = 6
        config.swav.small_crop_size = (18, 18)  # solo-learn's CIFAR multi-crop: 2x32 + 6x18
        config.swav.large_crop_scale = (0.2, 1.0)
        config.swav.eval_pca_dim = 128  # as DeepCluster's CIFAR-10 rule
        config.swav.small_crop_scale = (0.08, 0.5)
        config.eval_every_epochs = 10.0
    elif arg:
        raise config_lib.ConfigError(f"unknown config argument {arg!r}; use '', 'digits' or 'cifar10'")
    return config_lib.finalize(config)
