# Shared helpers of the fairseq-mixtape recipes; sourced (not run) by the scripts in
# examples/translation/ and examples/language_model/.
#
# The recipes call fairseq-preprocess, fairseq-train, sacremoses, subword-nmt, sacrebleu, python
# ... from PATH: activate the environment that `bash scripts/install_env.sh` builds
# (`source .venv/bin/activate`) before running them.
# shellcheck shell=bash
# shellcheck disable=SC2034  # most variables set here are used by the recipes that source it

# The repository root and the plugin folder for --user-dir (fairseq records it in the checkpoint,
# cfg.common.user_dir, but does not import it when loading one: every fairseq command of the
# recipes passes it).
RECIPES_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$RECIPES_ROOT/.." && pwd)"
USER_DIR="${FAIRSEQ_MIXTAPE_USER_DIR:-$REPO_ROOT/fairseq_mixtape}"

PROG="${RECIPE_PROG:-$(basename "$0")}"  # the wrappers pass their own name

log() { printf '[%s %s] %s\n' "$(date +%H:%M:%S)" "$PROG" "$*"; }
die() { printf '%s: error: %s\n' "$PROG" "$*" >&2; exit 1; }

# bad_arg FLAG MESSAGE: a user error in the command line, one line on stderr and exit status 2,
# before any work (argparse's style: "PROG: error: FLAG: got 'VALUE'; allowed: ...").
bad_arg() { printf '%s: error: %s: %s\n' "$PROG" "$1" "$2" >&2; exit 2; }

