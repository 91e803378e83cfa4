"""How a finished run's network reads out: k-means on its feature pass against k-means on its
backbone's features, on the run's data or an archive (issue 30: DeepCluster-v2's z falls where
its backbone holds).

  python benchmarks/readout.py --workdir=runs/panel_def/deepclusterv2/digits28/seed0 \
      --data=npz:runs/panel/data/digits28.npz

For the newest checkpoint of ``--workdir`` and the labelled ``--data`` (a source as
``--config.data.source`` takes it): spherical k-means (K = the run's num_clusters, 10 restarts,
``--seed``) on (1) the method's feature pass (``Method.embed``, L2-normalised), (2) the backbone's
features h (evaluation mode) as they are, and (3) h PCA-whitened to each ``--pca`` dimension and
L2-normalised (DeepCluster v1's rule). Prints one Markdown row per read-out: ACC, NMI, ARI; then
the date and the machine. Only for runs whose params have a "backbone" (the CNN methods).
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from benchmarks import quality  # noqa: E402
from jclust import cluster, metrics, models, predict  # noqa: E402


def backbone_features(predictor: predict.Predictor, images: np.ndarray,
                      batch: int = 1000) -> np.ndarray:
    """The run's backbone features h [N, D] of uint8 images (evaluation mode)."""
    backbone = models.make_backbone(predictor.config.model)
    params = jax.device_get(predictor.state.params["backbone"])
    state = jax.device_get(predictor.state.model_state["backbone"])
    return np.concatenate([np.asarray(backbone.apply(params, state, jnp.asarray(images[i:i + batch]),
                                                     False)[0])
                           for i in range(0, len(images), batch)])


def readouts(features: np.ndarray, h: np.ndarray, labels: np.ndarray, num_clusters: int,
             pca_dims: list[int], seed: int) -> dict[str, dict]:
    """ACC/NMI/ARI of spherical k-means on each read-out."""
    key = jax.random.PRNGKey(seed)
    spaces = {"feature pass": jnp.asarray(features), "backbone": jnp.asarray(h)}
    for dim in pca_dims:
        mean, projection = cluster.fit_whitening(jnp.asarray(h), dim)
        spaces[f"backbone whitened to {dim}"] = cluster.whiten(jnp.asarray(h), mean, projection)
    return {name: metrics.evaluate(labels, np.asarray(
                cluster.kmeans(x, num_clusters, key=key, n_init=10, spherical=True).labels))
            for name, x in spaces.items()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--data", required=True, help="a labelled source, e.g. npz:PATH")
    parser.add_argument("--pca", default="32,64", help="whitening dimensions, comma-separated")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    run = predict.Predictor.from_workdir(args.workdir)
    data, _ = predict.load_data(run, args.data)
    if data.labels is None or not data.spec.is_image or "backbone" not in run.state.params:
        print(f"error: {args.data} needs labelled images and {args.workdir} a network with a "
              "backbone (a CNN method's run)",
              file=sys.stderr)
        return 2
    images = np.asarray(data.sample(data.num_examples))
    h = backbone_features(run, images)
    rows = readouts(run.embed_data(data), h, np.asarray(data.labels), run.config.num_clusters,
                    [int(d) for d in args.pca.split(",") if d], args.seed)
    print(f"{args.workdir} (step {run.step}) on {args.data}\n\n| read-out | ACC | NMI | ARI |\n"
          "|---|---|---|---|")
    for name, scores in rows.items():
        print(f"| {name} | {scores['acc']:.3f} | {scores['nmi']:.3f} | {scores['ari']:.3f} |")
    print(f"\n{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}, {quality.machine()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
