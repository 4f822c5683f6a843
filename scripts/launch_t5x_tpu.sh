#!/usr/bin/env bash
# Runs one altup-t5x config (configs/**.gin) with T5X on every worker of a Cloud TPU VM pod slice.
#
# Every worker needs this repository and the T5X environment of scripts/install_t5x.sh (T5X and
# its GitHub-only dependencies at the commits of t5x_pins.txt, jax[tpu]). Once per slice:
#   scripts/launch_t5x_tpu.sh --tpu=altup-v4-32 --zone=us-central2-b --sync --setup
# copies the local working tree to ~/altup-t5x on every worker (--sync) and runs
# `bash scripts/install_t5x.sh --tpu` there on all workers at once (--setup): the environment is
# ~/altup-t5x-env, whose Python the launched T5X commands use (--env / --python change it).
#
# Examples (a v4-32 slice: 16 chips, 16 JAX devices; docs/pods.md says which config fits which):
#   # Pretrain T5.1.1-Base with AltUp K=2 on C4 (500k steps, batch 256):
#   scripts/launch_t5x_tpu.sh --tpu=altup-v4-32 --zone=us-central2-b \
#     --config=configs/pretrain/c4_base_altup_k2.gin \
#     --model_dir=gs://${BUCKET}/altup/pretrain/c4_base_altup_k2 \
#     --tfds_data_dir=gs://${BUCKET}/tensorflow_datasets
#   # ...which runs (shown by --dry_run) on all workers at once:
#   gcloud compute tpus tpu-vm ssh altup-v4-32 --zone=us-central2-b --worker=all \
#     --command="cd ~/altup-t5x && ~/altup-t5x-env/bin/python -m t5x.train \
#       --gin_file=configs/pretrain/c4_base_altup_k2.gin \
#       --gin.MODEL_DIR=\\'gs://${BUCKET}/altup/pretrain/c4_base_altup_k2\\' \
#       --tfds_data_dir=gs://${BUCKET}/tensorflow_datasets"
#   # Finetune it on SuperGLUE, then evaluate every checkpoint and predict:
#   scripts/launch_t5x_tpu.sh --tpu=altup-v4-32 --zone=us-central2-b \
#     --config=configs/finetune/super_glue_base_altup_k2.gin \
#     --initial_checkpoint=gs://${BUCKET}/altup/pretrain/c4_base_altup_k2/checkpoint_500000 \
#     --model_dir=gs://${BUCKET}/altup/finetune/super_glue_base_altup_k2 \
#     --tfds_data_dir=gs://${BUCKET}/tensorflow_datasets
#   scripts/launch_t5x_tpu.sh --tpu=altup-v4-32 --zone=us-central2-b \
#     --config=configs/eval/super_glue_base_altup_k2.gin \
#     --checkpoint=gs://${BUCKET}/altup/finetune/super_glue_base_altup_k2 \
#     --output_dir=gs://${BUCKET}/altup/eval/super_glue_base_altup_k2 \
#     --tfds_data_dir=gs://${BUCKET}/tensorflow_datasets \
#     -- --gin.utils.RestoreCheckpointConfig.mode="'all'"
#
# Anything after `--` is passed to T5X unchanged (e.g. -- --gin.BATCH_SIZE=512).
set -euo pipefail

usage() {
  sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'
  cat <<'EOF'
Options:
  --tpu=NAME               TPU VM name (required)
  --zone=ZONE              its zone (required)
  --project=PROJECT        GCP project (default: gcloud's configured project)
  --config=PATH            a config under configs/ (required unless --setup); picks t5x.train,
                           t5x.eval or t5x.infer
  --model_dir=GCS_PATH     MODEL_DIR for pretrain/finetune configs
  --initial_checkpoint=P   INITIAL_CHECKPOINT_PATH for finetune configs
  --checkpoint=P           CHECKPOINT_PATH for eval/infer configs
  --output_dir=GCS_PATH    EVAL_OUTPUT_DIR / INFER_OUTPUT_DIR for eval/infer configs
  --tfds_data_dir=GCS_PATH where the TFDS datasets (c4, glue, ...) are prepared
  --spm_path=PATH          a copy of T5's SentencePiece model (sets ALTUP_T5X_SPM_PATH on the workers)
  --remote_dir=DIR         this repository on the workers (default: ~/altup-t5x)
  --env=DIR                the T5X environment on the workers (default: ~/altup-t5x-env)
  --python=BIN             Python on the workers (default: ENV/bin/python)
  --sync                   first copy the local working tree to --remote_dir on every worker
  --setup                  then run scripts/install_t5x.sh --tpu on every worker (creates ENV);
                           with --setup, --config is optional
  --dry_run                print the gcloud commands instead of running them
  -h, --help               this help
EOF
}

TPU= ZONE= PROJECT= CONFIG= MODEL_DIR= INIT_CKPT= CKPT= OUT_DIR= TFDS= SPM=
REMOTE_DIR='~/altup-t5x' ENV_DIR='~/altup-t5x-env' PY= SYNC=0 SETUP=0 DRY=0
EXTRA=()
while (($#)); do
  case "$1" in
    --tpu=*) TPU="${1#*=}" ;;
    --zone=*) ZONE="${1#*=}" ;;
    --project=*) PROJECT="${1#*=}" ;;
    --config=*) CONFIG="${1#*=}" ;;
    --model_dir=*) MODEL_DIR="${1#*=}" ;;
    --initial_checkpoint=*) INIT_CKPT="${1#*=}" ;;
    --checkpoint=*) CKPT="${1#*=}" ;;
    --output_dir=*) OUT_DIR="${1#*=}" ;;
    --tfds_data_dir=*) TFDS="${1#*=}" ;;
    --spm_path=*) SPM="${1#*=}" ;;
    --remote_dir=*) REMOTE_DIR="${1#*=}" ;;
    --env=*) ENV_DIR="${1#*=}" ;;
    --python=*) PY="${1#*=}" ;;
    --sync) SYNC=1 ;;
    --setup) SETUP=1 ;;
    --dry_run) DRY=1 ;;
    -h|--help) usage; exit 0 ;;
    --) shift; EXTRA=("$@"); break ;;
    *) echo "launch_t5x_tpu.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
  shift
