#!/usr/bin/env bash
# WMT'14 English-German / English-French for fairseq: download (or read local raw files),
# normalise punctuation, tokenize, clean and length-filter, learn a joint BPE (subword-nmt) or a
# joint sentencepiece model, and binarize with `fairseq-preprocess --joined-dictionary`.
# Run through prepare-wmt14en2de.sh / prepare-wmt14en2fr.sh, or directly with --pair.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR
# shellcheck source=../common.sh
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"

usage() {
  cat << EOF
Usage: $PROG --pair en-de|en-fr [options]

Prepares WMT'14 English-German or English-French for fairseq. Stages (each skipped when its output folder is
complete, so a rerun resumes where an interrupted run stopped):
  download   the standard WMT'14 corpora into OUT/orig (skipped with --local)
  raw        OUT/raw/{train,valid,test}.{SRC,TGT}: training corpora concatenated,
             valid = newstest2013, test = newstest2014 (full, 3003 sentences)
  tokenize   OUT/tok: normalise punctuation, remove non-printing characters, tokenize
             (Moses rules, aggressive hyphen splitting; sacremoses, or the Moses perl scripts
             with --moses); with --sentencepiece only normalise
  clean      OUT/clean: training pairs with 1..MAX_LEN tokens a side and a length ratio of at
             most RATIO (Moses clean-corpus-n); valid and test kept whole
  bpe        OUT/bpe: joint subword-nmt BPE learned on both sides of the training data
             (or OUT/spm: a joint sentencepiece BPE model, with --sentencepiece)
  binarize   OUT/data-bin: fairseq-preprocess --joined-dictionary, plus the raw references
             (ref/), the BPE codes or sentencepiece model, and recipe.conf for generate.sh

Options:
  --pair P           en-de or en-fr (set by prepare-wmt14en2de.sh / prepare-wmt14en2fr.sh)
  --local DIR        read raw (untokenized) files from DIR instead of downloading:
                     DIR/train.{SRC,TGT}, DIR/newstest2013.{SRC,TGT}, DIR/newstest2014.{SRC,TGT}
  --out DIR          work and output folder (default: ./wmt14_SRC_TGT)
  --bpe-merges N     BPE merge operations (default: 32000 for en-de, 40000 for en-fr)
  --sentencepiece    a joint sentencepiece model (BPE type) instead of subword-nmt
  --vocab-size N     sentencepiece vocabulary size (default: 32000 en-de, 40000 en-fr)
  --train-lines N    use only the first N training pairs (default 0: all; for smoke tests)
  --eval-lines N     use only the first N lines of newstest2013/2014 (default 0: all)
  --max-len N        length filter, tokens per side (default 250)
  --ratio R          length-ratio filter (default 1.5)
  --moses DIR        use the Moses perl scripts in DIR (mosesdecoder/scripts) to normalise
                     and tokenize instead of sacremoses
  --workers N        processes for tokenization, BPE and binarization (default: cores, <= 16)
  -h, --help         this help

Requires (from PATH): python, sacremoses, subword-nmt, fairseq-preprocess (and wget or curl
to download); set up with: bash scripts/install_env.sh && source .venv/bin/activate
EOF
}

PAIR="" LOCAL="" OUT="" MERGES="" SPM=0 VOCAB="" TRAIN_LINES=0 EVAL_LINES=0 MAX_LEN=250
RATIO=1.5 MOSES="" WORKERS=""
while (( $# )); do
  case "$1" in
    --sentencepiece) SPM=1; shift; continue ;;
    -h|--help) usage; exit 0 ;;
    --pair|--local|--out|--bpe-merges|--vocab-size|--train-lines|--eval-lines|--max-len|--ratio|\
    --moses|--workers)
      need_value "$@" ;;
    *) unknown_option "$1" ;;
  esac
  case "$1" in
    --pair) PAIR=$2 ;;
    --local) LOCAL=$2 ;;
    --out) OUT=$2 ;;
    --bpe-merges) MERGES=$2 ;;
    --vocab-size) VOCAB=$2 ;;
    --train-lines) TRAIN_LINES=$2 ;;
    --eval-lines) EVAL_LINES=$2 ;;
    --max-len) MAX_LEN=$2 ;;
    --ratio) RATIO=$2 ;;
    --moses) MOSES=$2 ;;
    --workers) WORKERS=$2 ;;
  esac
  shift 2
