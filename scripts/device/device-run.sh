#!/usr/bin/env bash
# Runs on a device machine (see docs/GPU.md): unpacks .cache/device/carry/payload.tar.xz made by
# scripts/device/pack.sh, points the loader at the machine's CUDA 13 runtime and cuBLAS, and runs
# scripts/device/embedded-gpu.mjs. Writes report.json, run.log and env.txt into $OUT.
# Arguments go to embedded-gpu.mjs.
set -uo pipefail
OUT=${OUT:-/tmp/shepherd-device-out}
mkdir -p "$OUT"
D=/tmp/shepherd-device
PAYLOAD=.cache/device/carry/payload.tar.xz
if [ ! -x "$D/node" ]; then
  mkdir -p "$D"
  if command -v xz >/dev/null; then xz -dc "$PAYLOAD"
  else python3 -c 'import lzma,shutil,sys; shutil.copyfileobj(lzma.open(sys.argv[1]), sys.stdout.buffer)' "$PAYLOAD"
  fi | tar -C "$D" -xf - || exit 1
fi

# node-llama-cpp's CUDA build links libcudart.so.13 and libcublas.so.13; the image has them
# somewhere under /usr/local or in the Python venv's nvidia-* wheels.
libdirs=$(find /usr/local /usr/lib /opt -name 'libcublas.so.13*' -o -name 'libcudart.so.13*' 2>/dev/null | xargs -r -n1 dirname | sort -u | paste -sd:)
export LD_LIBRARY_PATH="${libdirs}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
CUDA_SO="$D/node_modules/@node-llama-cpp/linux-x64-cuda/bins/linux-x64-cuda/libggml-cuda.so"
{
  echo "## date"; date -u +%FT%TZ
  echo "## uname"; uname -a
  echo "## cpu"; grep -m1 'model name' /proc/cpuinfo; nproc
  echo "## nvidia-smi -L"; nvidia-smi -L
  echo "## nvcc"; nvcc --version 2>&1 | tail -2
  echo "## LD_LIBRARY_PATH"; echo "$LD_LIBRARY_PATH"
  echo "## ldd libggml-cuda.so"; ldd "$CUDA_SO" | grep -E 'cuda|cublas|not found'
  echo "## node"; "$D/node" --version
} > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"

# The driver's JIT cache for PTX, kept where it can be measured.
export CUDA_CACHE_PATH="$D/nv-compute-cache"
cp .cache/device/carry/embedded-gpu.mjs "$D/" || exit 1
cd "$D"
SHEPHERD_LOG=${SHEPHERD_LOG:-info} timeout "${RUN_TIMEOUT:-420}" ./node embedded-gpu.mjs "$@" > "$OUT/report.json" 2> "$OUT/run.log"
rc=$?
tail -c 6000 "$OUT/run.log"
echo "embedded-gpu.mjs exit $rc"
echo "CUDA JIT cache: $(du -sh "$CUDA_CACHE_PATH" 2>/dev/null | cut -f1)"
exit $rc
