#!/usr/bin/env bash
# Builds the Flower comparison's own virtualenv (benchmarks/flower/.venv, gitignored by `.venv*/`).
# --system-site-packages reuses the CPU torch/lightning already installed: an unpinned torch pulled
# in as a dependency would otherwise fetch the multi-GB CUDA build. Flower lives only in this venv,
# never in lightning_fl's own dependencies.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
venv="${FLOWER_VENV:-$here/.venv}"
python="${PYTHON:-python3}"

if [[ ! -x "$venv/bin/python" ]]; then
    "$python" -m venv --system-site-packages "$venv"
fi
# Installed torch is kept: pip sees it satisfies flwr's requirements (if any) via system site-packages.
"$venv/bin/python" -m pip install --quiet --upgrade pip
"$venv/bin/python" -m pip install --quiet "flwr[simulation]"
# lightning_fl itself, editable and without deps (torch/lightning come from the system).
"$venv/bin/python" -m pip install --quiet --no-deps -e "$repo"
"$venv/bin/python" - <<'PY'
import flwr, ray, torch, lightning, lightning_fl
print(f"flwr {flwr.__version__}, ray {ray.__version__}, torch {torch.__version__}, "
      f"lightning {lightning.__version__}, lightning_fl {lightning_fl.__version__}")
PY