done

case "$PAIR" in
  en-de) SRC=en TGT=de DEFAULT_MERGES=32000 ;;
  en-fr) SRC=en TGT=fr DEFAULT_MERGES=40000 ;;
  *) bad_arg --pair "got '$PAIR'; allowed: en-de, en-fr" ;;
esac
MERGES=${MERGES:-$DEFAULT_MERGES}
VOCAB=${VOCAB:-$DEFAULT_MERGES}
WORKERS=${WORKERS:-$(nproc_or 16)}
OUT=${OUT:-wmt14_${SRC}_${TGT}}

# Every value is checked before --out is made or anything is read: numbers ...
check_count --bpe-merges "$MERGES" 1
check_count --vocab-size "$VOCAB" 1
check_count --workers "$WORKERS" 1
check_count --train-lines "$TRAIN_LINES" 0
check_count --eval-lines "$EVAL_LINES" 0
check_count --max-len "$MAX_LEN" 1
check_positive --ratio "$RATIO"
# ... the raw (untokenized) files of --local ...
if [[ -n "$LOCAL" ]]; then
  check_local_files --local "$LOCAL" "the raw (untokenized) files" "train.$SRC" "train.$TGT" \
    "newstest2013.$SRC" "newstest2013.$TGT" "newstest2014.$SRC" "newstest2014.$TGT"
  LOCAL=$(cd "$LOCAL" && pwd)
fi
# ... the Moses scripts, --out and the tools
[[ -z "$MOSES" ]] || [[ -f "$MOSES/tokenizer/tokenizer.perl" ]] \
  || bad_arg --moses "got '$MOSES', which has no tokenizer/tokenizer.perl; allowed: the scripts \
folder of mosesdecoder (mosesdecoder/scripts)"
[[ ! -e "$OUT" || -d "$OUT" ]] || bad_arg --out "got '$OUT', not a folder; allowed: a folder, \
made where it does not exist"
require python fairseq-preprocess
(( SPM )) || require subword-nmt
[[ -n "$MOSES" ]] || require sacremoses
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
log "WMT'14 $SRC-$TGT -> $OUT ($( (( SPM )) && echo "sentencepiece $VOCAB" || echo "BPE $MERGES merges"),\
 source: ${LOCAL:-download})"

# ---------------------------------------------------------------------------------------------
# download
# ---------------------------------------------------------------------------------------------
# The corpora of Vaswani et al. (2017) / Ott et al. (2018): WMT'14 Europarl v7, Common Crawl
# and News Commentary v9 for En-De (4.5M pairs); plus the UN corpus and the 10^9 French-English
# corpus (giga-fren) for En-Fr (36M pairs). The URLs of fairseq's prepare-wmt14en2*.sh.
ORIG=$OUT/orig
if [[ "$PAIR" == en-de ]]; then
  URLS=(
    "http://statmt.org/wmt13/training-parallel-europarl-v7.tgz"
    "http://statmt.org/wmt13/training-parallel-commoncrawl.tgz"
    "http://statmt.org/wmt14/training-parallel-nc-v9.tgz"
    "http://data.statmt.org/wmt17/translation-task/dev.tgz"
    "http://statmt.org/wmt14/test-full.tgz"
  )
  CORPORA=(training/europarl-v7.de-en commoncrawl.de-en training/news-commentary-v9.de-en)
  TEST_SGM=test-full/newstest2014-deen
