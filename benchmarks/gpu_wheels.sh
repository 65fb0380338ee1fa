#!/usr/bin/env bash
# Fill .gpu-wheels/ (git-ignored) with the wheels of the packages ckmbench needs that the GPU
# machine's image lacks (it has torch, torchvision, timm, scikit-image, pandas, pluggy, tabulate,
# matplotlib, click, tqdm, pytest...; see /work/.library/device/KINDS.md), at the versions installed
# here, for its Python (3.12, x86-64 manylinux). benchmarks/gpu_check.sh installs them with
# `pip install --no-index`. Run here, where pip reaches the package index:
#   bash benchmarks/gpu_wheels.sh [python]   (default: .venv/bin/python, else python3)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${1:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
DEST=.gpu-wheels
# what the image lacks: ckmbench's own dependencies, and diffusers' importlib-metadata
NEEDED="diffusers importlib-metadata pykrige shapely torch-fidelity platformdirs"
mkdir -p "$DEST"
for name in $NEEDED; do
  version=$("$PY" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$name" 2>/dev/null || true)
  spec=$name${version:+==$version}
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$DEST" "$spec"
  echo "$spec"
done
du -sh "$DEST"
