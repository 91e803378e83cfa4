"""JULE on Fashion-MNIST (all 70,000 images), sized for 2 CPU cores.

  python -m jclust.main --config=configs/jule.py --workdir=runs/jule
  python -m jclust.main --config=configs/jule.py:digits --workdir=runs/jule_digits

Args (after the colon): "" (Fashion-MNIST: the reference's MNIST network, jclust.models.JuleCNN,
and spectral clustering of the final embeddings), "small_cnn" (Fashion-MNIST: jclust's small CNN
and the reference's final agglomerative pass, the default until 2026-11-25) or "digits"
(scikit-learn's 8x8 digits with the small CNN, minutes).
Reference defaults (jwyang/JULE.torch): K_s = 20, K_c = 5, lambda = 1, eta = 0.9 for non-face
data, 20 epochs a period, triplet margin 0.2, gamma 1, 20 negatives, batch 100, SGD 0.01 with the
"inv" decay, momentum 0.9, weight decay 5e-5, a 160-d L2-normalised embedding.
"""

from jclust import config_lib
import ml_collections


def get_config(arg: str = ""):
    config = config_lib.base_config()
    config.method = "jule"
    # [conv5x5-50, BN, ReLU, pool] -> [conv5x5-50, BN, ReLU] -> Linear(3200 -> 160): the
    # reference's MNIST network. Its embeddings cluster better than the small CNN's
    # (BENCHMARKS.md, JULE).
    config.model = config_lib.jule_cnn_model()
    config.batch_size = 100

    config.optim = config_lib.optim_section()
    # Training stops once the clusters reach num_clusters; optim.epochs bounds it.
    config.optim.epochs = 12
    config.optim.learning_rate = 0.01
    config.optim.lr_schedule = "inverse"
    config.optim.momentum = 0.9
    config.optim.weight_decay = 5e-5

    config.jule = ml_collections.ConfigDict()
    config.jule.embed_dim = 160
    config.jule.neighbours = 20  # K_s
    config.jule.cluster_neighbours = 5  # K_c
    config.jule.local_weight = 1.0  # lambda
    config.jule.eta = 0.9
    # eta of the first training passes, in order (later passes and the final pass use eta): a
    # smaller first pass merges less while the embedding has seen only the over-clustering.
    config.jule.period_eta = ()
    # The reference trains 20 epochs a period; 2 keep the whole run within 30 min on 2 cores.
    config.jule.epochs_per_period = 2
    config.jule.margin = 0.2
    config.jule.gamma = 1.0
    config.jule.num_negatives = 20
    config.jule.merge_cache = 16
    # "spectral": spectral clustering of the final embeddings PCA-whitened and L2-normalised (the
    # JULE paper also clusters its learned features with other algorithms); "final_pass": the
    # reference's fresh agglomeration of the final embeddings, whose top merges swing ACC by
    # +-0.04 between seeds; "clusters": the unrolled training's own clusters (before they reach
    # the target, their largest ones).
    config.jule.evaluation = "spectral"
    config.jule.spectral_neighbours = 10  # k of the k-NN graph of evaluation="spectral"
    # Graph-degree linkage down to coarse_clusters, then average linkage (cosine) of the clusters'
    # mean embeddings; "gdl" merges by graph-degree linkage to the end (the reference). On
    # Fashion-MNIST GDL's last merges let one cluster absorb its neighbours (BENCHMARKS.md, JULE).
    config.jule.coarse_linkage = "average"
    config.jule.coarse_clusters = 100
    # Batches: 0 draws them at random (the reference); g >= 2 builds every epoch from runs of g
    # examples of one cluster (jclust.data.samplers.grouped_by_label), so that the first
    # periods' ~9,000 small clusters give triplets (a random batch of 100 holds about one pair).
    config.jule.batch_groups = 0
    # The 1-NN over-clustering at the start: of the untrained network's embeddings ("embedding")
    # or of the raw pixels ("pixels", the reference's period 0).
    config.jule.initial_space = "embedding"
    # The reference trains on the images as they are; light crops are an option.
    config.jule.augment = False
    config.jule.crop_scale = (0.6, 1.0)
    config.jule.flip = True

    if arg in ("small_cnn", "digits"):
        config.model = config_lib.small_cnn_model(pool_first=True)
        config.jule.evaluation = "final_pass"
    if arg == "digits":
        config_lib.use_digits(config)
        config.model.pool_first = False
        config.optim.epochs = 40
        config.jule.epochs_per_period = 5
        config.jule.flip = False
        config.log_every_steps = 50
        config.pictures.every_evals = 2
    elif arg not in ("", "small_cnn"):
        raise config_lib.ConfigError(
            f"unknown config argument {arg!r}; use '', 'small_cnn' or 'digits'")
    return config_lib.finalize(config)