else
  URLS=(
    "http://statmt.org/wmt13/training-parallel-europarl-v7.tgz"
    "http://statmt.org/wmt13/training-parallel-commoncrawl.tgz"
    "http://statmt.org/wmt13/training-parallel-un.tgz"
    "http://statmt.org/wmt14/training-parallel-nc-v9.tgz"
    "http://statmt.org/wmt10/training-giga-fren.tar"
    "http://data.statmt.org/wmt17/translation-task/dev.tgz"
    "http://statmt.org/wmt14/test-full.tgz"
  )
  CORPORA=(training/europarl-v7.fr-en commoncrawl.fr-en un/undoc.2000.fr-en
           training/news-commentary-v9.fr-en giga-fren.release2.fixed)
  TEST_SGM=test-full/newstest2014-fren
fi

if [[ -z "$LOCAL" ]] && need_stage download "$ORIG"; then
  for url in "${URLS[@]}"; do
    download "$url" "$ORIG/$(basename "$url")"
    extract "$ORIG/$(basename "$url")" "$ORIG"
  done
  if [[ "$PAIR" == en-fr ]]; then
    for l in $SRC $TGT; do
      f=$ORIG/giga-fren.release2.fixed.$l
      [[ -s "$f" ]] || { log "  gunzip $(basename "$f").gz"; gunzip -c "$f.gz" > "$f.part"; mv "$f.part" "$f"; }
    done
  fi
  stage_done "$ORIG"
fi

# ---------------------------------------------------------------------------------------------
# raw: train / valid / test as plain text, one sentence a line
# ---------------------------------------------------------------------------------------------
# sgm_text FILE: the segments of a WMT .sgm file (as sacrebleu reads them: markup removed).
sgm_text() {
  grep '<seg id' "$1" | sed -e 's/<seg id="[0-9]*">[[:space:]]*//' -e 's/[[:space:]]*<\/seg>[[:space:]]*$//'
}

RAW=$OUT/raw
if need_stage raw "$RAW"; then
  for l in $SRC $TGT; do
    if [[ -n "$LOCAL" ]]; then
      head_files "$TRAIN_LINES" "$LOCAL/train.$l" > "$RAW/train.$l"
      head_files "$EVAL_LINES" "$LOCAL/newstest2013.$l" > "$RAW/valid.$l"
      head_files "$EVAL_LINES" "$LOCAL/newstest2014.$l" > "$RAW/test.$l"
    else
      files=()
      for c in "${CORPORA[@]}"; do files+=("$ORIG/$c.$l"); done
      head_files "$TRAIN_LINES" "${files[@]}" > "$RAW/train.$l"
      head_files "$EVAL_LINES" "$ORIG/dev/newstest2013.$l" > "$RAW/valid.$l"
      if [[ $l == "$SRC" ]]; then t=src; else t=ref; fi
      sgm_text "$ORIG/$TEST_SGM-$t.$l.sgm" > "$RAW/test.sgm.$l"
      head_files "$EVAL_LINES" "$RAW/test.sgm.$l" > "$RAW/test.$l"
      rm "$RAW/test.sgm.$l"
    fi
  done
  for split in train valid test; do
    n_src=$(wc -l < "$RAW/$split.$SRC") n_tgt=$(wc -l < "$RAW/$split.$TGT")
    [[ "$n_src" == "$n_tgt" ]] || die "$RAW/$split: $n_src $SRC lines but $n_tgt $TGT lines"
    log "  $split: $n_src pairs"
  done
  stage_done "$RAW"
fi

