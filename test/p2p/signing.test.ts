import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import fc from 'fast-check'
import { generateKeyPair } from '@libp2p/crypto/keys'
import { createIdentity, peerIdOf } from '../../src/p2p/identity.js'
import { canonicalJson, publicKeyOfPeer, signObject, signedBytes, verifyObject, MAX_CANONICAL_DEPTH, SigningError } from '../../src/p2p/signing.js'
import { createCommand, signResult, verifyCommand, verifyResult, COMMAND_SIGNING_DOMAIN, RESULT_SIGNING_DOMAIN } from '../../src/p2p/command-messages.js'

/** The same JSON value with its object keys in another order. */
function shuffleKeys (v: unknown, rnd: () => number): unknown {
  if (Array.isArray(v)) return v.map(x => shuffleKeys(x, rnd))
  if (v !== null && typeof v === 'object') {
    const keys = Object.keys(v).sort(() => rnd() - 0.5)
    return Object.fromEntries(keys.map(k => [k, shuffleKeys((v as Record<string, unknown>)[k], rnd)]))
  }
  return v
}

describe('canonical JSON', () => {
  it('sorts keys at every depth and writes no whitespace', () => {
    assert.equal(canonicalJson({ b: 1, a: [{ z: true, y: null }, 'x'], c: { e: -0, d: 1.5e-7 } }), '{"a":[{"y":null,"z":true},"x"],"b":1,"c":{"d":1.5e-7,"e":0}}')
  })

  it('leaves out undefined members, as JSON does', () => {
    assert.equal(canonicalJson({ a: undefined, b: 2 }), '{"b":2}')
  })

  it('sorts keys by UTF-16 code units and escapes strings as JSON does', () => {
    assert.equal(canonicalJson({ é: 1, z: 2, '\u0001': 'line\nbreak "q"' }), '{"\\u0001":"line\\nbreak \\"q\\"","z":2,"é":1}')
  })

  it('refuses what has no single JSON form', () => {
    for (const bad of [NaN, Infinity, new Date(0), new Map(), new Uint8Array(2), 10n, () => 1, [undefined], Symbol('s')]) {
      assert.throws(() => canonicalJson({ x: bad }), SigningError, String(bad))
    }
  })

  it(`refuses nesting deeper than ${MAX_CANONICAL_DEPTH} levels instead of overflowing the stack`, () => {
    let deep: unknown = 1
    for (let i = 0; i < 100_000; i++) deep = [deep]
    assert.throws(() => canonicalJson(deep), (err: any) => err.code === 'too_deep')
    let ok: unknown = 1
    for (let i = 0; i < MAX_CANONICAL_DEPTH; i++) ok = [ok]
    assert.equal(canonicalJson(ok), '['.repeat(MAX_CANONICAL_DEPTH) + '1' + ']'.repeat(MAX_CANONICAL_DEPTH))
  })

  it('is the same for equal values whatever their key order, and parses back to the value (property)', () => {
    fc.assert(fc.property(fc.jsonValue({ maxDepth: 6 }), fc.integer(), (value, seed) => {
      let s = seed
      const rnd = (): number => { s = (s * 1103515245 + 12345) & 0x7fffffff; return s / 0x7fffffff }
      const a = canonicalJson(value)
      assert.equal(canonicalJson(shuffleKeys(value, rnd)), a)
      assert.equal(canonicalJson(JSON.parse(a)), a)
      assert.deepEqual(JSON.parse(a), JSON.parse(JSON.stringify(value)))
    }), { numRuns: 300 })
  })
})

describe('Ed25519 signatures with peer keys', () => {
  it('verifies against the key inside the signer\'s peer id, and nothing else', async () => {
    const [k1, k2] = await Promise.all([createIdentity(), createIdentity()])
    const signed = await signObject(k1, 'test/1', { a: 1, b: ['x'] })
    assert.match(signed.sig, /^[A-Za-z0-9+/]{86}==$/)
    assert.equal(await verifyObject(peerIdOf(k1), 'test/1', signed), true)
    assert.equal(await verifyObject(peerIdOf(k1), 'test/1', { b: ['x'], sig: signed.sig, a: 1 }), true, 'key order does not matter')
    assert.equal(await verifyObject(peerIdOf(k2), 'test/1', signed), false, 'another signer')
    assert.equal(await verifyObject(peerIdOf(k1), 'test/2', signed), false, 'another domain')
    assert.equal(await verifyObject(peerIdOf(k1), 'test/1', { ...signed, a: 2 }), false, 'an altered field')
    assert.equal(await verifyObject(peerIdOf(k1), 'test/1', { ...signed, c: 0 }), false, 'an added field')
  })

  it('never throws on junk: bad base64, wrong length, not a peer id, unsignable value', async () => {
    const k = await createIdentity()
    const id = peerIdOf(k)
    const signed = await signObject(k, 'd', { a: 1 })
    for (const sig of ['', 'AAAA', signed.sig.slice(0, -4) + '====', signed.sig + 'AA', '!'.repeat(86) + '==']) {
      assert.equal(await verifyObject(id, 'd', { a: 1, sig }), false, sig)
    }
    assert.equal(await verifyObject('not-a-peer-id', 'd', signed), false)
    assert.equal(await verifyObject(id, 'd', { a: NaN, sig: signed.sig }), false)
  })

  it('accepts only Ed25519 signers: a secp256k1 peer id is refused even with a valid signature', async () => {
    const secp = await generateKeyPair('secp256k1')
    const id = peerIdOf(secp)
    assert.throws(() => publicKeyOfPeer(id), (err: any) => err.code === 'bad_signer')
    const signed = await signObject(secp, 'd', { a: 1 })
    assert.equal(await secp.publicKey.verify(signedBytes('d', signed), Buffer.from(signed.sig, 'base64')), true, 'the signature itself is good')
    assert.equal(await verifyObject(id, 'd', signed), false)
  })

  it('keeps command and result signatures apart (domains)', async () => {
    const k = await createIdentity()
    const env = await createCommand(k, { type: 'scan_models', payload: {}, group: 'g', term: 0, target: peerIdOf(k) })
    assert.equal(await verifyCommand(env), true)
    assert.equal(await verifyObject(env.issuer, RESULT_SIGNING_DOMAIN, env), false)
    const res = await signResult(k, { id: env.id, status: 'ok', startedAt: 1, finishedAt: 2, executor: peerIdOf(k) })
    assert.equal(await verifyResult(res, peerIdOf(k)), true)
    assert.equal(await verifyObject(peerIdOf(k), COMMAND_SIGNING_DOMAIN, res), false)
  })

  it('measures sign and verify of a typical command', async () => {
    const k = await createIdentity()
    const target = peerIdOf(await createIdentity())
    const n = 500
    const envs = []
    let t0 = performance.now()
    for (let i = 0; i < n; i++) envs.push(await createCommand(k, { type: 'load_model', payload: { model: `model-${i}`, keepAliveMs: 60_000 }, group: 'default', term: 7, target }))
    const signMs = (performance.now() - t0) / n
    t0 = performance.now()
    for (const env of envs) assert.equal(await verifyCommand(env), true)
    const verifyMs = (performance.now() - t0) / n
    console.log(`# Ed25519 over canonical JSON (${Buffer.byteLength(JSON.stringify(envs[0]))}-byte envelope): sign ${(signMs * 1000).toFixed(0)} µs, verify ${(verifyMs * 1000).toFixed(0)} µs`)
    assert.ok(signMs < 50 && verifyMs < 50)
  })
})
