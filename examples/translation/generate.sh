#!/usr/bin/env bash
# Average the last checkpoints of a run, translate newstest2014 with beam 4 / lenpen 0.6, and
# score (score.sh): detokenized SacreBLEU and the papers' tokenized, compound-split BLEU.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR
# shellcheck source=../common.sh
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"

usage() {
  cat << EOF
Usage: $PROG [options] DATA_BIN SAVE_DIR [-- extra fairseq-generate arguments]

Stages (each skipped when its output is newer than its inputs):
  average    SAVE_DIR/checkpoint.avgN.pt: the mean of the last N checkpoints
             (checkpoint_E_U.pt if the run saved them, else checkpoint<E>.pt), with
             $REPO_ROOT/scripts/average_checkpoints.py
  generate   SAVE_DIR/gen.SUBSET.<checkpoint>.out: fairseq-generate --beam 4 --lenpen 0.6
             --remove-bpe (as in Vaswani et al. 2017 and Ott et al. 2018)
  score      score.sh on that output (unless --no-score)

Options:
  --avg N            average the last N checkpoints (default 5; Ott et al.: the last 5-10)
  --checkpoint FILE  translate with FILE instead of an average (e.g. SAVE_DIR/checkpoint_best.pt)
  --subset S         test (newstest2014, default) or valid (newstest2013)
  --beam K           (default 4)
  --lenpen A         (default 0.6)
  --max-tokens N     tokens per batch (default 8192)
  --fp16             half precision (GPU)
  --cpu              generate on CPU (default when no GPU is visible)
  --no-score         stop after generating
  -h, --help         this help
EOF
}

AVG=5 CHECKPOINT="" SUBSET=test BEAM=4 LENPEN=0.6 MAX_TOKENS=8192 FP16=0 CPU="" SCORE=1
POSITIONAL=() EXTRA=()
while (( $# )); do
  case "$1" in
    --avg) need_value "$@"; check_count "$1" "$2" 1; AVG=$2; shift 2 ;;
    --checkpoint) need_value "$@"; CHECKPOINT=$2; shift 2 ;;
    --subset) need_value "$@"; check_choice "$1" "$2" test valid; SUBSET=$2; shift 2 ;;
    --beam) need_value "$@"; check_count "$1" "$2" 1; BEAM=$2; shift 2 ;;
    --lenpen)
      need_value "$@"
      [[ "$2" =~ ^-?([0-9]+\.?[0-9]*|\.[0-9]+)$ ]] || bad_arg "$1" "got '$2'; allowed: a number"
      LENPEN=$2; shift 2 ;;
    --max-tokens) need_value "$@"; check_count "$1" "$2" 1; MAX_TOKENS=$2; shift 2 ;;
    --fp16) FP16=1; shift ;;
    --cpu) CPU=1; shift ;;
    --no-score) SCORE=0; shift ;;
    -h|--help) usage; exit 0 ;;
    --) shift; EXTRA=("$@"); break ;;
    -*) unknown_option "$1" ;;
    *) POSITIONAL+=("$1"); shift ;;
  esac
