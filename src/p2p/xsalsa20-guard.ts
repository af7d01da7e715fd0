/**
 * A guard for `xsalsa20`, the cipher under `@libp2p/pnet` (private meshes, `--swarm-key`).
 *
 * Its WebAssembly memory is shared by every cipher in the process and capped at 64 MiB (1000
 * pages). Two flaws together crashed nodes: each cipher keeps its own view of that memory, and
 * after another cipher grew it the view is detached (length 0). The next update then "grows" by
 * its whole size again, instead of by what is missing. So memory climbed by every large write
 * until `WebAssembly.Memory.grow()` threw inside pnet's send path. That throw is uncaught: the
 * node died. A split replica's head triggered it while it loaded tensors into workers (issue 16);
 * so could any large transfer on a private mesh. Also, one update of more than 64 MiB cannot fit
 * at all, and pnet encrypts its whole send queue in one update.
 *
 * The guard: `realloc` first refreshes the view (grow by 0 pages) and then grows by what is
 * missing (and `finalize`, which zeroes the key through that view, refreshes it first); `update` works in slices of at most 1 MiB (a stream cipher: slices give the same bytes).
 * Memory then stays at about 1 MiB whatever is sent. Idempotent; loaded by host.ts before pnet is used.
 */
import { createRequire } from 'node:module'

interface Cipher { update: (input: Uint8Array, output?: Uint8Array) => Uint8Array }
interface CipherCtor { new (nonce: Uint8Array, key: Uint8Array): Cipher, prototype: Cipher & { __shepherdGuard?: true } }
interface WasmXor { _memory: Uint8Array, realloc: (size: number) => void }

/** Slice size for one cipher update. */
export const XSALSA20_SLICE_BYTES = 1 << 20

let applied = false

/** Applies the guard to the `xsalsa20` that `@libp2p/pnet` uses; true when applied (now or before). */
export function guardXsalsa20 (): boolean {
  if (applied) return true
  const require = createRequire(import.meta.url)
  let XSalsa20: CipherCtor
  try {
    // Resolved from @libp2p/pnet, so the guard patches the very module pnet loads.
    XSalsa20 = require(require.resolve('xsalsa20', { paths: [require.resolve('@libp2p/pnet')] })) as CipherCtor
  } catch {
    return false
  }
  if (XSalsa20.prototype.__shepherdGuard === true) { applied = true; return true }
  const probe = new XSalsa20(new Uint8Array(24), new Uint8Array(32)) as unknown as { _xor: WasmXor }
  const xor = probe._xor
  const wasm = Object.getPrototypeOf(xor) as WasmXor & { finalize: () => void }
  // Only the WebAssembly variant has the flaw (the JS fallback has no realloc).
  if (typeof wasm.realloc === 'function' && '_memory' in xor) {
    const realloc = wasm.realloc
    wasm.realloc = function (this: WasmXor, size: number) {
      // Growing by 0 pages refreshes a detached view to the memory's real size...
      realloc.call(this, this._memory.length)
      // ...and only then does it grow, by what is missing.
      if (size >= this._memory.length) realloc.call(this, size)
    }
    // finalize() zeroes the key through the same view: refresh it first, or it throws.
    const finalize = wasm.finalize
    wasm.finalize = function (this: WasmXor & { finalize: () => void }) {
      realloc.call(this, this._memory.length)
      finalize.call(this)
    }
  }
  ;(probe as unknown as { finalize: () => void }).finalize()
  const update = XSalsa20.prototype.update
  XSalsa20.prototype.update = function (this: Cipher, input: Uint8Array, output?: Uint8Array): Uint8Array {
    if (input.length <= XSALSA20_SLICE_BYTES) return update.call(this, input, output)
    const out = output ?? new Uint8Array(input.length)
    for (let i = 0; i < input.length; i += XSALSA20_SLICE_BYTES) {
      const end = Math.min(input.length, i + XSALSA20_SLICE_BYTES)
      update.call(this, input.subarray(i, end), out.subarray(i, end))
    }
    return out
  }
  XSalsa20.prototype.__shepherdGuard = true
  applied = true
  return true
}

guardXsalsa20()