# ---------------------------------------------------------------------------------------------
# tokenize (or only normalise, for sentencepiece)
# ---------------------------------------------------------------------------------------------
# preprocess_stream LANG: stdin -> stdout, Moses normalize-punctuation + remove-non-printing-char
# (+ tokenizer -a unless sentencepiece). preprocess_file runs it on shards of the input, WORKERS
# shards at a time (sacremoses also reads its whole input into memory: shards bound that).
preprocess_stream() {
  local l=$1
  if [[ -n "$MOSES" ]]; then
    if (( SPM )); then
      perl "$MOSES/tokenizer/normalize-punctuation.perl" -l "$l" \
        | perl "$MOSES/tokenizer/remove-non-printing-char.perl"
    else
      perl "$MOSES/tokenizer/normalize-punctuation.perl" -l "$l" \
        | perl "$MOSES/tokenizer/remove-non-printing-char.perl" \
        | perl "$MOSES/tokenizer/tokenizer.perl" -q -a -l "$l"
    fi
  elif (( SPM )); then
    sacremoses -q -l "$l" -j 1 normalize -c
  else
    sacremoses -q -l "$l" -j 1 normalize -c tokenize -a
  fi
}
export -f preprocess_stream
export MOSES SPM

preprocess_file() {  # LANG IN OUT
  local l=$1 in=$2 out=$3 shards lines shard
  lines=$(wc -l < "$in")
  shard=$(( (lines + WORKERS - 1) / WORKERS ))
  (( shard < 20000 )) && shard=20000
  (( shard > 500000 )) && shard=500000
  shards=$(mktemp -d "$out.shards.XXXX")
  split -l "$shard" -d -a 4 "$in" "$shards/in."
  # shellcheck disable=SC2016  # $1, $2 expand in the inner bash
  find "$shards" -name 'in.*' | sort | xargs -r -P "$WORKERS" -I{} \
    bash -c 'set -euo pipefail; preprocess_stream "$1" < "$2" > "${2%/*}/out.${2##*/in.}"' _ "$l" {}
  find "$shards" -name 'out.*' | sort | xargs -r cat > "$out"
  [[ $(wc -l < "$out") == "$lines" ]] || die "preprocessing $in lost lines"
  rm -r "$shards"
}

