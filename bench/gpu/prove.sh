#!/usr/bin/env bash
# The GPU proof in one device call: rebuild the payload from its parts, install onnxruntime-gpu
# and the missing packages, then prove and measure (bench/gpu/prove.py run).
#
#   bash bench/gpu/prove.sh             # on the device, once every part was received
#   bash bench/gpu/prove.sh --dry-run   # here, on the CPU, with prepare.py --dry-run's parts
#
# Where things go (variables, with their defaults on the device):
#   SEMDB_GPU_STORE=/tmp/semdb-gpu   parts/ (received), payload.tar.xz, payload/
#   ORT_TARGET=/tmp/ortgpu           pip install --target for onnxruntime-gpu
#   SITE_TARGET=/tmp/site            pip install --target for the other wheels
#   OUT                              results (gpu-*.json, gpu-logs.txt); $STORE/out if unset
#   PYTHON=python3
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 2
ROOT=$PWD
PY=${PYTHON:-python3}
STORE=${SEMDB_GPU_STORE:-/tmp/semdb-gpu}
ORT_TARGET=${ORT_TARGET:-/tmp/ortgpu}
SITE_TARGET=${SITE_TARGET:-/tmp/site}
OUT=${OUT:-$STORE/out}
MODE=--device
[ "${1:-}" = "--dry-run" ] && MODE=--dry-run
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
mkdir -p "$OUT"

t0=$(date +%s)
"$PY" bench/gpu/parts.py join "$STORE/parts" "$STORE/payload.tar.xz" || exit 3
"$PY" bench/gpu/prove.py setup --store "$STORE" --ort-target "$ORT_TARGET" \
    --site-target "$SITE_TARGET" || exit 4
echo "[prove.sh] payload rebuilt and installed in $(( $(date +%s) - t0 )) s"

export PYTHONPATH="$ORT_TARGET:$SITE_TARGET:$ROOT"
LIBS=$("$PY" bench/gpu/prove.py cuda-libs)
[ -n "$LIBS" ] && export LD_LIBRARY_PATH="$LIBS${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
"$PY" bench/gpu/prove.py run "$MODE" --payload "$STORE/payload" --out "$OUT" \
    --ort-target "$ORT_TARGET" --work "$STORE/work"
