"""The panel of data sets that defaults are chosen on (issue 30): every method's default config,
unchanged but for its data, on each member, over seeds; one Markdown table of ACC mean ± sd.

  python benchmarks/panel.py --methods=dec,swav --members=fm10k,fm3k,digits28 --workdir=runs/panel
  python benchmarks/panel.py --methods=all --members=all --seeds=0,1,2 --workdir=runs/panel

Members (all 28 x 28, so that a default config runs on them as it is, told only what the data
need: oc7's 7 classes and 3 channels):

* ``fm70k``: Fashion-MNIST, all 70,000 images (the set the defaults were tuned on);
* ``fm10k``, ``fm3k``: stratified subsets of those 70,000 (1,000 and 300 images a class, drawn
  with fixed seeds, written once to ``WORKDIR/data/NAME.npz``): a user's few thousand images;
* ``digits28``: scikit-learn's 1,797 8 x 8 digits enlarged to 28 x 28 (bilinear), another domain;
* ``oc7``: colour clip art, the seven subjects of Debian's ``openclipart-png`` that
  ``benchmarks/openclipart_subset.py`` keeps (1,543 usable of 1,555: 12 exceed PIL's
  decompression-bomb limit and are skipped with a warning; 65 to 375 a subject), resized to 28 x 28
  RGB (PIL's ``folder:`` resize, the whole image): imbalanced, 7 classes (every run gets
  ``num_clusters=7`` and ``data.image_shape=(28,28,3)``), a domain and a colour space no default
  was chosen on.

Each (method, member) pair runs ``benchmarks/quality.py`` in ``WORKDIR/METHOD/MEMBER`` (re-running
re-uses finished seeds), with ``--override`` options passed on to every run. ``--keep=DIR`` (a
folder in the repository, e.g. ``benchmarks/panel_results/NAME``) carries a panel across
machines and sessions: every finished seed's ``result.json`` is copied to
``DIR/METHOD/MEMBER/seedK/result.json`` with the machine, commit and overrides it ran with, and a
seed found there is not run again. The similarity
benchmark's 10,000 queries (CliqueCNN's config) fit only fm70k: on the others it is switched off.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import quality  # noqa: E402

METHODS = ("dec", "idec", "deepcluster", "deepclusterv2", "odc", "swav", "jule", "nmm",
           "cliquecnn", "delius", "triangle", "pretrained_kmeans")
MEMBERS = ("fm70k", "fm10k", "fm3k", "digits28", "oc7")
SUBSETS = {"fm10k": (1000, 10_000), "fm3k": (300, 3_000)}  # per class, draw seed
IMAGE_SHAPE = (28, 28)
# What a member's data needs every run to be told (the configs' num_clusters is 10).
MEMBER_OVERRIDES = {"oc7": ("num_clusters=7", "data.image_shape=(28,28,3)")}


def stratified_subset(labels: np.ndarray, per_class: int, seed: int) -> np.ndarray:
    """Sorted indices of ``per_class`` examples of every class, drawn without replacement by
    ``np.random.default_rng(seed)``; ValueError when a class has fewer."""
    rng = np.random.default_rng(seed)
    chosen = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        if len(members) < per_class:
            raise ValueError(f"class {label} has {len(members)} examples, fewer than {per_class}")
        chosen.append(rng.choice(members, per_class, replace=False))
    return np.sort(np.concatenate(chosen))


def enlarge(images: np.ndarray, shape: tuple[int, int] = IMAGE_SHAPE) -> np.ndarray:
    """uint8 [N, h, w, C] -> uint8 [N, *shape, C], bilinear (jax.image.resize), rounded."""
    import jax  # the trainer's stack, only for this member

    out = jax.image.resize(images.astype(np.float32), (len(images), *shape, images.shape[-1]),
                           "linear", antialias=False)
    return np.clip(np.rint(np.asarray(out)), 0, 255).astype(np.uint8)


def member_arrays(name: str) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 images [N, 28, 28, C], int32 labels [N]) of a member other than fm70k."""
    from jclust import data as jdata

    if name in SUBSETS:
        dataset = jdata.load("fashion_mnist")
        index = stratified_subset(dataset.labels, *SUBSETS[name])
        return dataset.inputs[index], dataset.labels[index].astype(np.int32)
    if name == "digits28":
        dataset = jdata.load("digits")
        return enlarge(dataset.inputs), dataset.labels.astype(np.int32)
    if name == "oc7":
        from benchmarks import openclipart_subset

        with tempfile.TemporaryDirectory() as links:
            openclipart_subset.build(links, root=openclipart_subset.ROOT)
            dataset = jdata.load(f"folder:{links}", image_shape=(*IMAGE_SHAPE, 3))
        return dataset.inputs, dataset.labels.astype(np.int32)
    raise ValueError(f"unknown panel member {name!r}; use one of {MEMBERS}")


