#!/usr/bin/env bash
# Idempotent set-up on a fresh Debian machine, as root: the Fashion-MNIST files and a venv with
# jclust and its test extra. Used by both README commands.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
  apt-get update -qq
  apt-get install -y -qq dataset-fashion-mnist
fi
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/pip install -q --disable-pip-version-check -e '.[test]' 2>&1 | { grep -v "is ignored" || true; }
.venv/bin/python -c "import jclust.train" 