# need_value "$@" (in an option loop): the option $1 was given a value, or bad_arg.
need_value() { (( $# >= 2 )) || bad_arg "$1" "no value given; allowed: $1 VALUE (see --help)"; }

# unknown_option FLAG: bad_arg for an option that the script does not have.
unknown_option() { bad_arg "$1" "unknown option; allowed: the options of --help"; }

# check_count FLAG VALUE LEAST: VALUE is a whole number >= LEAST, or bad_arg.
check_count() {
  if [[ ! "$2" =~ ^[0-9]+$ ]] || (( 10#$2 < $3 )); then
    bad_arg "$1" "got '$2'; allowed: a whole number >= $3"
  fi
}

# check_positive FLAG VALUE: VALUE is a decimal number > 0 (2, 0.5, 5e-4), or bad_arg.
check_positive() {
  [[ "$2" =~ ^([0-9]+\.?[0-9]*|\.[0-9]+)([eE][-+]?[0-9]+)?$ && ! "${2%%[eE]*}" =~ ^[0.]+$ ]] \
    || bad_arg "$1" "got '$2'; allowed: a number > 0"
}

# comma_list WORD...: the WORDs joined by ", ".
comma_list() { local joined; printf -v joined '%s, ' "$@"; echo "${joined%, }"; }

# check_choice FLAG VALUE CHOICE...: VALUE is one of the CHOICEs, or bad_arg listing them.
check_choice() {
  local flag=$1 value=$2 choice
  shift 2
  for choice in "$@"; do
    if [[ "$value" == "$choice" ]]; then return 0; fi
  done
  bad_arg "$flag" "got '$value'; allowed: $(comma_list "$@")"
}

# The plugin's output layers (fairseq_mixtape.output_layers.OUTPUT_LAYERS), for --output-layer.
OUTPUT_LAYERS=(softmax mos mixtape sigsoftmax mos_sigsoftmax)

# check_file FLAG FILE WHAT: FILE exists, or bad_arg naming WHAT is allowed.
check_file() { [[ -f "$2" ]] || bad_arg "$1" "got '$2', no such file; allowed: $3"; }

# check_local_files FLAG DIR WHAT FILE...: DIR is a folder holding every FILE, or bad_arg with
# what is missing (the first five); WHAT describes the files in the message.
check_local_files() {
  local flag=$1 dir=$2 what=$3 f missing=() allowed lacking
  shift 3
  allowed="a folder with $what: $(comma_list "${@:1:6}")"
  if (( $# > 6 )); then allowed+=", ... ($# files)"; fi
  [[ -d "$dir" ]] || bad_arg "$flag" "no such folder $dir; allowed: $allowed"
  for f in "$@"; do [[ -f "$dir/$f" ]] || missing+=("$f"); done
  if (( ${#missing[@]} )); then
    lacking=$(comma_list "${missing[@]:0:5}")
    if (( ${#missing[@]} > 5 )); then lacking+=" and $(( ${#missing[@]} - 5 )) more"; fi
    bad_arg "$flag" "got '$dir', which lacks $lacking; allowed: $allowed"
  fi
}

# need_stage NAME DIR: true (run the stage) unless DIR/.done exists, which a stage writes as its
# last step, so that an interrupted stage is redone and a finished one is skipped on a rerun.
need_stage() {
  if [[ -e "$2/.done" ]]; then
    log "stage $1: done already ($2), skipped"
    return 1
  fi
  log "stage $1 -> $2"
  mkdir -p "$2"
}
stage_done() { date > "$1/.done"; }

# require CMD...: fail early, with the fix, when a tool is not on PATH.
require() {
  local cmd
  for cmd in "$@"; do
    command -v "$cmd" > /dev/null 2>&1 || die "'$cmd' not found on PATH. Set up and activate the \
environment first: bash $REPO_ROOT/scripts/install_env.sh && source $REPO_ROOT/.venv/bin/activate"
  done
}

# download URL FILE: skipped when FILE exists; downloads to FILE.part first, so an interrupted
# download is not mistaken for a finished one.
download() {
  local url=$1 file=$2
  if [[ -s "$file" ]]; then
    log "  $(basename "$file"): downloaded already"
    return 0
  fi
  log "  downloading $url"
  if command -v wget > /dev/null 2>&1; then
    wget --tries=3 --continue -O "$file.part" "$url"
  elif command -v curl > /dev/null 2>&1; then
    curl -fL --retry 3 -C - -o "$file.part" "$url"
  else
    die "neither wget nor curl is installed"
  fi
  mv "$file.part" "$file"
}

# extract ARCHIVE DIR: unpack a .tgz/.tar.gz/.tar/.zip into DIR once (marker file in DIR).
extract() {
  local archive=$1 dir=$2 marker
  marker="$dir/.$(basename "$archive").extracted"
  [[ -e "$marker" ]] && return 0
  log "  extracting $(basename "$archive")"
  case "$archive" in
    *.tgz|*.tar.gz) tar -xzf "$archive" -C "$dir" ;;
    *.tar) tar -xf "$archive" -C "$dir" ;;
    *.zip) python -m zipfile -e "$archive" "$dir" ;;
    *) die "do not know how to extract $archive" ;;
  esac
  touch "$marker"
}

# head_files N FILE...: the first N lines of the FILEs one after the other (all with N = 0).
# (Not `cat ... | head`: with pipefail, head closing the pipe early fails the pipeline.)
head_files() {
  local n=$1 f
  shift
  if (( n == 0 )); then cat "$@"; return; fi
  for f in "$@"; do
    (( n > 0 )) || break
    head -n "$n" "$f"
    n=$(( n - $(wc -l < "$f") ))
  done
}

# conf_get KEY FILE: the value of a KEY=value line (the recipes' small metadata files).
conf_get() {
  sed -n "s/^$1=//p" "$2" | tail -n 1
}

# nproc_or N: the number of CPU cores, at most N (for --workers defaults).
nproc_or() {
  local n
  n=$(nproc 2> /dev/null || echo 1)
  (( n > $1 )) && n=$1
  echo "$n"
}

# visible_gpus: the number of CUDA devices torch sees (0 without CUDA).
visible_gpus() {
  python -c 'import torch; print(torch.cuda.device_count())' 2> /dev/null || echo 0
}

# ---------------------------------------------------------------------------------------------
# Training launch, shared by translation/train.sh and language_model/train.sh
# ---------------------------------------------------------------------------------------------
# TRAIN_OPTIONS_HELP: the usage text of the options that parse_train_option understands.
TRAIN_OPTIONS_HELP="\
  --gpus N              GPUs of the whole run, all nodes (default: visible GPUs x --nodes)
  --nodes N             nodes of the run (default: \$SLURM_NNODES, \$NNODES, or 1)
  --max-tokens N        tokens per GPU per batch
  --reference-batch N   tokens per update to emulate through --update-freq
  --update-freq N       gradient accumulation (default: ceil(reference-batch / (gpus x max-tokens)))
  --lr LR               peak learning rate
  --max-update N        number of updates
  --fp16 | --no-fp16    mixed precision (default: on with GPUs)
  --torchrun            start through torchrun (multi-node without SLURM: set NNODES, NODE_RANK,
                        MASTER_ADDR, MASTER_PORT in the environment of every node)
  --distributed-port P  multi-node under SLURM: srun one task per node, with a free port P
  --save-dir DIR        checkpoints, train.log, tensorboard/
  --tiny                smoke-test settings: a tiny model on CPU, few updates
  --cpu                 train on CPU
  --dry-run             print the fairseq-train command (shell-quoted) and exit"

GPUS="" NODES="" MAX_TOKENS="" REF_BATCH="" UPDATE_FREQ="" LR="" MAX_UPDATE="" FP16=""
TORCHRUN=0 DIST_PORT="" SAVE_DIR="" TINY=0 CPU=0 DRY_RUN=0

# parse_train_option "$@": consumes one shared training option; returns the number of
# arguments it used (0 if it is not one of them) in SHIFT.
parse_train_option() {
  SHIFT=1
  case "$1" in
    --fp16) FP16=1 ;;
    --no-fp16) FP16=0 ;;
    --torchrun) TORCHRUN=1 ;;
    --tiny) TINY=1 ;;
    --cpu) CPU=1 ;;
    --dry-run) DRY_RUN=1 ;;
    --gpus|--nodes|--max-tokens|--reference-batch|--update-freq|--lr|--max-update|\
    --distributed-port|--save-dir)
      need_value "$@"
      SHIFT=2
      case "$1" in
        --gpus) check_count "$1" "$2" 1; GPUS=$2 ;;
        --nodes) check_count "$1" "$2" 1; NODES=$2 ;;
        --max-tokens) check_count "$1" "$2" 1; MAX_TOKENS=$2 ;;
        --reference-batch) check_count "$1" "$2" 1; REF_BATCH=$2 ;;
        --update-freq) check_count "$1" "$2" 1; UPDATE_FREQ=$2 ;;
        --lr) check_positive "$1" "$2"; LR=$2 ;;
        --max-update) check_count "$1" "$2" 0; MAX_UPDATE=$2 ;;
        --distributed-port) check_count "$1" "$2" 1; DIST_PORT=$2 ;;
        --save-dir) SAVE_DIR=$2 ;;
      esac ;;
    *) SHIFT=0 ;;
  esac
}

