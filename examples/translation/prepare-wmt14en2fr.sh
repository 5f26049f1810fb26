#!/usr/bin/env bash
# WMT'14 English-French: download (or --local DIR), tokenize, clean, 40K joint BPE, binarize.
# All options: prepare-wmt14en2fr.sh -h (they are those of prepare-wmt14.sh).
set -euo pipefail
RECIPE_PROG=$(basename "$0") exec bash "$(dirname "${BASH_SOURCE[0]}")/prepare-wmt14.sh" --pair en-fr "$@"
