#!/usr/bin/env bash
# Set up a local virtual environment (.venv) and run one of the project's jobs.
#
#   bash scripts/dev.sh example [args...]  # train the example GAN with DissectionCallback
#   bash scripts/dev.sh test [pytest args] # the whole test suite + the docs build (what CI runs)
#   bash scripts/dev.sh setup              # only create / update .venv
#
# torch: an existing torch in the environment is kept. Otherwise TORCH_SPEC (default
# "torch==2.13.0") is installed first: on the project's CPU machines that resolves to a local CPU
# wheel; elsewhere pip picks the build your platform needs (CUDA on Linux x86-64, etc.).
set -euo pipefail
cd "$(dirname "$0")/.."

job="${1:-test}"
shift || true

python_bin="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$python_bin" -m venv .venv
fi
# shellcheck disable=SC1091
. .venv/bin/activate
export PIP_DISABLE_PIP_VERSION_CHECK=1

if ! python -c "import torch" >/dev/null 2>&1; then
  pip install -q "${TORCH_SPEC:-torch==2.13.0}"
fi
stamp=.venv/.lightning-dissect-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  pip install -q -e ".[test,docs]"
  touch "$stamp"
fi

case "$job" in
  setup)
    ;;
  example)
    python examples/train_gan.py "$@"
    ;;
  test)
    # The report's browser test needs Chromium; install it where we may (root + apt).
    if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 \
        && [ "$(id -u)" = 0 ]; then
      (apt-get install -y -q chromium >/dev/null 2>&1 \
        || (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q chromium >/dev/null 2>&1)) \
        || echo "note: could not install chromium; the browser test will be skipped"
    fi
    ruff check .
    python -m pytest "$@"
    mkdocs build --strict --quiet --site-dir "$(mktemp -d)"
    echo "docs build: ok"
    ;;
  docs)
    mkdocs build --strict --site-dir "${1:-site}"
    ;;
  *)
    echo "unknown job '$job' (use: example | test | setup | docs)" >&2
    exit 2
    ;;
esac
