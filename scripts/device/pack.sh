#!/usr/bin/env bash
# Packs everything scripts/device/embedded-gpu.mjs needs on a bare device machine (no Node.js,
# no npm registry) into .cache/device/carry/payload.tar.xz, under the 64 MiB carry limit:
#   node            this machine's Node binary (same major as the project's engines field)
#   node_modules/   node-llama-cpp and its run-time dependencies, without the 34 MB llama.cpp
#                   source bundle it only needs to compile; the CPU prebuilt
#                   (@node-llama-cpp/linux-x64) and the CUDA one (linux-x64-cuda), whose
#                   libggml-cuda.so keeps only its compute_90 PTX (scripts/device/strip-fatbin.mjs)
# Beside it, .cache/device/carry/embedded-gpu.mjs: the runner and the project's TypeScript it
# imports, as one esbuild bundle (node-llama-cpp stays external: it finds its binaries
# relative to itself). Run from anywhere; takes a few minutes on 2 cores (xz -9), about ten
# with PTX_ISA set (zstd -19 on each PTX module).
# Usage: scripts/device/pack.sh [all|bundle|payload]   (env PTX_ISA=9.0 to relabel the PTX)
set -euo pipefail
cd "$(dirname "$0")/../.."
DEST=.cache/device
STAGE=$DEST/stage
mkdir -p "$DEST/carry"
WHAT=${1:-all} # all | bundle | payload
# The bundle travels beside the payload, not in it, so that changing the runner needs no repack:
# `scripts/device/pack.sh bundle`.
[ "$WHAT" != payload ] && node_modules/.bin/esbuild scripts/device/embedded-gpu.mjs --bundle --platform=node --format=esm --target=node20 \
  --external:node-llama-cpp --log-level=warning \
  --banner:js="import { createRequire as __createRequire } from 'node:module'; const require = __createRequire(import.meta.url);" \
  --outfile="$DEST/carry/embedded-gpu.mjs"
[ "$WHAT" = bundle ] && exit 0

rm -rf "$STAGE" "$DEST/carry/payload.tar.xz"
mkdir -p "$STAGE/node_modules"
cp "$(node -p process.execPath)" "$STAGE/node"

node scripts/device/closure.mjs node-llama-cpp @node-llama-cpp/linux-x64 @node-llama-cpp/linux-x64-cuda > "$DEST/closure.txt"
tar -cf - --exclude=node-llama-cpp/llama/gitRelease.bundle \
  --exclude=linux-x64-cuda/bins/linux-x64-cuda/libggml-cuda.so -T "$DEST/closure.txt" | tar -C "$STAGE" -xf -
# PTX_ISA=9.0 relabels the PTX for CUDA 13.0 drivers (580.x): see strip-fatbin.mjs and docs/GPU.md.
node scripts/device/strip-fatbin.mjs ${PTX_ISA:+--ptx-isa "$PTX_ISA"} node_modules/@node-llama-cpp/linux-x64-cuda/bins/linux-x64-cuda/libggml-cuda.so \
  "$STAGE/node_modules/@node-llama-cpp/linux-x64-cuda/bins/linux-x64-cuda/libggml-cuda.so" ptx90 > "$DEST/strip-fatbin.json"

tar -C "$STAGE" -cf - . | xz -9 -T2 > "$DEST/carry/payload.tar.xz"
ls -l "$DEST/carry/payload.tar.xz"
