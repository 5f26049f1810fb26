#!/usr/bin/env bash
# Train a language model with any fairseq-mixtape output layer on data prepared by prepare.sh:
# Penn Treebank (LSTM or small Transformer), WikiText-103 or One Billion Word (Transformer).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR
# shellcheck source=../common.sh
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"

usage() {
  cat << EOF
Usage: $PROG --preset P [options] DATA_BIN [-- extra fairseq-train arguments]

Presets (network, batch and optimiser; see README.md for where they come from):
  ptb-lstm          lstm_lm: 2 layers of 650 (Zaremba et al.'s medium model), tied embeddings,
                    dropout 0.5, 70-token blocks, 20 blocks a batch, Adam 0.001, 40 epochs
  ptb-transformer   transformer_lm: 4 layers of 256 (1024 FFN, 4 heads), tied, dropout 0.3,
                    128-token blocks, 4096 tokens a batch, Adam 0.0005 inverse_sqrt, 15k updates
  wikitext-103      the network of transformer_lm_wiki103 (Baevski & Auli 2019: 16 layers of
                    1024, adaptive input) with Baevski & Auli's schedule (NAG, cosine, 286k
                    updates of 8 GPUs x 3072 tokens x 3); the output layer replaces their
                    adaptive softmax (--output-layer adaptive: the stock model, adaptive_loss)
  gbw               transformer_lm_gbw (12 layers of 512, 4096 FFN, 16 heads), sentences as
                    samples (--sample-break-mode eos), Adam 0.0005 inverse_sqrt, 8 GPUs x 4096
                    tokens, 500k updates
Options:
  --preset P            one of the above (required)
  --output-layer L      softmax, mos, mixtape, sigsoftmax, mos_sigsoftmax (default mixtape);
                        wikitext-103 also: adaptive
  --tokens-per-sample N the preset's block length (eval.sh evaluates with the same)
$TRAIN_OPTIONS_HELP
  -h, --help            this help

With a mos layer, the PTB presets add the MoS paper's --output-context-dropout 0.29.
--tiny: a 1-layer model of width 32 (LSTM) / 2 layers of width 64 (Transformer) on CPU,
200 updates (or --max-update). SAVE_DIR defaults to checkpoints/<preset>_<layer>.
Everything after -- goes to fairseq-train as is (e.g. -- --output-components 8).
EOF
}

PRESET="" LAYER=mixtape TOKENS_PER_SAMPLE="" DATA="" EXTRA=()
while (( $# )); do
  parse_train_option "$@"
  if (( SHIFT )); then shift "$SHIFT"; continue; fi
  case "$1" in
    --preset) need_value "$@"; PRESET=$2; shift 2 ;;
    --output-layer) need_value "$@"; LAYER=$2; shift 2 ;;
    --tokens-per-sample) need_value "$@"; check_count "$1" "$2" 1; TOKENS_PER_SAMPLE=$2; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    --) shift; EXTRA=("$@"); break ;;
    -*) unknown_option "$1" ;;
    *) [[ -z "$DATA" ]] || bad_arg DATA_BIN "got '$DATA' and '$1'; allowed: one folder"
       DATA=$1; shift ;;
  esac
done
PRESETS=(ptb-lstm ptb-transformer wikitext-103 gbw)
[[ -n "$PRESET" ]] || bad_arg --preset "not given; allowed: $(comma_list "${PRESETS[@]}")"
check_choice --preset "$PRESET" "${PRESETS[@]}"
if [[ $PRESET == wikitext-103 ]]; then
  check_choice --output-layer "$LAYER" "${OUTPUT_LAYERS[@]}" adaptive
elif [[ $LAYER == adaptive ]]; then
  bad_arg --output-layer "got 'adaptive', which only --preset wikitext-103 has; allowed: \
$(comma_list "${OUTPUT_LAYERS[@]}")"
else
  check_choice --output-layer "$LAYER" "${OUTPUT_LAYERS[@]}"
fi
[[ -n "$DATA" ]] || bad_arg DATA_BIN "not given; allowed: a folder of binarized LM data \
(prepare.sh)"
check_local_files DATA_BIN "$DATA" "binarized LM data (prepare.sh)" dict.txt
require fairseq-train python