# distributed_setup: GPUs, nodes, fp16 and the update frequency from the options above (after
# the recipe has filled in MAX_TOKENS and REF_BATCH); sets LAUNCH (the command that starts
# fairseq-train) and DIST_ARGS (its distributed and precision flags).
distributed_setup() {
  if [[ -z "$NODES" ]]; then NODES=${SLURM_NNODES:-${NNODES:-1}}; fi
  if (( CPU )); then
    GPUS_PER_NODE=0 GPUS=${GPUS:-1}
  elif [[ -n "$GPUS" ]]; then  # given: no need to ask torch (e.g. --dry-run on a login node)
    GPUS_PER_NODE=$(( (GPUS + NODES - 1) / NODES ))
  else
    GPUS_PER_NODE=$(visible_gpus)
    GPUS=$((GPUS_PER_NODE * NODES))
    (( GPUS > 0 )) || die "no GPU visible (torch.cuda.device_count() == 0): use --cpu or --tiny"
  fi
  if [[ -z "$FP16" ]]; then FP16=$(( GPUS_PER_NODE > 0 )); fi
  if [[ -z "$UPDATE_FREQ" ]]; then
    UPDATE_FREQ=$(( (REF_BATCH + GPUS * MAX_TOKENS - 1) / (GPUS * MAX_TOKENS) ))
    (( UPDATE_FREQ >= 1 )) || UPDATE_FREQ=1
  fi
  DIST_ARGS=()
  if (( FP16 )); then DIST_ARGS+=(--fp16); fi
  if (( CPU )); then DIST_ARGS+=(--cpu); fi
  if (( TORCHRUN )); then
    (( GPUS_PER_NODE > 0 )) || die "--torchrun needs GPUs"
    LAUNCH=(torchrun --nnodes "$NODES" --nproc_per_node "$GPUS_PER_NODE"
            --node_rank "${NODE_RANK:-0}" --master_addr "${MASTER_ADDR:-127.0.0.1}"
            --master_port "${MASTER_PORT:-29500}" "$(command -v fairseq-train)")
    DIST_ARGS+=(--distributed-world-size "$GPUS")
  else
    LAUNCH=(fairseq-train)
    if [[ -n "$DIST_PORT" ]]; then
      DIST_ARGS+=(--distributed-port "$DIST_PORT" --distributed-world-size "$GPUS")
    fi
  fi
}

# run_training ARGS...: "${LAUNCH[@]}" ARGS, in SAVE_DIR (with --dry-run: print it and exit). Skipped when a run with exactly these
# arguments has finished (SAVE_DIR/.done); otherwise fairseq resumes from
# SAVE_DIR/checkpoint_last.pt if there is one (so a rerun with a larger --max-update continues).
run_training() {
  local signature="$*"
  if (( DRY_RUN )); then
    printf '%q ' "${LAUNCH[@]}" "$@"
    echo
    exit 0
  fi
  if [[ -f "$SAVE_DIR/.done" ]] && [[ "$(cat "$SAVE_DIR/.done")" == "$signature" ]]; then
    log "training finished already ($SAVE_DIR/.done), skipped"
    return 0
  fi
  if [[ -f "$SAVE_DIR/checkpoint_last.pt" ]]; then log "resuming from $SAVE_DIR/checkpoint_last.pt"; fi
  log "running: ${LAUNCH[*]} $*"
  "${LAUNCH[@]}" "$@"
  printf '%s' "$signature" > "$SAVE_DIR/.done"
}
