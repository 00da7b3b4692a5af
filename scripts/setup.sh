#!/usr/bin/env bash
# Creates .venv and installs the project with its test tools.
# On a machine without an NVIDIA GPU, torch is installed first as the CPU build (TORCH_CPU_SPEC, default
# torch==2.13.0, which this workplace's package index serves as a CPU wheel), so pip does not pull the CUDA stack.
# On a GPU machine the project's own torch range applies: install the torch build for your CUDA first if needed.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$python" -m venv .venv
pip_install() {
  # this machine's pip config lists local indexes that warn for every package they lack: keep the log readable,
  # and keep pip's exit status (pipefail)
  .venv/bin/python -m pip install --quiet --disable-pip-version-check "$@" 2>&1 | { grep -v "^WARNING: Location" || true; }
}
if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi >/dev/null 2>&1; then
  echo "setup: no NVIDIA GPU found, installing the CPU build of torch (${TORCH_CPU_SPEC:-torch==2.13.0})"
  pip_install "${TORCH_CPU_SPEC:-torch==2.13.0}"
fi
echo "setup: installing the project and its dependencies into .venv (a few minutes the first time)"
pip_install -e ".[test]"
.venv/bin/python -c "import pipeline, monai, torch, mlflow; print(f'setup: ok (torch {torch.__version__}, monai {monai.__version__}, mlflow {mlflow.__version__})')"
touch .venv/.installed
