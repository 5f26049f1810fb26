#!/usr/bin/env bash
# WMT'14 English-German: download (or --local DIR), tokenize, clean, 32K joint BPE, binarize.
# All options: prepare-wmt14en2de.sh -h (they are those of prepare-wmt14.sh).
set -euo pipefail
RECIPE_PROG=$(basename "$0") exec bash "$(dirname "${BASH_SOURCE[0]}")/prepare-wmt14.sh" --pair en-de "$@"
