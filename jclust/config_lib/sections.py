"""The config sections and data variants that several method configs share."""

from __future__ import annotations

import ml_collections


def small_cnn_model(pool_first: bool = False) -> ml_collections.ConfigDict:
    """The ``model`` section of the CNN methods: jclust's small CNN for 28x28 inputs.

    ``pool_first`` also pools after the first conv (28 -> 14 -> 7 -> 3): ~4x cheaper convs.
    """
    model = ml_collections.ConfigDict()
    model.name = "small_cnn"
    model.widths = (32, 64, 128)
    model.dense = 128
    model.pool_first = pool_first
    model.global_pool = False  # True: average-pool the last map (inputs of any size)
    model.output_relu = True  # False: the representation is the dense layer before its ReLU
    model.conv_impl = "auto"  # im2col on CPU, XLA's convolution on GPU/TPU
    # "bfloat16": mixed precision (the backbone computes in bf16; parameters, features and all
    # clustering stay float32). Worth it on GPU/TPU; XLA:CPU has no fast bf16 convolutions.
    model.compute_dtype = "float32"
    return model


def optim_section(**values) -> ml_collections.ConfigDict:
    """The ``optim`` section of the CNN methods, read by :func:`jclust.optim.make`: one skeleton,
    with ``values`` (each a key of it) in place of its defaults.

    Keys: ``optimizer`` ("sgd" | "adam"), ``epochs`` (the training phase's length; JULE's bound,
    as it stops once its clusters reach ``num_clusters``), ``learning_rate``, ``momentum`` (SGD),
    ``weight_decay`` (decoupled), ``lr_schedule`` ("constant" | "cosine" | "inverse" | "step"),
    ``lr_decay_factor`` and ``lr_decay_fraction`` (the step schedule's drop and where it falls),
    ``warmup_steps`` (a linear warm-up of the rate over that many steps, 0: none).
    """
    section = ml_collections.ConfigDict({
        "optimizer": "sgd", "epochs": 1, "learning_rate": 0.05, "momentum": 0.0,
        "weight_decay": 0.0, "lr_schedule": "constant", "lr_decay_factor": 1.0,
        "lr_decay_fraction": 1.0, "warmup_steps": 0})
    unknown = set(values) - set(section)
    if unknown:
        raise ValueError(f"not optim keys: {', '.join(sorted(unknown))}")
    section.update(values)
    return section


def jule_cnn_model() -> ml_collections.ConfigDict:
    """The ``model`` section of the JULE reference's MNIST network (:class:`jclust.models.JuleCNN`).

    [conv5x5-50, BN, ReLU, maxpool 2] -> [conv5x5-50, BN, ReLU] -> flatten (3,200 at 28x28).
    """
    model = ml_collections.ConfigDict()
    model.name = "jule_cnn"
    model.widths = (50, 50)
    model.kernel_size = 5
    model.conv_impl = "auto"  # im2col on CPU, XLA's convolution on GPU/TPU
    model.compute_dtype = "float32"
    return model


def use_digits(config: ml_collections.ConfigDict) -> None:
    """Switches a config to scikit-learn's 8x8 digits (the ``:digits`` variants: 1,797 images
    shipped with scikit-learn, a run in a minute), with a small CNN's widths for 8x8 inputs."""
    config.data.source = "digits"
    config.data.image_shape = (8, 8, 1)
    if "widths" in config.get("model", {}):
        config.model.widths = (32, 64)


# Sources of small images (28x28 or 8x8): upsampling them to Lite0's 224 adds no detail. On 5,000
# Fashion-MNIST images Lite0's pooled head at 96x96 clusters about as well (k-means, 5 seeds:
# ACC 0.689 +- 0.001 against 0.693 +- 0.049 at 224; NMI 0.610 against 0.663) for 1/5.4 of the
# multiply-adds (BENCHMARKS.md, "Pretrained features on Fashion-MNIST").
SMALL_IMAGE_SOURCES = ("fashion_mnist", "digits", "idx:")
SMALL_IMAGE_BACKBONE_SIZE = 96


def backbone_image_size(source: str) -> int:
    """The pretrained backbone's input size for ``source``: 96 for the small-image sources
    (Fashion-MNIST, digits, IDX files), else 224, the ImageNet networks' resolution."""
    if source.startswith(SMALL_IMAGE_SOURCES):
        return SMALL_IMAGE_BACKBONE_SIZE
    return 224


def use_cifar10(config: ml_collections.ConfigDict) -> None:
    """Switches a CNN method's config to CIFAR-10 on an accelerator (the ``:cifar10`` variants).

    TFDS ``cifar10`` (train + test merged, 60,000 32x32 colour images), ResNet-18 with the CIFAR
    stem (BatchNorm statistics in the model state, synchronised over the data-parallel batch),
    batch 256.
    """
    config.data.source = "tfds:cifar10"
    config.data.image_shape = (32, 32, 3)
    config.model = ml_collections.ConfigDict()
    config.model.name = "resnet18"
    config.model.stage_widths = (64, 128, 256, 512)
    config.model.compute_dtype = "float32"  # "bfloat16" for mixed precision on GPU/TPU
    config.batch_size = 256
    config.eval_batch_size = 1024
    config.log_every_steps = 100
    config.checkpoint_every_steps = 2000
