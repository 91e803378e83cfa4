"""jclust: deep clustering in JAX/Flax.

Entry points: ``jclust.train.train_and_evaluate(config, workdir)`` (training, evaluation, resume),
``jclust.inference.load_run(workdir)`` (a trained run), ``jclust.predict`` (assign new data), ``jclust.cluster`` (k-means, PCA),
``jclust.metrics`` (ACC, NMI, ARI, purity), ``jclust.data.load`` (data sources).
"""

__version__ = "0.1.0"
