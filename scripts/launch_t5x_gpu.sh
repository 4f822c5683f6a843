#!/usr/bin/env bash
# Runs one altup-t5x config (configs/**.gin) with T5X on the GPUs of this machine, or as one process
# of a multi-node job (T5X's --multiprocess_gpu: one process per node, all local GPUs each).
#
# Every host needs this repository and the T5X environment of scripts/install_t5x.sh (T5X and its
# GitHub-only dependencies at the commits of t5x_pins.txt, jax[cuda12]):
#   scripts/launch_t5x_gpu.sh --setup                      # on this host
#   scripts/launch_t5x_gpu.sh --setup --hosts=node0,node1  # on each host, over ssh, where the
#                                                          # repository is at --remote_dir
# creates ~/altup-t5x-env (`bash scripts/install_t5x.sh --gpu`), whose Python the launched T5X
# commands use (--env / --python change it).
#
# Examples:
#   # Offline check on one GPU (tiny model, embedded corpus, 20 steps):
#   scripts/launch_t5x_gpu.sh --config=configs/smoke/tiny_altup_k2_pretrain.gin \
#     --model_dir=/tmp/altup_t5x_smoke/altup_k2/pretrain
#   # ...which runs:
#   ~/altup-t5x-env/bin/python -m t5x.train --gin_file=configs/smoke/tiny_altup_k2_pretrain.gin \
#     --gin.MODEL_DIR=\'/tmp/altup_t5x_smoke/altup_k2/pretrain\'
#   # Pretrain T5.1.1-Small with AltUp K=2 on one host with 8 GPUs:
#   scripts/launch_t5x_gpu.sh --config=configs/pretrain/c4_small_altup_k2.gin \
#     --model_dir=gs://${BUCKET}/altup/pretrain/c4_small_altup_k2 \
#     --tfds_data_dir=gs://${BUCKET}/tensorflow_datasets
#   # T5.1.1-Base on 2 hosts (16 GPUs; run on each host, with its own --process_index):
#   scripts/launch_t5x_gpu.sh --config=configs/pretrain/c4_base_altup_k2.gin \
#     --model_dir=gs://${BUCKET}/altup/pretrain/c4_base_altup_k2 \
#     --tfds_data_dir=gs://${BUCKET}/tensorflow_datasets \
#     --coordinator=node0:12345 --num_processes=2 --process_index=0
#
# Anything after `--` is passed to T5X unchanged (e.g. -- --gin.BATCH_SIZE=128).
set -euo pipefail

usage() {
  sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'
  cat <<'EOF'
Options:
  --config=PATH            a config under configs/ (required unless --setup); picks t5x.train,
                           t5x.eval or t5x.infer
  --model_dir=DIR          MODEL_DIR for pretrain/finetune configs
  --initial_checkpoint=P   INITIAL_CHECKPOINT_PATH for finetune configs
  --checkpoint=P           CHECKPOINT_PATH for eval/infer configs
  --output_dir=DIR         EVAL_OUTPUT_DIR / INFER_OUTPUT_DIR for eval/infer configs
  --tfds_data_dir=DIR      where the TFDS datasets (c4, glue, ...) are prepared
  --spm_path=PATH          a local copy of T5's SentencePiece model (sets ALTUP_T5X_SPM_PATH, which
                           both the tasks and the model gin's VOCABULARY_PATH default read)
  --coordinator=HOST:PORT  multi-node: address of process 0 (enables --multiprocess_gpu)
  --num_processes=N        multi-node: number of processes (nodes)
  --process_index=I        multi-node: this node's index, 0..N-1
  --env=DIR                the T5X environment (default: ~/altup-t5x-env)
  --python=BIN             Python to use (default: ENV/bin/python)
  --setup                  run scripts/install_t5x.sh --gpu (creates ENV) on this host, or on
                           each of --hosts over ssh; with --setup, --config is optional
  --hosts=H1,H2,...        --setup: the hosts to set up over ssh (default: this host only)
  --remote_dir=DIR         --hosts: this repository on those hosts (default: ~/altup-t5x)
  --dry_run                print the command instead of running it
  -h, --help               this help
EOF
}

CONFIG= MODEL_DIR= INIT_CKPT= CKPT= OUT_DIR= TFDS= SPM= COORD= NPROC= PIDX= PY= DRY=0
ENV_DIR="$HOME/altup-t5x-env" SETUP=0 HOSTS= REMOTE_DIR='~/altup-t5x' 
EXTRA=()
while (($#)); do
  case "$1" in
    --config=*) CONFIG="${1#*=}" ;;
    --model_dir=*) MODEL_DIR="${1#*=}" ;;
    --initial_checkpoint=*) INIT_CKPT="${1#*=}" ;;
    --checkpoint=*) CKPT="${1#*=}" ;;
    --output_dir=*) OUT_DIR="${1#*=}" ;;
    --tfds_data_dir=*) TFDS="${1#*=}" ;;
    --spm_path=*) SPM="${1#*=}" ;;
    --coordinator=*) COORD="${1#*=}" ;;
    --num_processes=*) NPROC="${1#*=}" ;;
    --process_index=*) PIDX="${1#*=}" ;;
    --python=*) PY="${1#*=}" ;;
    --env=*) ENV_DIR="${1#*=}" ;;
    --setup) SETUP=1 ;;
    --hosts=*) HOSTS="${1#*=}" ;;
    --remote_dir=*) REMOTE_DIR="${1#*=}" ;;
    --dry_run) DRY=1 ;;
    -h|--help) usage; exit 0 ;;
    --) shift; EXTRA=("$@"); break ;;
    *) echo "launch_t5x_gpu.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
  shift
