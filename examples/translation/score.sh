#!/usr/bin/env bash
# BLEU of a fairseq-generate output, two ways: detokenized SacreBLEU (the comparable metric) and
# the tokenized, compound-split BLEU of Vaswani et al. (2017) / Ott et al. (2018).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR
# shellcheck source=../common.sh
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"

usage() {
  cat << EOF
Usage: $PROG [options] GEN_OUT DATA_BIN

Scores the hypotheses (H- lines) of GEN_OUT, a fairseq-generate output for DATA_BIN (binarized by
prepare-wmt14en2{de,fr}.sh, which keeps the raw references in DATA_BIN/ref/):
  1. SacreBLEU on detokenized output against the raw reference (sacremoses detokenizer for
     BPE data, sentencepiece output as is); prints sacrebleu's signature with the score. This is
     the number to compare across papers (Post, 2018).
  2. Tokenized, compound-split BLEU, the number of Vaswani et al. (2017), Ott et al. (2018)
     and the Mixtape paper: hypothesis and reference Moses-tokenized (sacremoses), hyphenated
     compounds split ("a-b" -> "a ##AT##-##AT## b", tensor2tensor's get_ende_bleu.sh and
     fairseq's compound_split_bleu.sh), case-sensitive BLEU without smoothing (multi-bleu.perl;
     sacrebleu --tokenize none --smooth-method none). Higher than SacreBLEU, and not comparable
     with it.
Writes GEN_OUT.{hyp,detok,ref.atat,hyp.atat} and GEN_OUT.bleu.

Options:
  --subset S    which references: test (default) or valid
  --ref FILE    a reference file instead of DATA_BIN/ref/SUBSET.TGT
  -h, --help    this help
EOF
}

SUBSET=test REF="" POSITIONAL=()
while (( $# )); do
  case "$1" in
    --subset) need_value "$@"; check_choice "$1" "$2" test valid; SUBSET=$2; shift 2 ;;
    --ref) need_value "$@"; REF=$2; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    -*) unknown_option "$1" ;;
    *) POSITIONAL+=("$1"); shift ;;
  esac
done
(( ${#POSITIONAL[@]} == 2 )) || bad_arg "GEN_OUT DATA_BIN" "got '${POSITIONAL[*]}'; \
allowed: two arguments, a fairseq-generate output and its data folder"
GEN=${POSITIONAL[0]} DATA=${POSITIONAL[1]}
check_file GEN_OUT "$GEN" "a fairseq-generate output"
check_local_files DATA_BIN "$DATA" \
  "data prepared by prepare-wmt14en2de.sh or prepare-wmt14en2fr.sh" recipe.conf
if [[ -n "$REF" ]]; then check_file --ref "$REF" "a reference file"; fi
require sacrebleu sacremoses
SRC=$(conf_get src "$DATA/recipe.conf") TGT=$(conf_get tgt "$DATA/recipe.conf")
SEGMENTATION=$(conf_get segmentation "$DATA/recipe.conf")
REF=${REF:-$DATA/ref/$SUBSET.$TGT}
[[ -f "$REF" ]] || die "no reference $REF"

log "scoring $GEN against $REF"
# Hypotheses in the order of the test set (fairseq-generate prints them as batches finish).
grep '^H-' "$GEN" | sed 's/^H-//' | sort -n -k 1,1 | cut -f 3- > "$GEN.hyp"
n_hyp=$(wc -l < "$GEN.hyp") n_ref=$(wc -l < "$REF")
[[ "$n_hyp" == "$n_ref" ]] || die "$n_hyp hypotheses but $n_ref reference lines"

if [[ $SEGMENTATION == sentencepiece ]]; then
  cp "$GEN.hyp" "$GEN.detok"
else
  sacremoses -q -l "$TGT" -j 1 detokenize < "$GEN.hyp" > "$GEN.detok"
fi

# 1. detokenized SacreBLEU, with its signature
SACREBLEU=$(sacrebleu "$REF" -i "$GEN.detok" -l "$SRC-$TGT" -m bleu -f text)

# 2. tokenized, compound-split BLEU (LC_ALL=C: the byte-wise \S of perl -ple in
#    compound_split_bleu.sh)
compound_split() {
  sacremoses -q -l "$TGT" -j 1 tokenize | LC_ALL=C sed -E 's/([^[:space:]])-([^[:space:]])/\1 ##AT##-##AT## \2/g'
}
compound_split < "$REF" > "$GEN.ref.atat"
compound_split < "$GEN.detok" > "$GEN.hyp.atat"
TOKENIZED=$(sacrebleu "$GEN.ref.atat" -i "$GEN.hyp.atat" -m bleu -f text --tokenize none \
  --smooth-method none)

{
  echo "SacreBLEU (detokenized): $SACREBLEU"
  echo "Tokenized compound-split BLEU (papers' convention): $TOKENIZED"
} | tee "$GEN.bleu"
