"""CliqueCNN on Fashion-MNIST (all 70,000 images), sized for 2 CPU cores.

  python -m jclust.main --config=configs/cliquecnn.py --workdir=runs/cliquecnn
  python -m jclust.main --config=configs/cliquecnn.py:digits --workdir=runs/cliquecnn_digits

Args (after the colon): "" (Fashion-MNIST) or "digits" (scikit-learn's 8x8 digits, a minute).
Rounds of ``cliquecnn.round_epochs`` epochs, each epoch 546 pre-sampled batches of 8
cliques x 16 samples (docs/methods.md; ../shared/notes METHODS-2.md section 1).
"""

from jclust import config_lib
import ml_collections


def get_config(arg: str = ""):
    config = config_lib.base_config()
    config.method = "cliquecnn"
    config.model = config_lib.small_cnn_model(pool_first=False)
    # The similarity feature is the dense layer before its ReLU (as the authors' fc7); the head
    # applies the ReLU. Fashion-MNIST, the in-batch run's trunk (seed 0): 20-NN 0.849 / anchor AUC
    # 0.886 before the ReLU against 0.833 / 0.878 after it.
    config.model.output_relu = False

    config.optim = config_lib.optim_section()
    # 2 rounds of 3 epochs (546 steps of 128 an epoch), 25 min on 2 CPU cores. With the global
    # loss the network still learns after one epoch (Fashion-MNIST, seed 0, one round, features
    # after the ReLU: 20-NN 0.856 after 1 epoch, 0.869 after 3); the second round adds little
    # (BENCHMARKS.md). With the in-batch loss, rounds of one epoch, figures fell after round 2.
    config.optim.epochs = 6
    # SGD (backbone with momentum, head without) as DeepCluster, at a fifth of its rate: with
    # the imprinted head the first steps' gradients are large, and at 0.05 the trunk collapsed
    # (Fashion-MNIST: in-batch accuracy stuck at 1/8 from step 100; at 0.01: 0.79 by step 300).
    config.optim.learning_rate = 0.01
    config.optim.momentum = 0.9
    config.optim.weight_decay = 1e-5

    config.cliquecnn = ml_collections.ConfigDict()
    config.cliquecnn.init_features = "hog_lda"  # hog_lda | pca_whiten | network
    config.cliquecnn.pca_dim = 64  # the similarity space: PCA of the features, unit rows
    config.cliquecnn.num_neighbours = 64  # k-NN lists the cliques grow in
    # x cliques_per_batch = 1,000 cliques (the head's width), the authors' count: an epoch of 546
    # batches of 8 cliques then shows each clique ~4 times (5,000 cliques: less than once).
    config.cliquecnn.num_initial_batches = 100
    config.cliquecnn.cliques_per_batch = 10
    config.cliquecnn.clique_size = 8
    config.cliquecnn.seed_fraction = 0.05  # each next seed among the 5 % least similar samples
    config.cliquecnn.purify_passes = 8
    config.cliquecnn.build_chunk = 25  # initial batches built together (overlaps resolved after)
    config.cliquecnn.grow = True  # Student-t growth from round 1 on
    config.cliquecnn.grow_max_size = 16
    config.cliquecnn.grow_p_value = 1e-3
    config.cliquecnn.grow_null_samples = 500
    config.cliquecnn.cliques_per_step = 8  # x samples_per_clique = batch_size
    config.cliquecnn.samples_per_clique = 16
    config.cliquecnn.sampling = "random"  # random (as the released trainer) | heuristic
    # global (all 1,000 cliques, as released) | in_batch (the batch's 8 cliques). With the
    # imprinted head the global task learns (a random head did not: loss ln 1000 after 400 steps)
    # and teaches finer similarity than telling 8 dissimilar cliques apart (Fashion-MNIST, seed 0,
    # one epoch, features after the ReLU: 20-NN 0.856 / anchor AUC 0.894 against 0.840 / 0.883
    # in-batch).
    config.cliquecnn.loss = "global"
    config.cliquecnn.round_epochs = 3
    config.cliquecnn.head_init = "imprint"  # imprint (clique means; jclust) | random (authors)
    config.cliquecnn.imprint_scale = 3.0  # imprinted logit = this x cosine with the clique mean
    config.cliquecnn.head_init_std = 0.01
    config.cliquecnn.crop_scale = (0.5, 1.0)
    config.cliquecnn.flip = True
    # The paper's mirrored match (every similarity the largest over mirroring either image;
    # docs/methods.md) is built and off: on Fashion-MNIST, 3 seeds, it moved the final 20-NN
    # 0.893 -> 0.895 and anchor AUC 0.901 -> 0.902 (within a seed's sd), ACC 0.676 -> 0.660, and
    # made each run ~1.5 min longer; round 0's HOG-LDA with it: 20-NN 0.887 -> 0.879.
    config.cliquecnn.mirror_match = False
    config.cliquecnn.rotation_degrees = 10.0
    config.cliquecnn.collapse_gap = 0.05  # warn when intra - inter clique similarity falls below
    # The SGD step capped by the inputs' power, as DEC's pretrain.max_input_power: each step is
    # scaled by min(1, this / the batch's mean ||x||^2). Colour clip art (the panel's oc7,
    # E||x||^2 = 1,683 against Fashion-MNIST's 162) collapsed at the rate 0.01 (one cluster, seed
    # 0); at 0.005 / 0.0024 / 0.00116: ACC 0.271 / 0.294 / 0.259, no collapse. 400 gives oc7
    # ~0.0024 and leaves Fashion-MNIST and digits (batches of 8 cliques: mean ~160, sd ~33) at
    # the rate as given. SGD only; 0 turns it off.
    config.cliquecnn.max_input_power = 400.0
    # The learned similarity (scored, and predict's similarity space): the trunk's features on
    # their top 128 principal components, component i scaled by variance_i^-0.25 (whitening to
    # the power 0.5), cosine. Final trunks, test images querying training images, 20-NN / anchor
    # AUC: Fashion-MNIST (3 seeds) 0.893 / 0.901 against 0.877 / 0.897 for the plain cosine;
    # digits 0.953 / 0.925 against 0.953 / 0.930. Power 0.75 gains more on Fashion-MNIST
    # (0.900 / 0.898) but loses anchor AUC on digits (0.894), whose 1,797 examples estimate the
    # small components poorly; round 0's HOG-LDA, already whitened, loses by any power.
    config.cliquecnn.similarity_dim = 128
    config.cliquecnn.similarity_power = 0.5
    config.cliquecnn.eval_pca_dim = 32
    config.cliquecnn.eval_n_init = 10
    config.batch_size = 128
    # Every evaluation (each round's start and the end) also scores the trunk's features as a
    # similarity: the 10,000 test images query the 60,000 training images (labels only score);
    # -1 is that seventh of any labelled data (none without labels or below 116 images), so the
    # config serves a user's own few thousand images as it is.
    config.eval_retrieval_queries = -1

    # Every epoch lasts at least 10,000 examples: a few thousand images get several passes
    # an epoch, about the steps the schedules were tuned with (Fashion-MNIST's 70,000 are
    # unchanged). Issue 30's panel, ACC mean of 2 seeds (BENCHMARKS.md): fm3k 0.655 ->
    # 0.651, digits28 0.842 -> 0.913.
    config.min_epoch_examples = 10_000
    if arg == "digits":
        config.min_epoch_examples = 0  # 8 x 8 digits: epochs of their own
        config_lib.use_digits(config)
        config.model.widths = (32, 64)
        config.model.pool_first = False
        config.cliquecnn.flip = False  # a mirrored digit is not the same digit
        config.cliquecnn.num_neighbours = 16
        config.cliquecnn.num_initial_batches = 20
        config.cliquecnn.cliques_per_batch = 8
        config.cliquecnn.clique_size = 6
        config.cliquecnn.grow_max_size = 12
        config.cliquecnn.pca_dim = 32
        config.cliquecnn.eval_pca_dim = 16
        config.cliquecnn.cliques_per_step = 8
        config.cliquecnn.samples_per_clique = 8
        config.cliquecnn.round_epochs = 10
        config.optim.epochs = 30
        config.batch_size = 64
        config.eval_retrieval_queries = 297  # the last 297 digits query the first 1,500
        config.log_every_steps = 50
        config.pictures.every_evals = 5
    elif arg:
        raise config_lib.ConfigError(f"unknown config argument {arg!r}; use '' or 'digits'")
    return config_lib.finalize(config)
