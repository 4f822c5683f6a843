# Sourced by scripts/quickstart.sh and scripts/test.sh: creates the virtual environment on first
# use, installs this package (with the extras in $1, e.g. "[test]") and sets $VENV.
VENV="${ALTUP_VENV:-.venv}"
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip
fi
"$VENV/bin/pip" install -q -e ".${1:-}"
export TF_CPP_MIN_LOG_LEVEL=2 CUDA_VISIBLE_DEVICES=""
