"""Neural mixture-model EM clustering on Fashion-MNIST (all 70,000 images), sized for 2 CPU cores.

  python -m jclust.main --config=configs/nmm.py --workdir=runs/nmm          # EM + consistency
  python -m jclust.main --config=configs/nmm.py:em --workdir=runs/nmm_em    # EM alone
  python -m jclust.main --config=configs/nmm.py:digits --workdir=runs/nmm_digits

Args (after the colon, comma-separated): "digits" (scikit-learn's 8x8 digits, a minute) and/or
"em" (EM alone: no consistency terms). No public code exists; every reconstruction choice of
``jclust/methods/nmm.py`` (METHODS.md §6) is a key of ``config.nmm``.
"""

from jclust import config_lib
import ml_collections


def get_config(arg: str = ""):
    args = set(a for a in arg.split(",") if a)
    unknown = args - {"digits", "em"}
    if unknown:
        raise config_lib.ConfigError(f"unknown config argument(s) {sorted(unknown)}; use 'digits' "
                                     "and/or 'em', comma-separated")
    config = config_lib.base_config()
    config.method = "nmm"
    config.model = config_lib.small_cnn_model(pool_first=True)

    config.optim = config_lib.optim_section()
    # Fashion-MNIST, seed 0, EM + consistency: 6 epochs, ACC 0.535 at epoch 4 and at the end; 10
    # epochs (the cosine decay stretched), 0.652 at epoch 4 and 0.680 at the end, 19 min on 2
    # cores. With 5 heads, 3 seeds: 10 epochs 0.644 +- 0.027, 12 epochs 0.655 +- 0.017 in 24 min
    # a run (BENCHMARKS.md).
    config.optim.epochs = 12
    config.optim.optimizer = "adam"
    config.optim.learning_rate = 1e-3
    config.optim.lr_schedule = "cosine"
    config.optim.momentum = 0.0
    config.optim.weight_decay = 0.0

    config.nmm = ml_collections.ConfigDict()
    # The density transformation: per-neuron batch standardisation, a sigmoid, a shared constant.
    config.nmm.normalize = "batch"  # "batch" | "none" (the degenerate baseline)
    # s in sigmoid(s o~): with unit-variance o~ the sigmoid barely separates the components
    # (posteriors <= ~0.2 at K = 10 for s = 1); a larger s makes them decisive. Digits, one seed,
    # 30 epochs, EM + consistency: s = 1: 0.254, 5: 0.356, 15: 0.453, 30: 0.544; with em_weight
    # 0.2 (instead of 1): s = 15: 0.530, 20: 0.487, 30: 0.529.
    config.nmm.sigmoid_scale = 15.0
    config.nmm.log_normalizer = 0.0  # log Z; cancels in the responsibilities
    config.nmm.mixture_weights = "fixed"  # "fixed" (1/K) | "estimated" (moving average)
    config.nmm.weights_momentum = 0.99
    config.nmm.head_hidden = 0
    # SCAN's heads: H mixtures trained together, the one of lowest running loss assigns.
    # Fashion-MNIST seed 1, EM + consistency: 1 head 0.547; 5 heads 0.675 (every head 0.618-0.675,
    # the lowest-loss head the best).
    config.nmm.num_heads = 5
    config.nmm.head_loss_momentum = 0.99
    config.nmm.em_weight = 0.2  # 1 with s = 15: 0.453 on digits (above)
    # Consistency fusion: two augmented views, and a mined neighbour in a frozen space.
    config.nmm.consistency = "dot"  # "dot" (SCAN's -log <q, q'>) | "cross_entropy"
    config.nmm.augment_weight = 1.0
    config.nmm.neighbour_weight = 1.0
    config.nmm.neighbour_space = "pixels"  # "pixels" (frozen) | "backbone" (re-mined) | "none"
    config.nmm.num_neighbours = 10
    config.nmm.neighbour_pca_dim = 50
    config.nmm.remine_epochs = 2  # "backbone" only
    # Fashion-MNIST, seed 0, EM + consistency: weight 1 left the hard clusters unbalanced (sizes
    # 139..22,686, ACC 0.395); weight 5 (SCAN's) balanced them (2,988..9,767, ACC 0.535).
    config.nmm.entropy_weight = 5.0
    config.nmm.augment_anchor = True  # the anchor view augmented too (False: the image as is)
    config.nmm.crop_scale = (0.4, 1.0)
    config.nmm.flip = True
    config.nmm.max_degrees = 0.0
    config.eval_every_epochs = 4.0

    if "em" in args:  # EM alone: no consistency fusion (its entropy term included)
        config.nmm.augment_weight = 0.0
        config.nmm.neighbour_weight = 0.0
        config.nmm.entropy_weight = 0.0
    # Every epoch lasts at least 10,000 examples: a few thousand images get several passes
    # an epoch, about the steps the schedules were tuned with (Fashion-MNIST's 70,000 are
    # unchanged). Issue 30's panel, ACC mean of 2 seeds (BENCHMARKS.md): fm3k 0.452 ->
    # 0.470, digits28 0.439 -> 0.592.
    config.min_epoch_examples = 10_000
    if "digits" in args:
        config.min_epoch_examples = 0  # 8 x 8 digits: epochs of their own
        config_lib.use_digits(config)
        config.model.pool_first = False
        config.batch_size = 64
        config.optim.epochs = 30
        config.nmm.crop_scale = (0.6, 1.0)
        config.nmm.flip = False  # a mirrored digit is not the same digit
        config.nmm.neighbour_pca_dim = 0
        if "em" not in args:
            config.nmm.entropy_weight = 1.0  # the value of the digits sweep (nmm.sigmoid_scale)
        config.eval_every_epochs = 5.0
        config.log_every_steps = 100
        config.pictures.every_evals = 5
    return config_lib.finalize(config)
