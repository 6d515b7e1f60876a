#!/usr/bin/env bash
# Create the separate virtualenv for the TRL peer benchmark (benchmarks/vs_trl.py).
#
#   bash benchmarks/setup_trl_venv.sh [VENV_DIR]          # default /work/venvs/trl
#
# TRL 0.23.1 is the last release that ships DDPOTrainer. It lives in its own virtualenv so that it
# never touches the main environment. The venv is made with --system-site-packages: it sees the main
# environment's exact pins (torch, diffusers, transformers, accelerate, peft, ...) and the editable
# vgrl (the TRL run scores with vgrl's shapes checker), and every install is constrained by
# requirements.txt, so pip cannot replace torch (an unpinned torch would pull a multi-GB CUDA build)
# or any other pinned package. Only trl and its own extra dependencies (datasets, ...) land in the venv.
set -euo pipefail

VENV="${1:-/work/venvs/trl}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"

if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv --system-site-packages "$VENV"
fi
# Explicit pins: torch stays the CPU build of requirements.txt; peft is needed by TRL's LoRA pipeline
# but is not a dependency TRL declares.
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
  -c "$ROOT/requirements.txt" \
  "trl==0.23.1" "peft==0.21.2" "torch==2.13.0"

# Fail here, not in the benchmark, if anything is off.
"$VENV/bin/python" - <<'EOF'
import torch, trl, peft, diffusers, transformers, accelerate
from trl import DDPOConfig, DDPOTrainer, DefaultDDPOStableDiffusionPipeline  # noqa: F401
import vgrl  # noqa: F401  (the reward: the shapes checker)
assert torch.__version__.startswith("2.13.0"), torch.__version__
print(f"TRL venv ok: trl {trl.__version__}, peft {peft.__version__}, torch {torch.__version__}, "
      f"diffusers {diffusers.__version__}, transformers {transformers.__version__}, accelerate {accelerate.__version__}")
EOF
