#!/usr/bin/env bash
# Set up a virtual environment with a CPU (or the machine's) torch, fairseq and this plugin.
#
#   bash scripts/install_env.sh [VENV_DIR]      (default: .venv)
#
# fairseq is installed with --no-deps and its real dependencies listed here, because its
# declared `torchaudio` dependency would make pip replace an installed torch with a CUDA build
# pinned by the newest torchaudio (several GB); fairseq's text paths never import torchaudio.
set -euo pipefail
# One optional argument, the folder; -h prints the comment above; an option or a second argument
# is refused before anything is made (it would otherwise become a folder named "--help").
if (( $# )) && [[ $1 == -h || $1 == --help ]]; then
  echo "Usage: $(basename "$0") [VENV_DIR]   (default: .venv)"
  sed -n '2,/^[^#]/{/^#/s/^# \{0,1\}//p}' "$0"
  exit 0
fi
if (( $# > 1 )) || [[ ${1:-} == -* ]]; then
  printf '%s: error: %s: unknown argument; allowed: one folder for the virtual environment ' \
    "$(basename "$0")" "${@: -1}" >&2
  printf '(default: .venv; -h: what the script does)\n' >&2
  exit 2
fi
cd "$(dirname "$0")/.."
VENV=${1:-.venv}
PY=${PYTHON:-python3}

if [[ ! -x "$VENV/bin/python" ]]; then
  echo "[install] creating virtual environment $VENV"
  "$PY" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip install --quiet)

# Nothing to do when the environment was set up from these same files and still imports this
# checkout's plugin (a stamp of what went in; any change of them installs again).
STAMP="$VENV/.fairseq-mixtape-install"
WANTED=$(cat requirements.txt setup.py "$0" | sha256sum | cut -d' ' -f1)-${TORCH_SPEC:-default}
if [[ -f $STAMP && $(cat "$STAMP") == "$WANTED" ]] && "$VENV/bin/python" -c "
import os, sys
from importlib.util import find_spec  # finds the packages without importing torch
plugin = find_spec('fairseq_mixtape')
sys.exit(not find_spec('fairseq') or not plugin
         or os.path.dirname(os.path.dirname(plugin.origin)) != os.getcwd())" 2>/dev/null
then
  echo "[install] up to date ($VENV, set up from these requirements.txt and setup.py)"
  exit 0
fi
rm -f "$STAMP"

echo "[install] build tools, numpy, torch (${TORCH_SPEC:=torch==2.13.0})"
"${PIP[@]}" --upgrade pip setuptools wheel
"${PIP[@]}" numpy cython "$TORCH_SPEC"

if "$VENV/bin/python" -c "import sys; sys.exit(sys.version_info < (3, 11))"; then
  FAIRSEQ=fairseq-fixed==0.12.3.1      # official fairseq 0.12.2 does not run on Python >= 3.11
else
  FAIRSEQ=fairseq==0.12.2
fi
if ! "$VENV/bin/python" -c "import fairseq" 2>/dev/null; then
  echo "[install] $FAIRSEQ (builds from source, a few minutes the first time)"
  "${PIP[@]}" --no-build-isolation --no-deps "$FAIRSEQ"
fi

echo "[install] fairseq's runtime dependencies, the plugin and its test tools"
"${PIP[@]}" -r requirements.txt
"${PIP[@]}" --no-deps -e .
echo "$WANTED" > "$STAMP"
echo "[install] done: $("$VENV/bin/python" -c 'import torch, fairseq; print("torch", torch.__version__, "fairseq", fairseq.__version__)')"