def member_source(name: str, data_dir: str) -> str:
    """The ``data.source`` of a member, writing its archive on first use."""
    if name == "fm70k":
        return "fashion_mnist"
    path = os.path.join(data_dir, f"{name}.npz")
    if not os.path.exists(path):
        images, labels = member_arrays(name)
        os.makedirs(data_dir, exist_ok=True)
        np.savez(path + ".tmp.npz", image=images, label=labels)
        os.replace(path + ".tmp.npz", path)
    return f"npz:{path}"


def cell(results: list[dict], num_seeds: int) -> str:
    """'ACC mean ± sd (minutes a run)' of a pair's per-seed results, with the count of seeds
    when fewer than ``num_seeds`` finished."""
    if not results:
        return "–"
    acc = np.array([r["acc"] for r in results])
    sd = acc.std(ddof=1) if len(acc) > 1 else 0.0
    minutes = np.mean([r["seconds"] for r in results]) / 60
    partial = f", {len(acc)} of {num_seeds} seeds" if len(acc) < num_seeds else ""
    return f"{acc.mean():.3f} ± {sd:.3f} ({minutes:.1f} min{partial})"


def read_results(workdir: str, seeds: list[int]) -> list[dict]:
    """The finished seeds' result.json of one pair (quality.py's)."""
    rows = []
    for seed in seeds:
        path = os.path.join(workdir, f"seed{seed}", "result.json")
        if os.path.exists(path):
            with open(path) as f:
                rows.append(json.load(f))
    return rows


def table(workdir: str, methods: list[str], members: list[str], seeds: list[int]) -> str:
    """The panel's Markdown table: a row per method, a column per member, and the mean ACC over
    the members every seed of which finished."""
    lines = ["| method | " + " | ".join(members) + " | panel mean ACC |",
             "|---|" + "---|" * (len(members) + 1)]
    for method in methods:
        cells, means = [], []
        for member in members:
            results = read_results(os.path.join(workdir, method, member), seeds)
            cells.append(cell(results, len(seeds)))
            if len(results) == len(seeds):
                means.append(np.mean([r["acc"] for r in results]))
        mean = f"{np.mean(means):.3f}" if len(means) == len(members) else "–"
        lines.append(f"| {method} | " + " | ".join(cells) + f" | {mean} |")
    return "\n".join(lines)


def _result_path(root: str, method: str, member: str, seed: int) -> str:
    return os.path.join(root, method, member, f"seed{seed}", "result.json")


def restore_kept(keep: str, workdir: str, method: str, member: str, seeds: list[int],
                 overrides: list[str]) -> None:
    """Copies the seeds kept in ``keep`` into ``workdir``, where quality.py re-uses them;
    SystemExit (one error line) for a seed kept with other ``overrides``."""
    for seed in seeds:
        kept, local = (_result_path(d, method, member, seed) for d in (keep, workdir))
        if not os.path.exists(kept):
            continue
        with open(kept) as f:
            ran_with = json.load(f).get("overrides", [])
        if ran_with != list(overrides):
            raise SystemExit(f"error: {kept} ran with overrides {ran_with}, this panel with "
                             f"{list(overrides)}; use one --keep folder per setting")
        if not os.path.exists(local):
            os.makedirs(os.path.dirname(local), exist_ok=True)
            shutil.copyfile(kept, local)