done

die() { echo "launch_t5x_tpu.sh: $*" >&2; exit 2; }
[[ -n "$TPU" ]] || die "--tpu is required"
[[ -n "$ZONE" ]] || die "--zone is required"
((SETUP)) || [[ -n "$CONFIG" ]] || die "--config is required (a file under configs/)"
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
[[ -z "$CONFIG" || -f "$ROOT/$CONFIG" ]] || die "--config=$CONFIG: no such file under $ROOT"
[[ -n "$PY" ]] || PY="$ENV_DIR/bin/python"
GCLOUD=(gcloud compute tpus tpu-vm)
LOC=(--zone="$ZONE" --worker=all)
[[ -n "$PROJECT" ]] && LOC+=(--project="$PROJECT")

run() {
  if ((DRY)); then printf '%q ' "$@"; echo; else "$@"; fi
}

if ((SYNC)); then
  # Tracked and untracked-but-not-ignored files only (no virtualenvs or build outputs).
  if ((DRY)); then
    TAR="/tmp/altup-t5x.XXXXXX.tar.gz"
  else
    TAR="$(mktemp -t altup-t5x.XXXXXX.tar.gz)"
    (cd "$ROOT" && git ls-files -co --exclude-standard -z | tar --null -czf "$TAR" -T -)
  fi
  run "${GCLOUD[@]}" scp "$TAR" "$TPU:/tmp/altup-t5x.tar.gz" "${LOC[@]}"
  run "${GCLOUD[@]}" ssh "$TPU" "${LOC[@]}" \
    --command="mkdir -p $REMOTE_DIR && tar -xzf /tmp/altup-t5x.tar.gz -C $REMOTE_DIR"
  ((DRY)) || rm -f "$TAR"
fi
if ((SETUP)); then
  run "${GCLOUD[@]}" ssh "$TPU" "${LOC[@]}" \
    --command="cd $REMOTE_DIR && bash scripts/install_t5x.sh --tpu --prefix $ENV_DIR"
fi
[[ -n "$CONFIG" ]] || exit 0

# Which T5X entry point and which required macros, from the T5X run gin the config includes.
RUN="$(sed -n "s|^include 't5x/configs/runs/\([a-z]*\)\.gin'.*|\1|p" "$ROOT/$CONFIG")"
ARGS=("--gin_file=$CONFIG")
# The value T5X must see is a gin string literal, e.g. --gin.MODEL_DIR='gs://b/x'; printf %q below
# quotes it for the remote shell.
quote() { printf "%s" "--gin.$1='$2'"; }
need() { [[ -n "$2" ]] || die "$CONFIG is a '$RUN' config: $1 is required"; }
case "$RUN" in
  pretrain) SCRIPT=train; need --model_dir "$MODEL_DIR"; ARGS+=("$(quote MODEL_DIR "$MODEL_DIR")") ;;
  finetune) SCRIPT=train; need --model_dir "$MODEL_DIR"; need --initial_checkpoint "$INIT_CKPT"
            ARGS+=("$(quote MODEL_DIR "$MODEL_DIR")" "$(quote INITIAL_CHECKPOINT_PATH "$INIT_CKPT")") ;;
  eval)     SCRIPT=eval; need --checkpoint "$CKPT"; need --output_dir "$OUT_DIR"
            ARGS+=("$(quote CHECKPOINT_PATH "$CKPT")" "$(quote EVAL_OUTPUT_DIR "$OUT_DIR")") ;;
  infer)    SCRIPT=infer; need --checkpoint "$CKPT"; need --output_dir "$OUT_DIR"
            ARGS+=("$(quote CHECKPOINT_PATH "$CKPT")" "$(quote INFER_OUTPUT_DIR "$OUT_DIR")") ;;
  *) die "$CONFIG includes no t5x/configs/runs/{pretrain,finetune,eval,infer}.gin" ;;
esac
# Every worker must read the same prepared datasets (docs/data.md): a bucket, not each VM's disk.
[[ -n "$TFDS" || "$CONFIG" == configs/smoke/* ]] ||
  die "--tfds_data_dir is required for $CONFIG (e.g. gs://\${BUCKET}/tensorflow_datasets)"
[[ -n "$TFDS" ]] && ARGS+=("--tfds_data_dir=$TFDS")
ARGS+=("${EXTRA[@]}")

ENV=""
[[ -n "$SPM" ]] && ENV="ALTUP_T5X_SPM_PATH=$(printf %q "$SPM") "
REMOTE="cd $REMOTE_DIR && ${ENV}$PY -m t5x.$SCRIPT $(printf '%q ' "${ARGS[@]}")"
run "${GCLOUD[@]}" ssh "$TPU" "${LOC[@]}" --command="$REMOTE"