done

die() { echo "launch_t5x_gpu.sh: $*" >&2; exit 2; }
((SETUP)) || [[ -n "$CONFIG" ]] || die "--config is required (a file under configs/)"
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
[[ -z "$CONFIG" || -f "$ROOT/$CONFIG" ]] || die "--config=$CONFIG: no such file under $ROOT"
[[ -z "$HOSTS" ]] || ((SETUP)) || die "--hosts is used by --setup only"
[[ -n "$PY" ]] || PY="$ENV_DIR/bin/python"

if ((SETUP)); then
  if [[ -z "$HOSTS" ]]; then
    SETUP_CMD=(bash "$ROOT/scripts/install_t5x.sh" --gpu --prefix "$ENV_DIR")
    if ((DRY)); then printf '%q ' "${SETUP_CMD[@]}"; echo; else "${SETUP_CMD[@]}"; fi
  else
    # The environment's default place is the remote user's ~/altup-t5x-env unless --env was given.
    PREFIX_ARG=""
    [[ "$ENV_DIR" == "$HOME/altup-t5x-env" ]] || PREFIX_ARG=" --prefix $ENV_DIR"
    IFS=',' read -r -a HOST_LIST <<<"$HOSTS"
    for host in "${HOST_LIST[@]}"; do
      SETUP_CMD=(ssh "$host" "cd $REMOTE_DIR && bash scripts/install_t5x.sh --gpu$PREFIX_ARG")
      if ((DRY)); then printf '%q ' "${SETUP_CMD[@]}"; echo; else "${SETUP_CMD[@]}"; fi
    done
  fi
  [[ -n "$CONFIG" ]] || exit 0
fi

RUN="$(sed -n "s|^include 't5x/configs/runs/\([a-z]*\)\.gin'.*|\1|p" "$ROOT/$CONFIG")"
ARGS=("--gin_file=$CONFIG")
gin_str() { printf "%s" "--gin.$1='$2'"; }  # a gin string literal, as T5X expects
need() { [[ -n "$2" ]] || die "$CONFIG is a '$RUN' config: $1 is required"; }
case "$RUN" in
  pretrain) SCRIPT=train; need --model_dir "$MODEL_DIR"; ARGS+=("$(gin_str MODEL_DIR "$MODEL_DIR")") ;;
  finetune) SCRIPT=train; need --model_dir "$MODEL_DIR"; need --initial_checkpoint "$INIT_CKPT"
            ARGS+=("$(gin_str MODEL_DIR "$MODEL_DIR")" "$(gin_str INITIAL_CHECKPOINT_PATH "$INIT_CKPT")") ;;
  eval)     SCRIPT=eval; need --checkpoint "$CKPT"; need --output_dir "$OUT_DIR"
            ARGS+=("$(gin_str CHECKPOINT_PATH "$CKPT")" "$(gin_str EVAL_OUTPUT_DIR "$OUT_DIR")") ;;
  infer)    SCRIPT=infer; need --checkpoint "$CKPT"; need --output_dir "$OUT_DIR"
            ARGS+=("$(gin_str CHECKPOINT_PATH "$CKPT")" "$(gin_str INFER_OUTPUT_DIR "$OUT_DIR")") ;;
  *) die "$CONFIG includes no t5x/configs/runs/{pretrain,finetune,eval,infer}.gin" ;;
esac
[[ -n "$TFDS" ]] && ARGS+=("--tfds_data_dir=$TFDS")
if [[ -n "$SPM" ]]; then
  [[ -f "$SPM" ]] || die "--spm_path=$SPM: no such file"
  export ALTUP_T5X_SPM_PATH="$SPM"
fi
if [[ -n "$COORD" || -n "$NPROC" || -n "$PIDX" ]]; then
  [[ -n "$COORD" && -n "$NPROC" && -n "$PIDX" ]] ||
    die "multi-node runs need all of --coordinator, --num_processes and --process_index"
  ARGS+=(--multiprocess_gpu "--coordinator_address=$COORD" "--process_count=$NPROC"
         "--process_index=$PIDX")
fi
ARGS+=("${EXTRA[@]}")

cd "$ROOT"  # the configs' include paths are relative to the repository root
CMD=("$PY" -m "t5x.$SCRIPT" "${ARGS[@]}")
if ((DRY)); then
  [[ -n "$SPM" ]] && printf 'ALTUP_T5X_SPM_PATH=%q ' "$SPM"
  printf '%q ' "${CMD[@]}"; echo
else
  exec "${CMD[@]}"
fi
