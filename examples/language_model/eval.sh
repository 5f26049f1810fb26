#!/usr/bin/env bash
# Perplexity of a language model trained by train.sh, with fairseq-eval-lm.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR
# shellcheck source=../common.sh
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"

usage() {
  cat << EOF
Usage: $PROG [options] DATA_BIN SAVE_DIR [-- extra fairseq-eval-lm arguments]

Evaluates SAVE_DIR/checkpoint_best.pt (or --checkpoint) on the test set with fairseq-eval-lm,
in blocks of the training run's --tokens-per-sample (SAVE_DIR/recipe.conf) that overlap by
--context-window tokens, so that every scored token has at least that much context (Baevski &
Auli 2019 evaluate WikiText-103 with 3072-token blocks and a 2560-token context window).
Perplexity is per token, end-of-sentence tokens included (the usual PTB convention). Prints
the perplexity and writes the log to SAVE_DIR/eval.SUBSET.CHECKPOINT.log; skipped when that
log is newer than the checkpoint.

Options:
  --checkpoint FILE    (default SAVE_DIR/checkpoint_best.pt)
  --subset S           test (default) or valid
  --context-window N   (default: half the block for ptb-*, 2560 for wikitext-103, 0 for gbw,
                       whose samples are single sentences)
  --max-tokens N       tokens per batch (default 4096; MoS holds K x V scores per token)
  --fp16               half precision (GPU)
  --cpu                evaluate on CPU (default when no GPU is visible)
  -h, --help           this help
EOF
}

CHECKPOINT="" SUBSET=test CONTEXT="" MAX_TOKENS=4096 FP16=0 CPU="" POSITIONAL=() EXTRA=()
while (( $# )); do
  case "$1" in
    --checkpoint) need_value "$@"; CHECKPOINT=$2; shift 2 ;;
    --subset) need_value "$@"; check_choice "$1" "$2" test valid; SUBSET=$2; shift 2 ;;
    --context-window) need_value "$@"; check_count "$1" "$2" 0; CONTEXT=$2; shift 2 ;;
    --max-tokens) need_value "$@"; check_count "$1" "$2" 1; MAX_TOKENS=$2; shift 2 ;;
    --fp16) FP16=1; shift ;;
    --cpu) CPU=1; shift ;;
    -h|--help) usage; exit 0 ;;
    --) shift; EXTRA=("$@"); break ;;
    -*) unknown_option "$1" ;;
    *) POSITIONAL+=("$1"); shift ;;
  esac
done
(( ${#POSITIONAL[@]} == 2 )) || bad_arg "DATA_BIN SAVE_DIR" "got '${POSITIONAL[*]}'; \
allowed: two arguments, the data folder and the training run's folder"
DATA=${POSITIONAL[0]} SAVE_DIR=${POSITIONAL[1]}
check_local_files DATA_BIN "$DATA" "binarized LM data (prepare.sh)" dict.txt
check_local_files SAVE_DIR "$SAVE_DIR" "the files of a train.sh run" recipe.conf
if [[ -n "$CHECKPOINT" ]]; then
  check_file --checkpoint "$CHECKPOINT" "a checkpoint file"
else
  CHECKPOINT=$SAVE_DIR/checkpoint_best.pt
  [[ -f "$CHECKPOINT" ]] || bad_arg SAVE_DIR "got '$SAVE_DIR', which has no checkpoint_best.pt; \
allowed: a finished training run's folder, or --checkpoint FILE"
fi
require fairseq-eval-lm python
TOKENS=$(conf_get tokens_per_sample "$SAVE_DIR/recipe.conf")
BREAK=$(conf_get sample_break_mode "$SAVE_DIR/recipe.conf")
PRESET=$(conf_get preset "$SAVE_DIR/recipe.conf")
if [[ -z "$CONTEXT" ]]; then
  case "$PRESET" in
    wikitext-103) CONTEXT=$(( TOKENS > 2560 ? 2560 : TOKENS / 2 )) ;;
    gbw) CONTEXT=0 ;;
    *) CONTEXT=$(( TOKENS / 2 )) ;;
  esac
fi
if [[ -z "$CPU" ]]; then
  if (( $(visible_gpus) > 0 )); then CPU=0; else CPU=1; fi
fi

LOG=$SAVE_DIR/eval.$SUBSET.$(basename "$CHECKPOINT" .pt).log
# --required-batch-size-multiple 1: fairseq after 0.12.2 (fairseq-fixed too) drops the last
# batch when its size is not a multiple of this (8 by default), i.e. part of the test set.
ARGS=("$DATA" --user-dir "$USER_DIR" --task language_modeling --path "$CHECKPOINT"
      --gen-subset "$SUBSET" --tokens-per-sample "$TOKENS" --sample-break-mode "$BREAK"
      --context-window "$CONTEXT" --max-tokens "$MAX_TOKENS" --required-batch-size-multiple 1
      --num-workers 0 --skip-invalid-size-inputs-valid-test)
if (( FP16 )); then ARGS+=(--fp16); fi
if (( CPU )); then ARGS+=(--cpu); fi
ARGS+=("${EXTRA[@]}")
if [[ -f "$LOG" && "$LOG" -nt "$CHECKPOINT" ]] && grep -q 'Perplexity' "$LOG" \
    && [[ "$(cat "$LOG.args" 2> /dev/null)" == "${ARGS[*]}" ]]; then
  log "evaluated already ($LOG), skipped"
else
  log "evaluating $CHECKPOINT on $SUBSET: $TOKENS-token blocks, context window $CONTEXT"
  fairseq-eval-lm "${ARGS[@]}" > "$LOG.part" 2>&1 || { cat "$LOG.part" >&2; die "fairseq-eval-lm failed"; }
  mv "$LOG.part" "$LOG"
  printf '%s' "${ARGS[*]}" > "$LOG.args"
fi
grep 'Evaluated' "$LOG" | sed 's/^.*| //; s/^INFO:[^:]*://' | tail -n 1
RESULT=$(grep 'Perplexity' "$LOG" | tail -n 1 | sed 's/^.*| //; s/^INFO:[^:]*://')
echo "fairseq-eval-lm $SUBSET ($(basename "$CHECKPOINT")): $RESULT"
