#!/usr/bin/env bash
# SkyPilot `setup` for every sky/*.yaml, on every node: a Python 3.11 venv (what requirements.lock is
# resolved for, whatever Python the VM image has) with the hashed lock and then the project without
# dependencies, the same install as the Dockerfile's. Safe to run again on an existing cluster.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="$HOME/dpo-venv"
UV_VERSION=0.13.9

python3 -m pip install --quiet "uv==$UV_VERSION"
python3 -m uv venv --python 3.11 --allow-existing "$VENV"  # uv fetches Python 3.11 if the image lacks it
python3 -m uv pip install --python "$VENV/bin/python" --require-hashes --no-deps -r requirements.lock
python3 -m uv pip install --python "$VENV/bin/python" --no-deps --no-build-isolation --reinstall-package dpo-job .
if [ -n "${VLLM_VERSION:-}" ]; then  # sky/rlaif_v_onpolicy_vllm.yaml: vLLM pins its own torch, so its own venv
  python3 -m uv venv --python 3.11 --allow-existing "$HOME/vllm-venv"
  python3 -m uv pip install --python "$HOME/vllm-venv/bin/python" "vllm==$VLLM_VERSION"
fi
"$VENV/bin/python" -m entrypoint --help > /dev/null  # the job imports: a broken install fails setup, not the run
