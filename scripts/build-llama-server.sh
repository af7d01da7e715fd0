#!/usr/bin/env bash
# Builds `llama-server` and `rpc-server` (llama.cpp's RPC backend, `-DGGML_RPC=ON`, used to split
# one model over several nodes) from the llama.cpp source node-llama-cpp ships (a git bundle), into
# a cache keyed by the bundle's hash and this recipe's version, so it is rebuilt only when the
# bundle or the recipe changes or on a new machine. Prints llama-server's path on stdout (build
# output goes to stderr); `rpc-server` lies in the same folder.
#
#   bash scripts/build-llama-server.sh            # build if needed, print llama-server's path
#   bash scripts/build-llama-server.sh --rpc-server   # build if needed, print rpc-server's path
#   SHEPHERD_CACHE=/some/dir bash scripts/...     # cache elsewhere
#   LLAMA_SERVER_CMAKE_ARGS="-DGGML_CUDA=ON" bash scripts/...   # a GPU build, cached apart
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
bundle="${LLAMA_CPP_BUNDLE:-$root/node_modules/node-llama-cpp/llama/gitRelease.bundle}"
if [ ! -f "$bundle" ]; then
  echo "build-llama-server: no llama.cpp bundle at $bundle (run npm install first)" >&2
  exit 1
fi

for tool in git cmake c++; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    echo "build-llama-server: '$tool' is required" >&2
    exit 1
  fi
done

want="llama-server"
case "${1:-}" in
  "") ;;
  --rpc-server) want="rpc-server" ;;
  *) echo "build-llama-server: unknown argument '$1' (only --rpc-server)" >&2; exit 2 ;;
esac

# Bump when the build recipe changes what the cache holds (rpc1: adds GGML_RPC and rpc-server), so
# entries built by an older recipe are rebuilt rather than reused.
recipe="rpc1"
extra="${LLAMA_SERVER_CMAKE_ARGS:-}"
hash="$(sha256sum "$bundle" | cut -c1-16)-$recipe"
# Extra CMake arguments make a different binary: it gets its own cache entry.
if [ -n "$extra" ]; then
  hash="$hash-$(printf '%s' "$extra" | sha256sum | cut -c1-8)"
fi
cache="${SHEPHERD_CACHE:-$HOME/.cache/shepherd-mesh}/llama-server/$hash"
binary="$cache/llama-server"
rpc_binary="$cache/rpc-server"
wanted="$cache/$want"

if [ -x "$binary" ] && [ -x "$rpc_binary" ]; then
  echo "$wanted"
  exit 0
fi

mkdir -p "$cache"
# One build at a time per cache entry: a second caller waits for the first, then finds the binary.
exec 9>"$cache/.lock"
if command -v flock >/dev/null 2>&1; then
  flock 9
fi
if [ -x "$binary" ] && [ -x "$rpc_binary" ]; then
  echo "$wanted"
  exit 0
fi

work="$(mktemp -d "${TMPDIR:-/tmp}/llama-server-build.XXXXXX")"
trap 'rm -rf "$work"' EXIT

jobs="$(nproc 2>/dev/null || getconf _NPROCESSORS_ONLN 2>/dev/null || echo 2)"
start="$(date +%s)"
{
  git clone --quiet "$bundle" "$work/llama.cpp"
  cd "$work/llama.cpp"
  cmake -B build -DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF -DBUILD_SHARED_LIBS=OFF -DGGML_NATIVE=OFF \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=ON -DGGML_RPC=ON $extra
  # llama.cpp names the RPC tool's target `ggml-rpc-server` (older trees: `rpc-server`).
  rpc_target="ggml-rpc-server"
  if ! grep -q 'ggml-rpc-server' tools/rpc/CMakeLists.txt 2>/dev/null; then rpc_target="rpc-server"; fi
  cmake --build build --config Release --target llama-server "$rpc_target" -j"$jobs"
} >&2

built="$(find "$work/llama.cpp/build" -type f -name llama-server -perm -u+x | head -n1)"
built_rpc="$(find "$work/llama.cpp/build" -type f \( -name ggml-rpc-server -o -name rpc-server \) -perm -u+x | head -n1)"
if [ -z "$built" ] || [ -z "$built_rpc" ]; then
  echo "build-llama-server: the build produced no llama-server or rpc-server binary" >&2
  exit 1
fi
# Copy then rename, so a reader never sees a half-written binary; rpc-server first, because
# llama-server's presence is what older callers test for.
cp "$built_rpc" "$rpc_binary.tmp"
chmod +x "$rpc_binary.tmp"
mv "$rpc_binary.tmp" "$rpc_binary"
cp "$built" "$binary.tmp"
chmod +x "$binary.tmp"
mv "$binary.tmp" "$binary"
echo "build-llama-server: built in $(( $(date +%s) - start )) s" >&2
echo "$wanted"
