"""Builds the labelled colour collection the pretrained-feature benchmarks use: a subset of
Debian's ``openclipart-png`` (public-domain clip art sorted by subject, ``apt-get install
openclipart-png``) as a ``folder:`` source, one sub-folder per subject.

  python benchmarks/openclipart_subset.py runs/openclipart7
  python -m jclust.main --config=configs/delius.py:folder:runs/openclipart7 --workdir=runs/oc_delius
  python benchmarks/openclipart_subset.py runs/openclipart7_bal65 --per-class=65   # balanced

The subjects: the seven folders that name what is drawn (animals, buildings, food, people,
plants, tools, transportation). Left out: the icon and symbol folders (computer, shapes,
signs_and_symbols, buttons, logos: abstract glyphs rather than things), ``special``,
``unsorted``, ``decorations``, ``education``, ``electronics``, ``science``, ``containers``
(fewer than 45 images, or no one subject), ``geography`` (maps and flags) and ``office``
(a mix of icons and objects).

Each subject's files are found recursively, symbolic links resolved, and every image kept once:
a file reached twice (a link inside its own subject) or whose bytes equal another's is dropped,
and one that two subjects share (by path or bytes) is dropped from both, so that no image has two
labels. The output folder holds links to the original files; the class counts are printed (the
collection is imbalanced: 65 to 375 images a subject, 1,555 in all).
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import os
import random
import sys

ROOT = "/usr/share/openclipart/png"
SUBJECTS = ("animals", "buildings", "food", "people", "plants", "tools", "transportation")


def subject_files(root: str, subject: str) -> dict[str, str]:
    """{sha256 of the bytes: real path} of the PNG files under root/subject (links followed)."""
    found = {}
    for folder, _, names in os.walk(os.path.join(root, subject), followlinks=False):
        for name in sorted(names):
            if not name.lower().endswith(".png"):
                continue
            real = os.path.realpath(os.path.join(folder, name))
            if not os.path.isfile(real):
                continue  # a dangling link
            with open(real, "rb") as f:
                digest = hashlib.sha256(f.read()).hexdigest()
            found.setdefault(digest, real)
    return found


def build(out: str, root: str = ROOT, subjects=SUBJECTS, per_class: int = 0,
          seed: int = 0) -> dict[str, int]:
    """Links every kept image (or ``per_class`` of each subject, drawn by ``seed``) into
    out/<subject>/; returns the class counts."""
    if not os.path.isdir(root):
        sys.exit(f"error: {root} does not exist; apt-get install openclipart-png")
    files = {s: subject_files(root, s) for s in subjects}
    owners = collections.Counter(d for found in files.values() for d in found)
    counts, draws = {}, random.Random(seed)
    for subject, found in files.items():
        os.makedirs(os.path.join(out, subject), exist_ok=True)
        kept = sorted(real for digest, real in found.items() if owners[digest] == 1)
        if per_class:
            draw = draws.sample(range(len(kept)), min(per_class, len(kept)))
            kept = [kept[i] for i in sorted(draw)]
        for i, real in enumerate(kept):
            link = os.path.join(out, subject, f"{i:04d}_{os.path.basename(real)}")
            if not os.path.lexists(link):
                os.symlink(real, link)
        counts[subject] = len(kept)
    return counts


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", help="a new folder")
    parser.add_argument("--per-class", type=int, default=0,
                        help="a balanced subset: this many images of each subject (0: all)")
    parser.add_argument("--seed", type=int, default=0, help="draws the balanced subset")
    args = parser.parse_args()
    if os.path.exists(args.out):
        sys.exit(f"error: {args.out} exists; name a new folder")
    counts = build(args.out, per_class=args.per_class, seed=args.seed)
    print(", ".join(f"{s} {n}" for s, n in counts.items()), f"= {sum(counts.values())} images")
