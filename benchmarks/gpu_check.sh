#!/usr/bin/env bash
# One-command GPU check of the engine (issue #11): GPU fp32 vs CPU parity, half=True
# label agreement, throughput per preset, first run vs cached-vocabulary times, all on a
# full-size ViT-B-16-quickgelu with seeded random weights (no download). Writes one JSON:
# $1 if given, else $OUT/gpu_check.json (the device tool's output folder), else
# benchmarks/results/gpu_check.json. Extra arguments go to gpu_check.py
# (e.g. --device cpu --quick for a smoke test without a GPU). Budget: ~7 minutes.
#
# The machine needs torch (+torchvision), timm, numpy and scikit-image. open_clip and the
# pure-Python packages it and this project need beyond those are installed from wheels
# carried in the git-ignored folder .whl/ when `import open_clip` fails. Prepare them
# once on a machine with PyPI access, in the repository root:
#
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#       --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
#       --platform manylinux2014_x86_64 -d .whl \
#       open_clip_torch==3.3.0 ftfy==6.3.1 wcwidth==0.9.4 platformdirs==4.14.8
#
# (open_clip_torch needs torch, torchvision, regex, ftfy, tqdm, huggingface-hub,
# safetensors, timm; the GPU image lacks ftfy and its dependency wcwidth; platformdirs
# is this project's.) Then, with the device tool: carry ".whl" and run
#   bash benchmarks/gpu_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

json="${OUT:-benchmarks/results}/gpu_check.json"
if [[ $# -gt 0 && "$1" != -* ]]; then
    json="$1"
    shift
fi
mkdir -p "$(dirname "$json")"

if ! "$PY" -c "import open_clip, ftfy, platformdirs" 2>/dev/null; then
    if compgen -G ".whl/*.whl" >/dev/null; then
        echo "installing carried wheels: $(ls .whl | tr '\n' ' ')"
        "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
            --target /tmp/itaclip-site .whl/*.whl
        export PYTHONPATH="/tmp/itaclip-site${PYTHONPATH:+:$PYTHONPATH}"
    else
        echo "open_clip (or ftfy/platformdirs) is missing and .whl/ holds no wheels: see this script's header" >&2
        exit 2
    fi
fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
fi
exec "$PY" benchmarks/gpu_check.py --json "$json" "$@"
