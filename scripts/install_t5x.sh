#!/usr/bin/env bash
# Creates a Python environment that runs this repository's configs with T5X: a virtual environment
# with this package (and setup.py's pinned versions), T5X's other PyPI dependencies, and T5X,
# airio, jestimator and flaxformer cloned from GitHub at the commits in t5x_pins.txt and installed
# `pip install --no-deps -e`. Run it from a checkout of this repository, on every machine (every
# TPU VM worker: scripts/launch_t5x_tpu.sh --setup; every GPU host: scripts/launch_t5x_gpu.sh
# --setup).
#
#   bash scripts/install_t5x.sh --tpu                # on a Cloud TPU VM (adds jax[tpu] + libtpu)
#   bash scripts/install_t5x.sh --gpu                # on an NVIDIA GPU host (adds jax[cuda12])
#   bash scripts/install_t5x.sh                      # CPU only (the smoke configs)
#   bash scripts/install_t5x.sh --dry_run            # print the commands, run and create nothing
#
# Then: ~/altup-t5x-env/bin/python -m t5x.train --gin_file=configs/... (the launch scripts use
# that Python by default). Running it again reuses the environment and the clones.
set -euo pipefail

usage() {
  sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'
  cat <<'EOF'
Options:
  --prefix=DIR     the virtual environment to create or update (default: ~/altup-t5x-env)
  --src=DIR        where the GitHub projects are cloned (default: PREFIX/src)
  --python=BIN     the Python that creates the environment (default: python3; 3.10 or newer)
  --tpu            also install jax for Cloud TPU (the tpu line of t5x_pins.txt)
  --gpu            also install jax for NVIDIA GPUs (the gpu line of t5x_pins.txt)
  --dry_run        print every command instead of running it; nothing is created
  -h, --help       this help
EOF
}

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PINS="$ROOT/t5x_pins.txt"
PREFIX="$HOME/altup-t5x-env" SRC= BASE_PY=python3 TPU=0 GPU=0 DRY=0
while (($#)); do
  case "$1" in
    --prefix=*) PREFIX="${1#*=}" ;;
    --prefix) shift; PREFIX="${1:?--prefix needs a directory}" ;;
    --src=*) SRC="${1#*=}" ;;
    --python=*) BASE_PY="${1#*=}" ;;
    --tpu) TPU=1 ;;
    --gpu) GPU=1 ;;
    --dry_run) DRY=1 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "install_t5x.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
  shift
done
die() { echo "install_t5x.sh: $*" >&2; exit 2; }
((TPU && GPU)) && die "--tpu and --gpu exclude each other (one jax build per environment)"
[[ -f "$PINS" ]] || die "no $PINS (run this script from a checkout of the repository)"
[[ -n "$SRC" ]] || SRC="$PREFIX/src"

# t5x_pins.txt: `git NAME URL COMMIT`, `pip SPEC`, `tpu SPEC FIND_LINKS`, `gpu SPEC` lines.
GIT_NAMES=() GIT_URLS=() GIT_COMMITS=() PIP_SPECS=() TPU_SPEC= TPU_LINKS= GPU_SPEC=
while read -r kind a b c; do
  case "$kind" in
    ''|'#'*) ;;
    git) [[ "$c" =~ ^[0-9a-f]{40}$ ]] || die "t5x_pins.txt: '$a' needs a 40-hex commit, got '$c'"
         GIT_NAMES+=("$a") GIT_URLS+=("$b") GIT_COMMITS+=("$c") ;;
    pip) PIP_SPECS+=("$a") ;;
    tpu) TPU_SPEC="$a" TPU_LINKS="$b" ;;
    gpu) GPU_SPEC="$a" ;;
    *) die "t5x_pins.txt: unknown line kind '$kind' (expected git, pip, tpu or gpu)" ;;
  esac
done <"$PINS"

run() {
  if ((DRY)); then printf '%q ' "$@"; echo; else "$@"; fi
}

PY="$PREFIX/bin/python"
if ((DRY)) || [[ ! -x "$PY" ]]; then
  run "$BASE_PY" -m venv "$PREFIX"
fi
run "$PY" -m pip install --upgrade pip
run "$PY" -m pip install -e "$ROOT"
run "$PY" -m pip install "${PIP_SPECS[@]}"
((TPU)) && run "$PY" -m pip install "$TPU_SPEC" -f "$TPU_LINKS"
((GPU)) && run "$PY" -m pip install "$GPU_SPEC"
((DRY)) || mkdir -p "$SRC"
for i in "${!GIT_NAMES[@]}"; do
  dir="$SRC/${GIT_NAMES[$i]}"
  if ((DRY)) || [[ ! -d "$dir/.git" ]]; then
    run git clone --quiet "${GIT_URLS[$i]}" "$dir"
  else
    run git -C "$dir" fetch --quiet origin
  fi
  run git -C "$dir" -c advice.detachedHead=false checkout --quiet "${GIT_COMMITS[$i]}"
  run "$PY" -m pip install --no-deps -e "$dir"
done
run "$PY" -c "import t5x, airio, jestimator, flaxformer, altup_t5x, jax
print('T5X environment ready: t5x', t5x.__file__, 'jax', jax.__version__)"
((DRY)) || echo "Use $PY (the launch scripts' default)."