def keep_finished(keep: str, workdir: str, method: str, member: str, seeds: list[int],
                  provenance: dict) -> None:
    """Copies the seeds finished in ``workdir`` and not yet kept into ``keep``, each with
    ``provenance`` (machine, commit, overrides) added to its result."""
    for seed in seeds:
        kept, local = (_result_path(d, method, member, seed) for d in (keep, workdir))
        if os.path.exists(local) and not os.path.exists(kept):
            with open(local) as f:
                row = {**json.load(f), **provenance}
            os.makedirs(os.path.dirname(kept), exist_ok=True)
            with open(kept + ".tmp", "w") as f:
                json.dump(row, f, indent=1, sort_keys=True)
            os.replace(kept + ".tmp", kept)


def commit(root: str) -> str:
    """The checkout's commit, with "+changes" when its tracked files differ from it."""
    def git(*args):
        return subprocess.run(["git", "-C", root, *args], capture_output=True, text=True).stdout
    head = git("rev-parse", "--short=7", "HEAD").strip() or "unknown"
    return head + ("+changes" if git("status", "--porcelain", "--untracked-files=no").strip()
                   else "")


def parse_list(value: str, allowed: tuple[str, ...], what: str) -> list[str]:
    items = list(allowed) if value == "all" else [v for v in value.split(",") if v]
    unknown = [v for v in items if v not in allowed]
    if unknown or not items:
        raise SystemExit(f"error: unknown {what} {unknown or value!r}; use 'all' or some of "
                         f"{', '.join(allowed)}")
    return items


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default="all", help=f"'all' or some of {', '.join(METHODS)}")
    parser.add_argument("--members", default="all", help=f"'all' or some of {', '.join(MEMBERS)}")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--override", action="append", default=[],
                        help="KEY=VALUE passed to every run ({seed}: the seed)")
    parser.add_argument("--keep", default="",
                        help="folder that keeps finished seeds' results across machines")
    parser.add_argument("--table-only", action="store_true",
                        help="print the table of what has finished, train nothing")
    args = parser.parse_args(argv)
    methods = parse_list(args.methods, METHODS, "methods")
    members = parse_list(args.members, MEMBERS, "members")
    seeds = [int(s) for s in args.seeds.split(",")]
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    provenance = {"machine": quality.machine(), "commit": commit(root),
                  "overrides": args.override}
    for method in methods if args.keep else ():
        for member in members:
            restore_kept(args.keep, args.workdir, method, member, seeds, args.override)
    if not args.table_only:
        for member in members:
            source = member_source(member, os.path.join(args.workdir, "data"))
            for method in methods:
                overrides = [f"data.source={source}"] if member != "fm70k" else []
                overrides += MEMBER_OVERRIDES.get(member, ())
                if method == "cliquecnn" and member != "fm70k":
                    overrides.append("eval_retrieval_queries=0")
                quality_args = [f"--config={os.path.join(root, 'configs', method + '.py')}",
                                f"--seeds={args.seeds}",
                                f"--workdir={os.path.join(args.workdir, method, member)}"]
                for override in overrides + args.override:
                    quality_args += ["--override", override]
                print(f"== {method} on {member}", flush=True)
                if quality.main(quality_args):
                    print(f"{method} on {member} failed; the table shows what finished",
                          file=sys.stderr)
                if args.keep:
                    keep_finished(args.keep, args.workdir, method, member, seeds, provenance)
    print(f"\nPanel ({quality.machine()}; seeds {args.seeds}; ACC mean ± sd, minutes a run):\n")
    print(table(args.workdir, methods, members, seeds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
