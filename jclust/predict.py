"""Sort examples into clusters with a trained run.

Command line::

  python -m jclust.predict --workdir=runs/dec --data=folder:/photos --out=runs/dec/predict_photos

From Python (notebooks)::

  from jclust import predict
  predictor = predict.Predictor.from_workdir("runs/dec")
  labels, confidence, embeddings = predictor.assign(images)   # [N, H, W, C] or one [H, W, C]
  result = predict.predict("runs/dec", "digits", out="runs/dec/predict_digits")

Every method has one assignment rule (``Method.assign``, or its ``evaluation`` fitted by the
trainer and saved in the checkpoint; printed by training and stored in the output): the rule used
here is the very function the training-time evaluations call, applied to the newest checkpoint, so
predicting on the training data reproduces the last evaluation.

Outputs in ``OUT`` (written only once everything has been computed; nothing half-way):
``assignments.csv`` (id, cluster, confidence, and label when the data has labels), ``embeddings.npy``
([N, D] float32, row i = line i of the CSV), ``summary.json`` (workdir, step, data, rule, cluster
sizes, skipped files, and ACC/NMI/ARI when labels exist), ``confusion.csv`` (when labels exist) and
the pictures of :mod:`jclust.viz`.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import os
import shutil
import sys
import tempfile
import warnings
from typing import NamedTuple

import ml_collections
import numpy as np

from jclust import checkpointing
from jclust import config_lib
from jclust import data as jdata
from jclust import features
from jclust import methods as jmethods
from jclust import metrics as jmetrics
from jclust import inference
from jclust import loader
from jclust import state as jstate
from jclust import viz


OUTPUTS = frozenset({"assignments.csv", "embeddings.npy", "summary.json", "confusion.csv",
                     "clusters.png", "confusion.png", "embedding.png"})


class Prediction(NamedTuple):
    """What :func:`predict` computed.

    Attributes:
      ids: N example identifiers (file paths relative to the folder for ``folder:``, else the row).
      labels: int32 [N], the cluster of each example.
      confidence: float32 [N], the rule's confidence (e.g. DEC's largest soft assignment q_ij).
      embeddings: float32 [N, D], the features the rule was applied to.
      true_labels: int32 [N] or None.
      summary: the content of ``summary.json``.
      contingency: int64 [classes, K] counts (rows: true classes, columns: clusters) or None.
    """
    ids: tuple
    labels: np.ndarray
    confidence: np.ndarray
    embeddings: np.ndarray
    true_labels: np.ndarray | None
    summary: dict
    contingency: np.ndarray | None


def _bucket(n: int, cap: int, multiple: int) -> int:
    """A padded batch size for n examples: the next power of two, at most ``cap``."""
    size = 1
    while size < n and size < cap:
        size *= 2
    return inference.round_up(min(size, cap), multiple)


@dataclasses.dataclass
class Predictor:
    """A trained run loaded for inference; holds compiled functions, so reuse it.

    Attributes:
      workdir: the run's directory.
      config: the run's config.
      method: the method built from it.
      state: the newest readable checkpoint's TrainState (replicated over the devices).
      data_spec: what the run was trained on (per-example input shape, images or features).
      step: the checkpoint's step.
    """
    workdir: str
    config: ml_collections.ConfigDict
    method: jmethods.Method
    state: jstate.TrainState
    data_spec: jmethods.DataSpec
    step: int
    _runners: dict = dataclasses.field(default_factory=dict, repr=False)

    @classmethod
    def from_workdir(cls, workdir: str) -> "Predictor":
        """Loads the newest readable checkpoint of ``workdir``.

        Raises:
          FileNotFoundError: no run.json or no checkpoint in ``workdir``.
        """
        config, method, state, spec = inference.load_run(workdir)  # restored replicated on the mesh
        return cls(workdir=workdir, config=config, method=method, state=state, data_spec=spec,
                   step=int(state.step))

    @property
    def assignment_rule(self) -> str:
        """The method's assignment rule, in one sentence."""
        return self.method.assignment_rule

    def _runner(self, n: int) -> inference.Runner:
        mesh = jstate.make_mesh()
        size = _bucket(n, self.config.eval_batch_size, mesh.size)
        if size not in self._runners:
            self._runners[size] = inference.Runner(self.method, mesh, size,
                                                     self.data_spec.num_examples)
        return self._runners[size]

    def check_inputs(self, inputs: np.ndarray) -> np.ndarray:
        """Returns ``inputs`` as a batch [N, ...] of the trained per-example shape.

        Args:
          inputs: [N, *input_shape] or one example [*input_shape]; uint8 images or float features.

        Raises:
          jclust.data.DataError: for another shape or dtype than the run was trained on.
        """
        inputs = np.asarray(inputs)
        shape = tuple(self.data_spec.input_shape)
        if inputs.shape == shape:
            inputs = inputs[None]
        if inputs.ndim != len(shape) + 1 or inputs.shape[1:] != shape:
            what = "images" if self.data_spec.is_image else "feature vectors"
            raise jdata.DataError(f"inputs of shape {inputs.shape} do not match the {what} of shape "
                                  f"{shape} that {self.workdir} was trained on")
        if self.data_spec.is_image and inputs.dtype != np.uint8:
            raise jdata.DataError(f"images must be uint8 (0..255) as in training, got {inputs.dtype}")
        if inputs.shape[0] == 0:
            raise jdata.DataError("no examples to assign")
        return inputs if self.data_spec.is_image else inputs.astype(np.float32)

    def backbone_features(self, images: np.ndarray) -> np.ndarray:
        """For a run on a pretrained backbone's features (``data.backbone``), those of images
        in memory (uint8 [N, H, W, C] or one [H, W, C], any size: resized whole on the devices)
        -> [N, D] float32, the run's inputs; other inputs are returned as they are."""
        spec = features.spec_from_config(self.config.data.get("backbone"))
        images = np.asarray(images)
        if spec is None or images.dtype != np.uint8 or images.ndim not in (3, 4):
            return images
        images = images[None] if images.ndim == 3 else images
        extracted = features.extract(jdata.ArrayImages(images), spec, say=lambda _: None)
        return features.combine(extracted.features, spec.layers, spec.normalize_layers)

    def embed(self, inputs: np.ndarray) -> np.ndarray:
        """Features the assignment rule acts on. inputs: [N, ...] or one example -> [N, D] float32
        (images for a run on a backbone's features: see :meth:`backbone_features`)."""
        inputs = self.check_inputs(self.backbone_features(inputs))
        return self.embed_data(loader.Loader(jdata.Dataset(inputs, None, None, None, "inputs")))

    def embed_data(self, data: loader.Loader) -> np.ndarray:
        """The feature pass over a loaded data source -> [N, D] float32."""
        self.check_inputs(data.sample(1))  # the per-example shape and dtype trained on
        return data.features(self._runner(data.num_examples), self.state).astype(np.float32)

    def similarity_data(self, data: loader.Loader) -> np.ndarray:
        """The run's similarity space of a loaded data source -> [N, D'] float32: the method's
        ``similarity`` of these examples' features (CliqueCNN's whitened PCA, fitted on them; the
        triangle method's fused codes; pretrained_kmeans's whitened features), or the features
        themselves; cosine similarity there is the method's similarity. A space fitted on the
        examples (CliqueCNN's) is fitted on these: give the database and its queries together."""
        return inference.similarity_features(self.method, self.state, self.embed_data(data))

    def assign(self, inputs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Applies the run's assignment rule.

        Args:
          inputs: [N, *input_shape] or one example [*input_shape], as trained on (uint8 images or
            float feature vectors; for a DELIUS run, the encoder's features).

        Returns:
          (labels int32 [N], confidence float32 [N], embeddings float32 [N, D]).
        """
        return self._assign_features(self.embed(inputs))

    def assign_data(self, data: loader.Loader) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """:meth:`assign` for a loaded data source (its feature pass runs through the loader)."""
        return self._assign_features(self.embed_data(data))

    def _assign_features(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        labels, confidence = self._runner(features.shape[0]).assign(self.state, features)
        return labels.astype(np.int32), confidence.astype(np.float32), features


def load_data(predictor: Predictor, source: str, *, limit: int = 0,
              say=None) -> tuple[loader.Loader, list[str]]:
    """Loads ``source`` as the run's model expects it (resized folders, the DELIUS encoder, the
    features of the run's pretrained backbone: the run's config says, so new data get the very
    features the run was trained on; ``say``: where the extraction's progress lines go).

    Returns:
      (data, warnings): warnings are the loader's messages, e.g. files it skipped.
    """
    config = ml_collections.ConfigDict(predictor.config.to_dict())
    config.data.source = source
    config.data.limit = limit
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", jdata.DataWarning)
        data = loader.load(config, cache_dir=None, say=say)
    messages = [str(w.message) for w in caught if issubclass(w.category, jdata.DataWarning)]
    return data, messages


def predict(workdir: str, data: str, out: str | None = None, *, limit: int = 0,
            pictures: bool = True, predictor: Predictor | None = None, stdout=None) -> Prediction:
    """Assigns every example of the source ``data`` to a cluster of the run in ``workdir``.

    Args:
      workdir: a jclust training workdir (finished or still running).
      data: a data source string (``digits``, ``fashion_mnist``, ``folder:DIR``, ``npz:PATH``...).
      out: directory for the outputs (see the module docstring); None writes nothing.
      limit: use only the first ``limit`` examples (0: all).
      pictures: also write the PNG pictures into ``out``.
      predictor: a loaded :class:`Predictor` of ``workdir`` to reuse (else one is loaded).
      stdout: where messages go (default sys.stdout).

    Returns:
      A :class:`Prediction`.
    """
    say = lambda text: print(text, file=stdout or sys.stdout, flush=True)  # noqa: E731
    if limit < 0:
        raise config_lib.ConfigError(f"limit must be >= 0 (0: all examples), got {limit}")
    if out is not None:
        config_lib.check_output_dir(out, "out")  # before the work, so that a bad path costs none
    predictor = predictor or Predictor.from_workdir(workdir)
    examples, messages = load_data(predictor, data, limit=limit, say=say)
    for message in messages:
        say(f"warning: {message}")
    labels, confidence, embeddings = predictor.assign_data(examples)
    k = predictor.config.num_clusters
    ids = examples.names or tuple(str(i) for i in range(examples.num_examples))
    summary = {"workdir": os.path.abspath(workdir), "step": predictor.step,
               "method": predictor.config.method, "data": examples.source,
               "num_examples": examples.num_examples, "num_clusters": k,
               "assignment_rule": predictor.assignment_rule,
               "cluster_sizes": np.bincount(labels, minlength=k).tolist(),
               "mean_confidence": float(np.mean(confidence)), "warnings": messages}
    summary.update(jmetrics.cluster_sizes(labels, k))
    contingency = None
    if examples.labels is not None:
        summary.update(jmetrics.evaluate(examples.labels, labels))
        num_classes = int(max(examples.labels.max() + 1, len(examples.class_names or ())))
        contingency = viz.contingency_table(examples.labels, labels, num_classes, k)
    prediction = Prediction(ids=ids, labels=labels, confidence=confidence, embeddings=embeddings,
                            true_labels=examples.labels, summary=summary, contingency=contingency)
    shown = ", ".join(f"{m.upper()}={summary[m]:.4f}" for m in ("acc", "nmi", "ari") if m in summary)
    say(f"assigned {examples.num_examples} examples of {examples.source} with {workdir} (step "
        f"{predictor.step}): clusters used {summary['clusters_used']}/{k}"
        + (f"; {shown}" if shown else "; no labels, so no ACC/NMI/ARI"))
    if out is not None:
        write_outputs(out, prediction, examples, pictures=pictures)
        say(f"wrote {out}/assignments.csv, embeddings.npy, summary.json"
            + (", confusion.csv" if contingency is not None else "")
            + (" and pictures" if pictures else ""))
    return prediction


def write_outputs(out: str, prediction: Prediction, examples: loader.Loader, *,
                  pictures: bool = True) -> None:
    """Writes a prediction into ``out``: staged in a temporary folder, then moved in file by file."""
    parent = os.path.dirname(os.path.abspath(out))
    os.makedirs(parent, exist_ok=True)
    stage = tempfile.mkdtemp(prefix=".predict-", dir=parent)
    try:
        with open(os.path.join(stage, "assignments.csv"), "w", newline="") as f:
            writer = csv.writer(f)
            has_labels = prediction.true_labels is not None
            writer.writerow(["id", "cluster", "confidence"] + (["label"] if has_labels else []))
            for i, (name, c, p) in enumerate(zip(prediction.ids, prediction.labels,
                                                 prediction.confidence)):
                row = [name, int(c), f"{float(p):.6f}"]
                if has_labels:
                    row.append(int(prediction.true_labels[i]))
                writer.writerow(row)
        np.save(os.path.join(stage, "embeddings.npy"), prediction.embeddings)
        if prediction.contingency is not None:
            np.savetxt(os.path.join(stage, "confusion.csv"), prediction.contingency, fmt="%d",
                       delimiter=",", header="rows: true classes, columns: clusters")
        with open(os.path.join(stage, "summary.json"), "w") as f:
            json.dump(prediction.summary, f, indent=1)
        if pictures:
            viz.write_pictures(
                stage, examples.images(), prediction.labels,
                prediction.confidence, prediction.embeddings,
                num_clusters=prediction.summary["num_clusters"],
                class_labels=prediction.true_labels, class_names=examples.class_names,
                title=(f"{prediction.summary['method']} step {prediction.summary['step']} on "
                       f"{examples.source}"))
        os.makedirs(out, exist_ok=True)
        written = set(os.listdir(stage))
        for name in sorted(written):
            os.replace(os.path.join(stage, name), os.path.join(out, name))
        # An earlier prediction into the same folder must not leave files this one did not write
        # (e.g. confusion.csv of labelled data next to assignments of unlabelled data).
        for name in OUTPUTS - written:
            if os.path.exists(os.path.join(out, name)):
                os.remove(os.path.join(out, name))
    finally:
        shutil.rmtree(stage, ignore_errors=True)


class _Parser(argparse.ArgumentParser):
    """argparse with a usage error as one ``error:`` line (not the usage text, then the error)."""

    def error(self, message: str):
        print(f"error: {message.rstrip('.')}; see --help", file=sys.stderr)
        sys.exit(2)


def main(argv=None) -> int:
    """``python -m jclust.predict --workdir=DIR --data=SOURCE --out=OUT [--limit=N] [--no-pictures]``."""
    parser = _Parser(prog="python -m jclust.predict", description=(
        "Assign the examples of a data source to the clusters of a trained jclust run."))
    parser.add_argument("--workdir", required=True, help="the training run's directory")
    parser.add_argument("--data", required=True, help="data source, e.g. digits, fashion_mnist, "
                        "folder:DIR, npz:PATH, idx:DIR, tfds:NAME[:SPLIT]")
    parser.add_argument("--out", required=True, help="directory for assignments.csv and the rest")
    parser.add_argument("--limit", type=int, default=0, help="only the first N examples (0: all)")
    parser.add_argument("--no-pictures", dest="pictures", action="store_false",
                        help="skip the PNG pictures")
    args = parser.parse_args(argv)
    try:
        predict(args.workdir, args.data, args.out, limit=args.limit, pictures=args.pictures)
    except (config_lib.ConfigError, jdata.DataError, checkpointing.CheckpointError,
            FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