case "$LAYER" in
  mos|mos_sigsoftmax) SUFFIX=_mos ;;
  adaptive) SUFFIX="" ;;
  *) SUFFIX=_mixtape ;;
esac

USER_TOKENS_PER_SAMPLE=$TOKENS_PER_SAMPLE USER_MAX_TOKENS=$MAX_TOKENS USER_MAX_UPDATE=$MAX_UPDATE
CRITERION=(--criterion output_layer_cross_entropy)
LAYER_ARGS=(--output-layer "$LAYER")
BREAK=none LOG_INTERVAL=100 SAVE_ARGS=() MAX_EPOCH=0
case "$PRESET" in
  ptb-lstm)
    ARCH=lstm_lm$SUFFIX
    MODEL=(--decoder-layers 2 --decoder-embed-dim 650 --decoder-hidden-size 650
           --decoder-out-embed-dim 650 --share-decoder-input-output-embed --dropout 0.5)
    OPTIM=(--optimizer adam --lr "${LR:-0.001}" --clip-norm 0.25
           --lr-scheduler reduce_lr_on_plateau --lr-shrink 0.5)
    : "${TOKENS_PER_SAMPLE:=70}" "${MAX_TOKENS:=1400}" "${REF_BATCH:=1400}" "${MAX_UPDATE:=0}"
    MAX_EPOCH=40 ;;
  ptb-transformer)
    ARCH=transformer_lm$SUFFIX
    MODEL=(--decoder-layers 4 --decoder-embed-dim 256 --decoder-input-dim 256
           --decoder-output-dim 256 --decoder-ffn-embed-dim 1024 --decoder-attention-heads 4
           --dropout 0.3 --attention-dropout 0.1 --share-decoder-input-output-embed)
    OPTIM=(--optimizer adam --adam-betas '(0.9, 0.98)' --weight-decay 0.01 --clip-norm 0.0
           --lr "${LR:-0.0005}" --lr-scheduler inverse_sqrt --warmup-updates 1000
           --warmup-init-lr 1e-07)
    : "${TOKENS_PER_SAMPLE:=128}" "${MAX_TOKENS:=4096}" "${REF_BATCH:=4096}" "${MAX_UPDATE:=15000}" ;;
  wikitext-103)
    if [[ $LAYER == adaptive ]]; then
      # the stock model of Baevski & Auli: adaptive input and adaptive softmax, tied
      ARCH=transformer_lm_wiki103 MODEL=() LAYER_ARGS=() CRITERION=(--criterion adaptive_loss)
    else
      # transformer_lm_wiki103's network; its adaptive softmax cannot be switched off from the
      # command line (the preset fills in the cutoffs), so the plain transformer_lm preset with
      # the same flags, adaptive input kept (untied: the output layer has its own embedding)
      ARCH=transformer_lm$SUFFIX
      MODEL=(--decoder-layers 16 --decoder-embed-dim 1024 --decoder-input-dim 1024
             --decoder-output-dim 1024 --decoder-ffn-embed-dim 4096 --decoder-attention-heads 8
             --dropout 0.3 --attention-dropout 0.1 --activation-dropout 0.1
             --no-decoder-final-norm --adaptive-input --adaptive-input-factor 4
             --adaptive-input-cutoff "20000,60000")
    fi
    OPTIM=(--optimizer nag --lr "${LR:-1.0}" --clip-norm 0.1 --lr-scheduler cosine --t-mult 2
           --lr-period-updates 270000 --lr-shrink 0.75 --warmup-updates 16000
           --warmup-init-lr 1e-07 --stop-min-lr 1e-09 --min-lr 0.0001)
    : "${TOKENS_PER_SAMPLE:=3072}" "${MAX_TOKENS:=3072}" "${REF_BATCH:=$((8 * 3072 * 3))}"
    : "${MAX_UPDATE:=286000}"
    SAVE_ARGS=(--save-interval-updates 10000 --keep-interval-updates 5) ;;
  gbw)
    ARCH=transformer_lm_gbw$SUFFIX
    MODEL=()
    OPTIM=(--optimizer adam --adam-betas '(0.9, 0.98)' --clip-norm 0.0 --lr "${LR:-0.0005}"
           --lr-scheduler inverse_sqrt --warmup-updates 4000 --warmup-init-lr 1e-07)
    BREAK=eos
    : "${TOKENS_PER_SAMPLE:=512}" "${MAX_TOKENS:=4096}" "${REF_BATCH:=$((8 * 4096))}"
    : "${MAX_UPDATE:=500000}"
    # one chunk of the ~800k-way output layer at a time; MoS keeps K of them per position
    if [[ $SUFFIX == _mos ]]; then CHUNK=128; else CHUNK=1024; fi
    CRITERION+=(--output-chunk-tokens "$CHUNK")
    SAVE_ARGS=(--save-interval-updates 10000 --keep-interval-updates 5) ;;
