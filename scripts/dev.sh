#!/usr/bin/env bash
# Set up a local virtual environment (.venv) and run one of the project's jobs.
#
#   bash scripts/dev.sh example [args...]  # train the example GAN with DissectionCallback
#   bash scripts/dev.sh test [pytest args] # the whole test suite + the docs build (what CI runs)
#                                          # (+ the torchvision tests in .venv-tv; TV_SKIP=1 skips them)
#   bash scripts/dev.sh setup              # only create / update .venv
#
# torch: an existing torch in the environment is kept. Otherwise TORCH_SPEC (default
# "torch==2.13.0") is installed first: on the project's CPU machines that resolves to a local CPU
# wheel; elsewhere pip picks the build your platform needs (CUDA on Linux x86-64, etc.).
# PyPI's torchvision does not load beside torch 2.13, so the tests marked `torchvision` run in a
# second environment, .venv-tv, with TV_SPEC (default "torch==2.14.1 torchvision==0.29.1").
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
  pip install -q -e ".[test,docs,ci]"
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
    # a test skipped because transformers / scipy / torchvision is missing fails here
    export LIGHTNING_DISSECT_REQUIRE_EXTRAS=1
    python -m pytest -m "not torchvision" "$@"
    if [ "${TV_SKIP:-0}" != 1 ]; then
      tv_stamp=.venv-tv/.lightning-dissect-installed
      # torchvision (and timm, which needs it) beside the package's own dependencies
      tv_packages="${TV_SPEC:-torch==2.14.1 torchvision==0.29.1} numpy pytest lightning torchmetrics rich tensorboard pillow timm"
      if [ ! -f "$tv_stamp" ] || [ "$(cat "$tv_stamp")" != "$tv_packages" ]; then
        [ -x .venv-tv/bin/python ] || "$python_bin" -m venv .venv-tv
        # shellcheck disable=SC2086
        .venv-tv/bin/pip install -q $tv_packages
        echo "$tv_packages" > "$tv_stamp"
      fi
      # the package is imported from the repository root (python -m pytest puts it on sys.path)
      .venv-tv/bin/python -m pytest -q -m torchvision tests/test_segmenters_real.py tests/test_layouts_torchvision.py
    fi
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
