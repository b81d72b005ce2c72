#!/usr/bin/env bash
# Sets up a fresh machine: Debian packages for the speech corpus (espeak-ng, flite, sox),
# a virtual environment in .venv with torch installed first and pinned, then this project.
# Usage: bash setup.sh        (idempotent; re-running only fills in what is missing)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

need_apt=()
for tool in espeak-ng flite sox; do
    command -v "$tool" >/dev/null 2>&1 || need_apt+=("$tool")
done
if [ "${#need_apt[@]}" -gt 0 ]; then
    if [ "$(id -u)" = 0 ]; then SUDO=""; elif command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
        echo "setup.sh: missing ${need_apt[*]}; install them with: apt-get install -y espeak-ng flite sox" >&2
        exit 1
    fi
    echo "setup.sh: installing Debian packages: ${need_apt[*]}"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
# torch first: TORCH_SPEC lets GPU users pick their build; the default is the 2.13.0 wheel.
.venv/bin/python -c "import torch" 2>/dev/null || .venv/bin/pip install -q "${TORCH_SPEC:-torch==2.13.0}"
torch_version=$(.venv/bin/python -c "import torch; print(torch.__version__.split('+')[0])")
echo "torch==${torch_version}" > .venv/torch-constraint.txt
.venv/bin/pip install -q -c .venv/torch-constraint.txt -e ".[dev]"
echo "setup.sh: ready (.venv, torch ${torch_version})"