done
(( ${#POSITIONAL[@]} == 2 )) || bad_arg "DATA_BIN SAVE_DIR" "got '${POSITIONAL[*]}'; \
allowed: two arguments, the data folder and the training run's folder"
DATA=${POSITIONAL[0]} SAVE_DIR=${POSITIONAL[1]}
check_local_files DATA_BIN "$DATA" \
  "data prepared by prepare-wmt14en2de.sh or prepare-wmt14en2fr.sh" recipe.conf
[[ -d "$SAVE_DIR" ]] || bad_arg SAVE_DIR "got '$SAVE_DIR', no such folder; allowed: the \
training run's folder"
if [[ -n "$CHECKPOINT" ]]; then check_file --checkpoint "$CHECKPOINT" "a checkpoint file"; fi
require fairseq-generate python
SRC=$(conf_get src "$DATA/recipe.conf") TGT=$(conf_get tgt "$DATA/recipe.conf")
SEGMENTATION=$(conf_get segmentation "$DATA/recipe.conf")
if [[ -z "$CPU" ]]; then
  if (( $(visible_gpus) > 0 )); then CPU=0; else CPU=1; fi
fi

# newer_than_all OUT IN...: OUT exists and is newer than every IN.
newer_than_all() {
  local out=$1 in
  shift
  [[ -e "$out" ]] || return 1
  for in in "$@"; do [[ "$out" -nt "$in" ]] || return 1; done
}

# --- average ---------------------------------------------------------------------------------
if [[ -z "$CHECKPOINT" ]]; then
  mapfile -t UPDATE_CKPTS < <(find "$SAVE_DIR" -maxdepth 1 -name 'checkpoint_*_*.pt' | sort -V)
  mapfile -t EPOCH_CKPTS < <(find "$SAVE_DIR" -maxdepth 1 -regex '.*/checkpoint[0-9]+\.pt' | sort -V)
  if (( ${#UPDATE_CKPTS[@]} >= AVG )); then
    KIND=update INPUTS=("${UPDATE_CKPTS[@]: -$AVG}")
  elif (( ${#EPOCH_CKPTS[@]} >= AVG )); then
    KIND=epoch INPUTS=("${EPOCH_CKPTS[@]: -$AVG}")
  else
    die "$SAVE_DIR has ${#UPDATE_CKPTS[@]} update and ${#EPOCH_CKPTS[@]} epoch checkpoints, \
fewer than --avg $AVG (use a smaller --avg or --checkpoint FILE)"
  fi
  CHECKPOINT=$SAVE_DIR/checkpoint.avg$AVG.pt
  if newer_than_all "$CHECKPOINT" "${INPUTS[@]}"; then
    log "stage average: $CHECKPOINT is up to date, skipped"
  else
    log "stage average: the last $AVG $KIND checkpoints -> $CHECKPOINT"
    python "$REPO_ROOT/scripts/average_checkpoints.py" --inputs "$SAVE_DIR" \
      "--num-$KIND-checkpoints" "$AVG" --output "$CHECKPOINT"
  fi
fi
[[ -f "$CHECKPOINT" ]] || die "no such checkpoint: $CHECKPOINT"

# --- generate --------------------------------------------------------------------------------
NAME=$(basename "$CHECKPOINT" .pt)
GEN=$SAVE_DIR/gen.$SUBSET.$NAME.out
if [[ $SEGMENTATION == sentencepiece ]]; then REMOVE_BPE=sentencepiece; else REMOVE_BPE=subword_nmt; fi
ARGS=("$DATA" --user-dir "$USER_DIR" --task translation --source-lang "$SRC" --target-lang "$TGT"
      --path "$CHECKPOINT" --gen-subset "$SUBSET" --beam "$BEAM" --lenpen "$LENPEN"
      --remove-bpe "$REMOVE_BPE" --max-tokens "$MAX_TOKENS" --num-workers 0
      --required-batch-size-multiple 1)
# (--required-batch-size-multiple 1: fairseq after 0.12.2, fairseq-fixed included, drops the
# last batch when its size is not a multiple of this, i.e. up to 7 test sentences by default)
if (( FP16 )); then ARGS+=(--fp16); fi
if (( CPU )); then ARGS+=(--cpu); fi
ARGS+=("${EXTRA[@]}")
if newer_than_all "$GEN" "$CHECKPOINT" && [[ "$(cat "$GEN.args" 2> /dev/null)" == "${ARGS[*]}" ]]; then
  log "stage generate: $GEN is up to date, skipped"
else
  log "stage generate: $SUBSET with $NAME, beam $BEAM, lenpen $LENPEN -> $GEN"
  fairseq-generate "${ARGS[@]}" > "$GEN.part"
  mv "$GEN.part" "$GEN"
  printf '%s' "${ARGS[*]}" > "$GEN.args"
  log "  $(grep -c '^H-' "$GEN") sentences translated; $(tail -n 1 "$GEN")"
fi

# --- score -----------------------------------------------------------------------------------
if (( SCORE )); then
  bash "$(dirname "${BASH_SOURCE[0]}")/score.sh" --subset "$SUBSET" "$GEN" "$DATA"
fi
