#!/usr/bin/env bash
# Install flowkit (editable) with its test tools into the current Python environment.
# Where no torch is installed yet, torch 2.13.0 is installed first: flowkit needs torch>=2.4, and
# pinning the version keeps pip from pulling the newest build with several GB of CUDA packages
# on machines that ship a local CPU build of 2.13.0. An installed torch (CPU or CUDA) is kept.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python}"
if ! "$PYTHON" -c "import torch" >/dev/null 2>&1; then
    "$PYTHON" -m pip install --quiet "torch==2.13.0"
fi
"$PYTHON" -m pip install --quiet -e ".[dev]"
"$PYTHON" -c "import torch, flowkit; print(f'flowkit {flowkit.__version__} with torch {torch.__version__} installed')"
