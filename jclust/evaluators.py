"""The training-time evaluation: the method's assignment rule on a feature pass, and its record.

A record holds ``step``, ``phase``, ACC/NMI/ARI (when the data has labels), the cluster sizes of
:func:`jclust.metrics.cluster_sizes`, the mean confidence, the NMI with the previous evaluation's
assignment, the purity and NMI of the method's own pseudo-labels (when it has them), with
``retrieval_queries`` the similarity benchmark of the method's similarity (:func:`retrieval_record`
of :func:`jclust.inference.similarity_features`), and
whatever the recluster that preceded it reported. Records go to ``metrics.jsonl``; the assignment to
``assignments.npz``; pictures to ``pictures/``.
"""

from __future__ import annotations

import os
import time

import jax
import numpy as np

from jclust import config_lib
from jclust import loader
from jclust import distributed
from jclust import inference
from jclust import methods as jmethods
from jclust import metrics as jmetrics
from jclust import state as jstate
from jclust import viz
from jclust import workdir as jworkdir
from jclust import writers


class ClusterEvaluator:
    """Evaluates a run's states in order, remembering the previous assignment.

    Args:
      method: the run's method (its assignment rule and pseudo-labels).
      runner: the run's compiled passes.
      data: the training data (labels, when present, are used for ACC/NMI/ARI only).
      workdir: where ``assignments.npz`` and ``pictures/`` go (None: nowhere).
      writer: the run's metrics writer.
      num_clusters: K.
      pictures_every: write pictures every this many evaluations and at the last (0: never).
      projection, max_points, seed: of the embedding picture (seed also keys the retrieval
        benchmark's random pairs and anchors).
      title: of the pictures.
      retrieval_queries: with labels, also score the method's similarity
        (:func:`jclust.inference.similarity_features`), the last this many examples querying the
        others (:func:`retrieval_record`; 0: not).
    """

    def __init__(self, method: jmethods.Method, runner: inference.Runner, data: loader.Loader,
                 workdir: str | None, writer: writers.RunWriter, *, num_clusters: int,
                 pictures_every: int = 0, projection: str = "pca", max_points: int = 5000,
                 seed: int = 0, title: str = "", retrieval_queries: int = 0):
        self.method, self.runner, self.data = method, runner, data
        self.retrieval_queries = retrieval_queries
        self.workdir, self.writer, self.num_clusters = workdir, writer, num_clusters
        self.pictures_every, self.title = pictures_every, title
        self.projection, self.max_points, self.seed = projection, max_points, seed
        self.previous_labels: np.ndarray | None = None
        self.evals_done = 0

    def __call__(self, state: jstate.TrainState, step: int, features: np.ndarray, *,
                 phase: str, extra: dict, final: bool) -> dict:
        """Evaluates ``state`` at ``step`` from its feature pass ``features`` [N, D]; records
        ``extra`` (the preceding recluster's report) with it; ``final``: the run's last
        evaluation (pictures are always drawn then). Returns the record."""
        labels, confidence = self.runner.assign(state, features)
        record = {"step": step, "phase": phase}
        true_labels = self.data.labels
        if true_labels is not None:
            record.update(jmetrics.evaluate(true_labels, labels))
        if true_labels is not None and self.method.training_labels is not None:
            # Host copies of the (replicated) parameters only: a per-example label vector of the
            # clustering state is gathered alone, not the state's memories.
            pseudo = distributed.fetch(self.method.training_labels(
                distributed.host_side(state.params), state.cluster, features))
            # Scored on the examples that have one (CliqueCNN's cliques cover a part of the data).
            labelled = pseudo >= 0
            if labelled.any():
                truth, pseudo = true_labels[labelled], pseudo[labelled]
                record["pseudo_purity"] = float(jmetrics.purity(truth, pseudo))
                record["pseudo_nmi"] = float(jmetrics.nmi(truth, pseudo))
                if not labelled.all():
                    record["pseudo_coverage"] = float(labelled.mean())
        if true_labels is not None and self.retrieval_queries:
            space = inference.similarity_features(self.method, state, features)
            record.update(retrieval_record(space, true_labels, self.retrieval_queries, self.seed))
        record.update(jmetrics.cluster_sizes(labels, self.num_clusters))
        record["mean_confidence"] = float(np.mean(confidence))
        if self.previous_labels is not None:
            record["nmi_previous"] = float(jmetrics.nmi(self.previous_labels, labels))
        self.previous_labels = labels
        record.update(extra)
        record["time"] = time.time()
        self.writer.write_eval(record)
        self.evals_done += 1
        if self.workdir is not None:
            jworkdir.save_assignments(self.workdir, step, labels, confidence)
            if self.pictures_every and (final or self.evals_done % self.pictures_every == 0):
                self.write_pictures(step, features, labels, confidence)
        return record

    def write_pictures(self, step: int, features: np.ndarray, labels: np.ndarray,
                       confidence: np.ndarray) -> None:
        """Overwrites ``WORKDIR/pictures/*.png``: the assignment's pictures
        (:func:`jclust.viz.write_pictures`) and ``curves.png`` (losses and metrics so far)."""
        out = os.path.join(self.workdir, jworkdir.PICTURES)
        data = self.data
        viz.write_pictures(out, data.images(), labels, confidence,
                           features, num_clusters=self.num_clusters, class_labels=data.labels,
                           class_names=data.class_names, title=f"{self.title}, step {step}",
                           projection=self.projection, max_points=self.max_points, seed=self.seed)
        viz.training_curves(self.writer.evals, self.writer.train_records,
                            os.path.join(out, "curves.png"), title=self.title)