TOK=$OUT/tok
if need_stage tokenize "$TOK"; then
  rm -rf "$TOK"/*.shards.*  # left by an interrupted run
  for split in train valid test; do
    for l in $SRC $TGT; do
      log "  $split.$l"
      preprocess_file "$l" "$RAW/$split.$l" "$TOK/$split.$l"
    done
  done
  stage_done "$TOK"
fi

# ---------------------------------------------------------------------------------------------
# clean: the filter of Moses clean-corpus-n (1..MAX_LEN tokens a side, ratio <= RATIO) on the
# training pairs; whitespace normalised everywhere (valid and test keep all their lines)
# ---------------------------------------------------------------------------------------------
clean_pairs() {  # MIN MAX RATIO IN_SRC IN_TGT OUT_SRC OUT_TGT
  python - "$@" << 'PY'
import sys
lo, hi, ratio = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
open_ = lambda path, mode: open(path, mode, encoding="utf-8", errors="surrogateescape", newline="\n")
kept = total = 0
with open_(sys.argv[4], "r") as fs, open_(sys.argv[5], "r") as ft, \
        open_(sys.argv[6], "w") as gs, open_(sys.argv[7], "w") as gt:
    for s in fs:
        t = ft.readline()
        if not t:
            sys.exit(f"{sys.argv[4]} has more lines than {sys.argv[5]}")
        s, t = s.split(), t.split()
        total += 1
        if lo > 0 and not (lo <= len(s) <= hi and lo <= len(t) <= hi
                           and len(s) <= ratio * len(t) and len(t) <= ratio * len(s)):
            continue
        kept += 1
        gs.write(" ".join(s) + "\n")
        gt.write(" ".join(t) + "\n")
    if ft.readline():
        sys.exit(f"{sys.argv[5]} has more lines than {sys.argv[4]}")
print(f"kept {kept} of {total} pairs")
PY
}

CLEAN=$OUT/clean
if need_stage clean "$CLEAN"; then
  msg=$(clean_pairs 1 "$MAX_LEN" "$RATIO" "$TOK/train.$SRC" "$TOK/train.$TGT" \
    "$CLEAN/train.$SRC" "$CLEAN/train.$TGT")
  log "  train: $msg"
  for split in valid test; do
    msg=$(clean_pairs 0 0 0 "$TOK/$split.$SRC" "$TOK/$split.$TGT" \
      "$CLEAN/$split.$SRC" "$CLEAN/$split.$TGT")
    log "  $split: $msg"
  done
  stage_done "$CLEAN"
fi

# ---------------------------------------------------------------------------------------------
# bpe / spm: joint subword segmentation
# ---------------------------------------------------------------------------------------------
if (( SPM )); then
  SEG=$OUT/spm
  if need_stage sentencepiece "$SEG"; then
    log "  training a joint sentencepiece BPE model, vocabulary $VOCAB"
    cat "$CLEAN/train.$SRC" "$CLEAN/train.$TGT" > "$SEG/train.joint"
    python - "$SEG/train.joint" "$SEG/spm" "$VOCAB" "$WORKERS" << 'PY'
import sys
import sentencepiece as spm
text, prefix, vocab, threads = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
spm.SentencePieceTrainer.train(
    input=text, model_prefix=prefix, vocab_size=vocab, model_type="bpe", character_coverage=1.0,
    input_sentence_size=10_000_000, shuffle_input_sentence=True, num_threads=threads,
    hard_vocab_limit=False, minloglevel=2)
PY
    rm "$SEG/train.joint"
    for split in train valid test; do
      for l in $SRC $TGT; do
        log "  encoding $split.$l"
        python - "$SEG/spm.model" "$CLEAN/$split.$l" "$SEG/$split.$l" << 'PY'
import sys
import sentencepiece as spm
sp = spm.SentencePieceProcessor(model_file=sys.argv[1])
with open(sys.argv[2], encoding="utf-8", newline="\n") as f, \
        open(sys.argv[3], "w", encoding="utf-8", newline="\n") as g:
    for line in f:
        g.write(" ".join(sp.encode(line.rstrip("\n"), out_type=str)) + "\n")
PY
      done
    done
    stage_done "$SEG"
  fi
else
  SEG=$OUT/bpe
  if need_stage bpe "$SEG"; then
    log "  learning $MERGES joint BPE merges"
    cat "$CLEAN/train.$SRC" "$CLEAN/train.$TGT" \
      | subword-nmt learn-bpe -s "$MERGES" --num-workers "$WORKERS" > "$SEG/code"
    for split in train valid test; do
      for l in $SRC $TGT; do
        log "  applying BPE to $split.$l"
        subword-nmt apply-bpe -c "$SEG/code" --num-workers "$WORKERS" \
          -i "$CLEAN/$split.$l" -o "$SEG/$split.$l"
      done
    done
    stage_done "$SEG"
  fi
fi

# ---------------------------------------------------------------------------------------------
# binarize
# ---------------------------------------------------------------------------------------------
BIN=$OUT/data-bin
if need_stage binarize "$BIN"; then
  rm -rf "$BIN"
  fairseq-preprocess --source-lang "$SRC" --target-lang "$TGT" \
    --trainpref "$SEG/train" --validpref "$SEG/valid" --testpref "$SEG/test" \
    --destdir "$BIN" --joined-dictionary --workers "$WORKERS"
  mkdir -p "$BIN/ref"
  for split in valid test; do
    for l in $SRC $TGT; do cp "$RAW/$split.$l" "$BIN/ref/$split.$l"; done
  done
  if (( SPM )); then
    cp "$SEG/spm.model" "$SEG/spm.vocab" "$BIN/"
    segmentation=sentencepiece
  else
    cp "$SEG/code" "$BIN/code"
    segmentation=subword_nmt
  fi
  cat > "$BIN/recipe.conf" << EOF
pair=$PAIR
src=$SRC
tgt=$TGT
segmentation=$segmentation
EOF
  stage_done "$BIN"
fi
log "done: binarized data in $BIN ($(wc -l < "$BIN/dict.$SRC.txt") joined dictionary entries)"
log "next: bash $(dirname "$0")/train.sh $BIN"
