#!/usr/bin/env bash
# Install napari-itaclip into ./.venv (created if missing).
#   bash scripts/install.sh          # the plugin, the library, the CLI and the hf extra
#                                    #   (transformers, for BiomedCLIP-style text towers)
#   bash scripts/install.sh --test   # + test dependencies and, as root, the Xvfb/Qt
#                                    #   system libraries the headless GUI tests need
# Environment: PYTHON (default python3; Python 3.11 to 3.13), VENV (default .venv),
# TORCH_SPEC (default "torch==2.14.1 torchvision==0.29.1"; set it to "" to keep the
# torch you have, or to let a constraints file choose). pip's own variables apply:
# PIP_CONSTRAINT=$PWD/constraints/min.txt TORCH_SPEC= VENV=.venv-min bash scripts/install.sh --test
# installs the oldest versions pyproject.toml allows.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
TORCH_SPEC=${TORCH_SPEC-"torch==2.14.1 torchvision==0.29.1"}
test_deps=0
[ "${1:-}" = "--test" ] && test_deps=1

if [ "$test_deps" = 1 ]; then
  pkgs="xvfb libxkbcommon-x11-0 libxcb-icccm4 libxcb-image0 libxcb-keysyms1 libxcb-randr0
        libxcb-render-util0 libxcb-xinerama0 libxcb-xfixes0 libxcb-shape0 libxcb-cursor0
        libdbus-1-3 libgl1 libegl1 libfontconfig1 libglib2.0-0"
  if command -v apt-get >/dev/null 2>&1; then
    SUDO=""
    [ "$(id -u)" != 0 ] && command -v sudo >/dev/null 2>&1 && SUDO="sudo"
    if [ "$(id -u)" = 0 ] || [ -n "$SUDO" ]; then
      export DEBIAN_FRONTEND=noninteractive
      $SUDO apt-get update -qq
      # shellcheck disable=SC2086
      $SUDO apt-get install -y -qq --no-install-recommends $pkgs >/dev/null
    else
      echo "note: not root and no sudo; GUI tests need: $pkgs" >&2
    fi
  else
    echo "note: no apt-get; install Xvfb and the Qt xcb libraries for the GUI tests" >&2
  fi
fi

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
if [ -n "$TORCH_SPEC" ]; then
  # shellcheck disable=SC2086
  "$VENV/bin/python" -m pip install -q $TORCH_SPEC
fi
if [ "$test_deps" = 1 ]; then
  "$VENV/bin/python" -m pip install -q -e ".[all,io,hf,testing]"
else
  "$VENV/bin/python" -m pip install -q -e ".[all,io,hf]"
fi
"$VENV/bin/python" -c "import napari_itaclip, torch, open_clip; print('napari-itaclip', napari_itaclip.__version__, '| torch', torch.__version__, '| open_clip', open_clip.__version__)"