RETRIEVAL_KEYS = {"retrieval_p1": "precision_at_1", "retrieval_p10": "precision_at_10",
                  "retrieval_p100": "precision_at_100", "retrieval_map100": "map_at_100",
                  "knn20_acc": "knn_accuracy", "pair_auc": "pair_auc",
                  "anchor_auc": "anchor_auc", "anchor_auc_mean": "anchor_auc_mean"}


RETRIEVAL_DATABASE_MIN = 100  # the per-anchor protocol's nearest candidates


AUTO_QUERIES_DIVISOR = 7  # -1: the last N // 7 examples query (Fashion-MNIST: its test split)


def retrieval_queries(config, data: loader.Loader) -> int:
    """How many examples ``config.eval_retrieval_queries`` has query the others on ``data``.

    -1 (auto): the last N // :data:`AUTO_QUERIES_DIVISOR` examples, on Fashion-MNIST's 70,000
    exactly its 10,000 test images against its 60,000 training images; none (0) when the data has
    no labels or the queries would leave fewer than :data:`RETRIEVAL_DATABASE_MIN` examples. Any
    other value is taken as it is, and a ConfigError when it cannot score ``data`` (no labels, too
    few examples left to search, below -1)."""
    queries, n = config.eval_retrieval_queries, data.num_examples
    if queries == -1:
        auto = n // AUTO_QUERIES_DIVISOR
        return auto if data.labels is not None and n - auto >= RETRIEVAL_DATABASE_MIN else 0
    if queries and data.labels is None:
        raise config_lib.ConfigError(f"config.eval_retrieval_queries={queries} scores with labels "
                                     f"and {data.source} has none: set it to 0 (or -1: when there "
                                     "are labels)")
    if queries < -1 or queries > max(n - RETRIEVAL_DATABASE_MIN, 0):
        raise config_lib.ConfigError(
            f"config.eval_retrieval_queries={queries}: the queries must leave at least "
            f"{RETRIEVAL_DATABASE_MIN} of the {n} examples to search; set it to at most "
            f"{max(n - RETRIEVAL_DATABASE_MIN, 0)} (0: no similarity scores; -1: a seventh of "
            "the examples when that leaves enough)")
    return queries


def retrieval_record(features: np.ndarray, labels: np.ndarray, num_queries: int,
                     seed: int) -> dict:
    """The similarity benchmark (:func:`jclust.metrics.similarity_report`, cosine) of features
    [N, D]: the last ``num_queries`` examples query the first N - num_queries (on Fashion-MNIST
    with 10,000: its test split against its training split, as ``benchmarks/similarity.py``
    scores it); labels only score. Keys :data:`RETRIEVAL_KEYS`."""
    split = len(features) - num_queries
    report = jmetrics.similarity_report(features[:split], labels[:split], features[split:],
                                        labels[split:], key=jax.random.PRNGKey(seed))
    return {key: float(getattr(report, field)) for key, field in RETRIEVAL_KEYS.items()}


def eval_line(record: dict, num_clusters: int) -> str:
    """An evaluation record as one log line."""
    shown = ", ".join(f"{k}={record[k]:.4f}" for k in ("acc", "nmi", "ari") if k in record)
    return (f"  eval step {record['step']}: {shown}{', ' if shown else ''}clusters used "
            f"{record['clusters_used']}/{num_clusters} ({record['empty_clusters']} empty), "
            f"sizes {record['cluster_size_min']}..{record['cluster_size_max']}, size entropy "
            f"{record['size_entropy']:.3f}"
            + (f", NMI with previous {record['nmi_previous']:.3f}" if "nmi_previous" in record else "")
            + (f"; pseudo-labels: purity {record['pseudo_purity']:.4f}, NMI {record['pseudo_nmi']:.4f}"
               if "pseudo_purity" in record else "")
            + (f" on {record['pseudo_coverage']:.1%} of the examples"
               if "pseudo_coverage" in record else "")
            + (f"; similarity: P@1 {record['retrieval_p1']:.4f}, mAP@100 "
               f"{record['retrieval_map100']:.4f}, 20-NN {record['knn20_acc']:.4f}, pair AUC "
               f"{record['pair_auc']:.4f}, anchor AUC {record['anchor_auc']:.4f}"
               if "knn20_acc" in record else ""))


def collapse_warning(record: dict, num_clusters: int, num_examples: int) -> str | None:
    """The one collapse rule every method's evaluation shares: a warning when an evaluation put
    every example in one cluster (of K > 1), else None."""
    if record["clusters_used"] == 1 and num_clusters > 1:
        return f"collapse: the evaluation put all {num_examples} examples in one cluster"
    return None
