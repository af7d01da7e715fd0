/**
 * The xsalsa20 guard (src/p2p/xsalsa20-guard.ts): the cipher under private meshes' pnet no longer
 * exhausts its shared WebAssembly memory when several ciphers alternate large writes (what killed
 * a split's head while it loaded tensors), and slicing large updates changes no byte.
 */
import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { randomBytes } from 'node:crypto'
import { createRequire } from 'node:module'
import { XSALSA20_SLICE_BYTES, guardXsalsa20 } from '../../src/p2p/xsalsa20-guard.js'

const require = createRequire(import.meta.url)
type Cipher = { update: (input: Uint8Array, output?: Uint8Array) => Uint8Array, finalize: () => void }
const XSalsa20 = require(require.resolve('xsalsa20', { paths: [require.resolve('@libp2p/pnet')] })) as (nonce: Uint8Array, key: Uint8Array) => Cipher

describe('xsalsa20 guard', () => {
  it('is applied to the module pnet uses', () => {
    assert.equal(guardXsalsa20(), true)
  })

  it('survives ciphers alternating large and small writes (unguarded, 64 MiB of growth crashed the node)', () => {
    const key = randomBytes(32)
    const a = XSalsa20(randomBytes(24), key)
    const b = XSalsa20(randomBytes(24), key)
    const big = new Uint8Array(10 * 1024 * 1024)
    const small = new Uint8Array(1000)
    // Unguarded this threw `WebAssembly.Memory.grow(): Maximum memory size exceeded` in round 6.
    for (let i = 0; i < 40; i++) { a.update(big); b.update(small) }
    // One update bigger than the whole 64 MiB memory goes through too.
    a.update(new Uint8Array(80 * 1024 * 1024))
    a.finalize()
    b.finalize()
  })

  it('gives the same bytes for one large update as for the stream in small pieces', () => {
    const key = randomBytes(32)
    const nonce = randomBytes(24)
    const input = randomBytes(3 * XSALSA20_SLICE_BYTES + 12345)
    const whole = XSalsa20(nonce, key).update(input)
    const pieces = XSalsa20(nonce, key)
    const out = new Uint8Array(input.length)
    for (let i = 0; i < input.length;) {
      const n = Math.min(input.length - i, 1 + ((i * 7919) % 70_000))
      out.set(pieces.update(input.subarray(i, i + n)), i)
      i += n
    }
    assert.ok(Buffer.from(whole).equals(Buffer.from(out)))
    assert.ok(!Buffer.from(whole).equals(input), 'it did encrypt')
  })
})
