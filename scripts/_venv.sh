# Sourced by scripts/quickstart.sh and scripts/test.sh: creates the virtual environment on first
# use, installs this package (with the extras in $1, e.g. "[test]") and sets $VENV.
# pip's output goes to $VENV/pip.log; it is shown only when pip fails.
VENV="${ALTUP_VENV:-.venv}"
_venv_pip() {
  if ! "$VENV/bin/pip" "$@" >>"$VENV/pip.log" 2>&1; then
    cat "$VENV/pip.log" >&2
    echo "ERROR: pip $* failed; its output is above and in $VENV/pip.log" >&2
    return 1
  fi
}
if [ ! -x "$VENV/bin/python" ]; then
  echo "Creating $VENV and installing this package with its dependencies (first run only)..."
  python3 -m venv "$VENV"
  : >"$VENV/pip.log"
  _venv_pip install --upgrade pip
else
  : >"$VENV/pip.log"
fi
_venv_pip install -e ".${1:-}"
export TF_CPP_MIN_LOG_LEVEL=2 CUDA_VISIBLE_DEVICES=""
