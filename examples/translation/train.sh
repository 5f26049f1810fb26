#!/usr/bin/env bash
# Train a Transformer base or big on WMT'14 data prepared by prepare-wmt14en2{de,fr}.sh, with
# any fairseq-mixtape output layer (softmax, mos, mixtape, sigsoftmax, mos_sigsoftmax).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR
# shellcheck source=../common.sh
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"

usage() {
  cat << EOF
Usage: $PROG [options] DATA_BIN [-- extra fairseq-train arguments]

Trains the Transformer of Vaswani et al. (2017) as set up by Ott et al. (2018, "Scaling Neural
Machine Translation", fairseq's examples/scaling_nmt) on DATA_BIN (OUT/data-bin of
prepare-wmt14en2de.sh or prepare-wmt14en2fr.sh), with the output layer of your choice, the
plugin's output_layer_label_smoothed_cross_entropy (label smoothing 0.1), Adam (0.9, 0.98),
inverse_sqrt with 4000 warmup updates, shared embeddings, TensorBoard logs.
A rerun resumes from SAVE_DIR/checkpoint_last.pt; it is skipped once a run with the same
arguments has finished.

Options:
  --setup base|big      transformer_wmt_en_de or transformer_vaswani_wmt_en_de_big (default big)
  --output-layer L      softmax, mos, mixtape, sigsoftmax or mos_sigsoftmax (default mixtape)
  --dropout P           (default: big 0.3 en-de / 0.1 en-fr; base 0.1)
  --save-interval-updates N  also save checkpoint_E_U.pt every N updates, keeping the last 20
                        (default: base 1000; big 0, epoch checkpoints only)
$TRAIN_OPTIONS_HELP
  -h, --help            this help

Defaults (reference batch, lr, max-update, max-tokens):
  big en-de  128 GPUs x 3584 tokens = 458752 tokens/update, lr 0.001, 24000 updates (Ott et al.)
  big en-fr  128 GPUs x 5120 tokens = 655360 tokens/update, lr 0.001, 80000 updates (Ott et al.)
  base       8 GPUs x 4096 tokens = 32768 tokens/update, lr 0.0007, 100000 updates
  --tiny     2+2 layers of width 64 on CPU, 1024 tokens/update, lr 0.001 (10 warmup updates),
             200 updates, checkpoints every 2 updates
  --update-freq = ceil(reference / (GPUs x max-tokens)): 16 on 8 GPUs for big, 128 on one GPU.
SAVE_DIR defaults to checkpoints/wmt14_<pair>_<setup>_<layer>.
Everything after -- goes to fairseq-train as is (e.g. -- --output-components 8).
EOF
}

SETUP=big LAYER=mixtape DROPOUT="" SAVE_INTERVAL_UPDATES="" DATA="" EXTRA=()
while (( $# )); do
  parse_train_option "$@"
  if (( SHIFT )); then shift "$SHIFT"; continue; fi
  case "$1" in
    --setup) need_value "$@"; check_choice "$1" "$2" base big; SETUP=$2; shift 2 ;;
    --output-layer) need_value "$@"; check_choice "$1" "$2" "${OUTPUT_LAYERS[@]}"; LAYER=$2
                    shift 2 ;;
    --dropout)
      need_value "$@"
      [[ "$2" =~ ^0*(\.[0-9]*)?$ && "$2" =~ [0-9] ]] \
        || bad_arg "$1" "got '$2'; allowed: a probability in [0, 1)"
      DROPOUT=$2; shift 2 ;;
    --save-interval-updates) need_value "$@"; check_count "$1" "$2" 0; SAVE_INTERVAL_UPDATES=$2
                             shift 2 ;;
    -h|--help) usage; exit 0 ;;
    --) shift; EXTRA=("$@"); break ;;
    -*) unknown_option "$1" ;;
    *) [[ -z "$DATA" ]] || bad_arg DATA_BIN "got '$DATA' and '$1'; allowed: one folder"
       DATA=$1; shift ;;
  esac
done
[[ -n "$DATA" ]] || bad_arg DATA_BIN "not given; allowed: a folder of binarized translation \
data (prepare-wmt14en2de.sh, prepare-wmt14en2fr.sh)"
check_local_files DATA_BIN "$DATA" \
  "binarized translation data (prepare-wmt14en2de.sh, prepare-wmt14en2fr.sh)" dict.en.txt
require fairseq-train python

PAIR=""
if [[ -f "$DATA/recipe.conf" ]]; then PAIR=$(conf_get pair "$DATA/recipe.conf"); fi
if [[ -z "$PAIR" ]]; then
  if [[ -f "$DATA/dict.fr.txt" ]]; then PAIR=en-fr; else PAIR=en-de; fi
