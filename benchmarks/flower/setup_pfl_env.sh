#!/usr/bin/env bash
# Builds pfl-research's own virtualenv for the framework comparison (benchmarks/flower/.venv-pfl,
# gitignored by `.venv*/`). pfl is never a dependency of lightning_fl: it lives only in this venv.
# --system-site-packages reuses the CPU torch/lightning already installed, and pfl is installed
# without its `pytorch` extra, so no torch (an unpinned one would be the multi-GB CUDA build) is
# pulled in; pfl's own small dependencies (dp-accounting, prv-accountant, multiprocess, scipy) are.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
venv="${PFL_VENV:-$here/.venv-pfl}"
python="${PYTHON:-python3}"
pfl_spec="${PFL_SPEC:-pfl==0.6.0}"

if [[ ! -x "$venv/bin/python" ]]; then
    "$python" -m venv --system-site-packages "$venv"
fi
"$venv/bin/python" -m pip install --quiet "$pfl_spec"
# lightning_fl itself, editable and without deps (the workers import its partition/sampling/model).
"$venv/bin/python" -m pip install --quiet --no-deps -e "$repo"
"$venv/bin/python" - <<'PY'
import importlib.metadata as md
import torch, lightning, lightning_fl
import pfl.model.pytorch  # noqa: F401 - the PyTorch backend must import
print(f"pfl {md.version('pfl')}, torch {torch.__version__}, lightning {lightning.__version__}, "
      f"lightning_fl {lightning_fl.__version__}")
PY
