#!/usr/bin/env bash
# The demo in one command on a fresh machine: set up .venv (once), then run the demo.
#
#   bash scripts/demo.sh [DEMO_ARGS...]        (python scripts/demo.py -h lists them)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install_env.sh .venv
exec .venv/bin/python scripts/demo.py "$@"