fi
if [[ $SETUP == base ]]; then PRESET=transformer_wmt_en_de
else PRESET=transformer_vaswani_wmt_en_de_big; fi
# P_mixtape and P_mos are the stock preset P with that layer by default; --output-layer picks
# any layer (P_mixtape --output-layer softmax is the softmax baseline).
case "$LAYER" in
  mos|mos_sigsoftmax) ARCH=${PRESET}_mos ;;
  *) ARCH=${PRESET}_mixtape ;;
esac

WARMUP=4000
MODEL_ARGS=()
if (( TINY )); then  # before the reference defaults, which then fill in only what is unset
  CPU=1 WARMUP=10
  : "${MAX_TOKENS:=1024}" "${MAX_UPDATE:=200}" "${DROPOUT:=0.1}" "${LR:=0.001}"
  : "${REF_BATCH:=$MAX_TOKENS}" "${SAVE_INTERVAL_UPDATES:=2}"
  MODEL_ARGS=(--encoder-layers 2 --decoder-layers 2 --encoder-embed-dim 64 --decoder-embed-dim 64
              --encoder-ffn-embed-dim 128 --decoder-ffn-embed-dim 128
              --encoder-attention-heads 2 --decoder-attention-heads 2 --num-workers 0)
fi

# The reference setups. big: Ott et al. (2018) and fairseq's examples/scaling_nmt README:
# max-tokens 3584 per GPU on 128 GPUs (there: 8 GPUs x --update-freq 16), lr 0.001 ("0.001 works
# well for big batches"; 0.0005 without --update-freq), En-De ~24k updates (~70 epochs, fairseq
# issue #1976), En-Fr max-tokens 5120 and 80k updates (fairseq issue #361); dropout 0.3 En-De,
# 0.1 En-Fr (Vaswani et al.). base: fairseq's usual transformer_wmt_en_de recipe, 8 GPUs x 4096
# tokens (Vaswani et al.: ~25k source + 25k target tokens a batch), lr 0.0007, 100k updates.
if [[ $SETUP == big ]]; then
  if [[ $PAIR == en-fr ]]; then
    : "${MAX_TOKENS:=5120}" "${MAX_UPDATE:=80000}" "${DROPOUT:=0.1}"
  else
    : "${MAX_TOKENS:=3584}" "${MAX_UPDATE:=24000}" "${DROPOUT:=0.3}"
  fi
  : "${REF_BATCH:=$((128 * MAX_TOKENS))}" "${LR:=0.001}" "${SAVE_INTERVAL_UPDATES:=0}"
else
  : "${MAX_TOKENS:=4096}" "${MAX_UPDATE:=100000}" "${DROPOUT:=0.1}" "${LR:=0.0007}"
  : "${REF_BATCH:=$((8 * 4096))}" "${SAVE_INTERVAL_UPDATES:=1000}"
fi
distributed_setup
TAG=""
if (( TINY )); then TAG=_tiny; fi
SAVE_DIR=${SAVE_DIR:-checkpoints/wmt14_${PAIR/-/_}_${SETUP}_${LAYER}$TAG}
(( DRY_RUN )) || mkdir -p "$SAVE_DIR"

log "$PAIR $SETUP ($ARCH --output-layer $LAYER) -> $SAVE_DIR"
log "batch: $GPUS GPU(s) x $MAX_TOKENS tokens x update-freq $UPDATE_FREQ = \
$((GPUS * MAX_TOKENS * UPDATE_FREQ)) tokens per update (reference $REF_BATCH); lr $LR, \
max-update $MAX_UPDATE, dropout $DROPOUT, fp16 $FP16"

ARGS=(
  "$DATA" --user-dir "$USER_DIR" --task translation
  --arch "$ARCH" --output-layer "$LAYER" --share-all-embeddings "${MODEL_ARGS[@]}"
  --dropout "$DROPOUT"
  --optimizer adam --adam-betas '(0.9, 0.98)' --adam-eps 1e-8 --clip-norm 0.0 --weight-decay 0.0
  --lr "$LR" --lr-scheduler inverse_sqrt --warmup-updates "$WARMUP" --warmup-init-lr 1e-07
  --criterion output_layer_label_smoothed_cross_entropy --label-smoothing 0.1
  --max-tokens "$MAX_TOKENS" --update-freq "$UPDATE_FREQ" --max-update "$MAX_UPDATE"
  --save-dir "$SAVE_DIR" --keep-last-epochs 20
  --tensorboard-logdir "$SAVE_DIR/tensorboard" --log-file "$SAVE_DIR/train.log"
  --log-format simple --log-interval "$( (( TINY )) && echo 1 || echo 100)"
  --seed 1 --skip-invalid-size-inputs-valid-test "${DIST_ARGS[@]}"
)
if (( SAVE_INTERVAL_UPDATES > 0 )); then
  ARGS+=(--save-interval-updates "$SAVE_INTERVAL_UPDATES" --keep-interval-updates 20)
fi
run_training "${ARGS[@]}" "${EXTRA[@]}"
log "done: checkpoints in $SAVE_DIR; next: bash $(dirname "$0")/generate.sh $DATA $SAVE_DIR"