esac
if [[ $PRESET == ptb-* && $SUFFIX == _mos ]]; then LAYER_ARGS+=(--output-context-dropout 0.29); fi

if (( TINY )); then
  CPU=1 LOG_INTERVAL=1 MAX_EPOCH=0
  TOKENS_PER_SAMPLE=${USER_TOKENS_PER_SAMPLE:-35} MAX_UPDATE=${USER_MAX_UPDATE:-200}
  MAX_TOKENS=${USER_MAX_TOKENS:-$((TOKENS_PER_SAMPLE * 16))} REF_BATCH=$MAX_TOKENS
  if [[ $PRESET == ptb-lstm ]]; then
    MODEL=(--decoder-layers 1 --decoder-embed-dim 32 --decoder-hidden-size 32
           --decoder-out-embed-dim 32 --share-decoder-input-output-embed --dropout 0.1)
  else
    MODEL=(--decoder-layers 2 --decoder-embed-dim 64 --decoder-input-dim 64
           --decoder-output-dim 64 --decoder-ffn-embed-dim 128 --decoder-attention-heads 2
           --dropout 0.1 --share-decoder-input-output-embed)
  fi
  OPTIM=(--optimizer adam --lr "${LR:-0.003}" --clip-norm 0.25)
  SAVE_ARGS=(--num-workers 0)
fi
distributed_setup
TAG=""
if (( TINY )); then TAG=_tiny; fi
SAVE_DIR=${SAVE_DIR:-checkpoints/${PRESET}_${LAYER}$TAG}
(( DRY_RUN )) || mkdir -p "$SAVE_DIR"

log "$PRESET ($ARCH --output-layer $LAYER) on $DATA -> $SAVE_DIR"
log "batch: $GPUS GPU(s) x $MAX_TOKENS tokens x update-freq $UPDATE_FREQ = \
$((GPUS * MAX_TOKENS * UPDATE_FREQ)) tokens per update (reference $REF_BATCH); \
${TOKENS_PER_SAMPLE}-token samples; max-update $MAX_UPDATE, max-epoch $MAX_EPOCH, fp16 $FP16"

ARGS=(
  "$DATA" --user-dir "$USER_DIR" --task language_modeling
  --arch "$ARCH" "${LAYER_ARGS[@]}" "${MODEL[@]}" "${CRITERION[@]}" "${OPTIM[@]}"
  --tokens-per-sample "$TOKENS_PER_SAMPLE" --sample-break-mode "$BREAK"
  --max-tokens "$MAX_TOKENS" --update-freq "$UPDATE_FREQ"
  --max-update "$MAX_UPDATE" --max-epoch "$MAX_EPOCH"
  --save-dir "$SAVE_DIR" --keep-last-epochs 5 "${SAVE_ARGS[@]}"
  --tensorboard-logdir "$SAVE_DIR/tensorboard" --log-file "$SAVE_DIR/train.log"
  --log-format simple --log-interval "$LOG_INTERVAL" --seed 1
  --skip-invalid-size-inputs-valid-test "${DIST_ARGS[@]}"
)
# what eval.sh needs to evaluate like this
if (( ! DRY_RUN )); then
  printf 'tokens_per_sample=%s\nsample_break_mode=%s\npreset=%s\n' \
    "$TOKENS_PER_SAMPLE" "$BREAK" "$PRESET" > "$SAVE_DIR/recipe.conf"
fi
run_training "${ARGS[@]}" "${EXTRA[@]}"
log "done: checkpoints in $SAVE_DIR; next: bash $(dirname "$0")/eval.sh $DATA $SAVE_DIR"
