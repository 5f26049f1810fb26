#!/usr/bin/env bash
# The project's test command: sets up .venv (torch CPU, fairseq, the plugin) and runs pytest.
#
#   bash scripts/test.sh [PYTEST_ARGS...]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install_env.sh .venv
exec .venv/bin/python -m pytest tests -n 2 -rs "$@"
