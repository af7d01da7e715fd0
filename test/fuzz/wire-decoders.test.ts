/**
 * Property-based fuzzing of every pure wire decoder (issue "hostile input"): random bytes,
 * hostile JSON texts and values, and mutations of valid messages. Each decoder must return its
 * typed answer (never throw), accept every valid message (and round-trip it), refuse every
 * message broken in a known way, and leave `Object.prototype` alone.
 *
 *   node --import tsx --test test/fuzz/wire-decoders.test.ts   (FUZZ_SEED=<n> replays, FUZZ_SCALE=<x> scales)
 */
import '../../src/polyfill.js'
import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import path from 'node:path'
import fc from 'fast-check'
import type { PrivateKey } from '@libp2p/interface'
import { decodeMembership, encodeMembership, type MembershipMessage } from '../../src/p2p/messages.js'
import { MAX_ADDRS, MAX_GROUPS, MAX_MEMBERSHIP_MESSAGE_BYTES, MAX_NAME_LENGTH } from '../../src/p2p/constants.js'
import { isNodeSnapshot } from '../../src/node/snapshot.js'
import { decodeRequestFrame, decodeResponseFrame, isCallHead } from '../../src/p2p/inference-messages.js'
import { WireError } from '../../src/errors.js'
import { badResponseFrame, callHead, callHeadBreaks, modelRawFramed, responseFrame } from '../support/fuzz-inference.js'
import {
  COMMAND_SIGNING_DOMAIN, COMMAND_TYPES, createCommand, isCommandEnvelope, isCommandResponse, isSignedResult, signResult, verifyCommand, verifyResult,
  type CommandType, type SignedResult
} from '../../src/p2p/command-messages.js'
import { canonicalJson, SigningError, verifyObject } from '../../src/p2p/signing.js'
import { checkLlamacppArgs, checkPayload, LLAMACPP_ARG_RULES } from '../../src/node/commands/payloads.js'
import { isBlobControl, isBlobRequest, isSafeModelName } from '../../src/p2p/blob-messages.js'
import { createIdentity, peerIdOf } from '../../src/p2p/identity.js'
import { check, checkAsync, ProcessWatch } from '../support/fuzz-harness.js'
import {
  applyMutation, broken, deepJsonText, hostileBytes, hostileJsonValue, hostileKey, hostileValue, mutateBytes, mutated, mutation, objectOf, withInvalidUtf8, type BreakSpec
} from '../support/fuzz-arbitraries.js'
import {
  blobControl, blobControlBreaks, blobRequest, blobRequestBreaks, commandEnvelope, commandEnvelopeBreaks, commandResponse, commandResponseBreaks,
  heartbeat, heartbeatBreaks, jsonObject, leaveBreaks, leaveMessage,
  membershipMessage, nodeSnapshot, nodeSnapshotBreaks, payloadBreaks, signedResult, signedResultBreaks, snapshotMessage, snapshotMessageBreaks, validPayloads
} from '../support/fuzz-messages.js'

const enc = new TextEncoder()
const strictUtf8 = new TextDecoder('utf-8', { fatal: true })
const codePoints = (s: string): number => [...s].length
/** What a value looks like once it crossed the wire as JSON. */
const wire = (v: unknown): unknown => JSON.parse(JSON.stringify(v) ?? 'null')
const isPlainObject = (x: unknown): x is Record<string, unknown> => x !== null && typeof x === 'object' && !Array.isArray(x)
const isNonNegInt = (x: unknown): boolean => typeof x === 'number' && Number.isInteger(x) && x >= 0
/** The canonical JSON a signature covers (everything but `sig`); undefined when there is none. */
function signedPart (x: unknown): string | undefined {
  if (!isPlainObject(x)) return undefined
  const { sig: _sig, ...rest } = x
  try {
    return canonicalJson(rest)
  } catch {
    return undefined
  }
}
const boundedName = (x: unknown, max = MAX_NAME_LENGTH): boolean => typeof x === 'string' && codePoints(x) >= 1 && codePoints(x) <= max

/** The same value, whatever its kind, as a boolean decoder must answer: a boolean, never a throw. */
function assertBoolean (decoder: (x: unknown) => boolean, x: unknown): boolean {
  const r = decoder(x)
  assert.equal(typeof r, 'boolean')
  return r
}

/** Validity of the valid, refusal of the broken, and no throw on anything, for a boolean validator. */
function validatorSuite (name: string, validate: (x: unknown) => boolean, valid: fc.Arbitrary<unknown>, breaks: Array<[fc.Arbitrary<Record<string, unknown>>, BreakSpec]>, n = 1000): void {
  it(`${name}: accepts every valid message, also after a JSON round trip`, () => {
    check(`${name} valid`, valid, n, v => {
      assert.equal(validate(v), true)
      assert.equal(validate(wire(v)), true)
    })
  })
  it(`${name}: refuses every message broken in a known way`, () => {
    const arb = fc.oneof(...breaks.map(([arb, spec]) => broken(arb, spec)))
    check(`${name} broken`, arb, n, b => {
      assert.equal(validate(b.value), false, `accepted a message ${b.why}`)
      assert.equal(validate(wire(b.value)), false, `accepted a message ${b.why} (after JSON)`)
    })
  })
  it(`${name}: answers a boolean for hostile values and mutations, never throwing`, () => {
    check(`${name} hostile`, fc.oneof(hostileValue, hostileJsonValue, mutated(valid)), n, v => { assertBoolean(validate, v) })
  })
}

describe('fuzz: pure wire decoders', () => {
  const watch = new ProcessWatch()
  const protoKeys = Object.getOwnPropertyNames(Object.prototype).sort()

  before(() => { watch.start() })
  after(() => {
    watch.stop()
    watch.assertClean()
    assert.deepEqual(Object.getOwnPropertyNames(Object.prototype).sort(), protoKeys, 'Object.prototype gained keys')
    assert.equal(({} as Record<string, unknown>).polluted, undefined)
  })

  describe('decodeMembership (gossip, src/p2p/messages.ts)', () => {
    /** A message of another (integer) protocol version: ignored without penalty, not refused as invalid. */
    const otherVersion = (p: unknown): boolean => p !== null && typeof p === 'object' && 'v' in p && (p as { v: unknown }).v !== 1 && Number.isInteger((p as { v: unknown }).v)

    /** What the decoder must say about `bytes`, computed independently of it. */
    function expected (bytes: Uint8Array): 'oversized' | 'malformed_json' | 'unsupported_version' | 'parsed' {
      if (bytes.byteLength > MAX_MEMBERSHIP_MESSAGE_BYTES) return 'oversized'
      let parsed: unknown
      try {
        parsed = JSON.parse(strictUtf8.decode(bytes))
      } catch {
        return 'malformed_json'
      }
      return otherVersion(parsed) ? 'unsupported_version' : 'parsed'
    }

    /** Invariants every consumer of an accepted message relies on. */
    function assertWellTyped (m: MembershipMessage): void {
      assert.equal(m.v, 1)
      assert.ok(['hb', 'snap', 'leave'].includes(m.t))
      for (const k of ['inc', 'seq', 'at'] as const) assert.ok(isNonNegInt(m[k]), k)
      if (m.t === 'leave') return
      assert.ok(boundedName(m.name), 'name')
      assert.ok(Array.isArray(m.groups) && m.groups.length <= MAX_GROUPS && m.groups.every(g => boundedName(g)), 'groups')
      assert.ok(isNonNegInt(m.snap))
      if (m.t === 'snap') {
        assert.ok(Array.isArray(m.addrs) && m.addrs.length <= MAX_ADDRS && m.addrs.every(a => typeof a === 'string'))
        assert.ok(isPlainObject(m.data))
      } else {
        if (m.load !== undefined) assert.ok(m.load.length === 2 && m.load.every(isNonNegInt))
        if (m.lead !== undefined) assert.ok(m.lead.length <= MAX_GROUPS && m.lead.every(l => l.length === 3 && boundedName(l[0]) && isNonNegInt(l[1]) && boundedName(l[2], 128)))
      }
    }

    function assertDecodes (bytes: Uint8Array): void {
      const res = decodeMembership(bytes)
      const want = expected(bytes)
      if (want !== 'parsed') {
        assert.deepEqual(res, { ok: false, reason: want })
        return
      }
      if (res.ok) assertWellTyped(res.message)
      else assert.equal(res.reason, 'invalid_schema')
    }

    it('round-trips every valid heartbeat, snapshot and leave', () => {
      check('decodeMembership round trip', membershipMessage, 2000, m => {
        const res = decodeMembership(encodeMembership(m as MembershipMessage))
        assert.equal(res.ok, true, JSON.stringify(res))
        assert.deepEqual(res.ok && res.message, wire(m))
      })
    })

    it('drops every message broken in a known way as invalid_schema (unsupported_version for another version, oversized past the limit)', () => {
      const arb = fc.oneof(broken(heartbeat, heartbeatBreaks), broken(snapshotMessage, snapshotMessageBreaks), broken(leaveMessage, leaveBreaks))
      check('decodeMembership broken', arb, 2000, b => {
        const bytes = enc.encode(JSON.stringify(b.value))
        const want = bytes.byteLength > MAX_MEMBERSHIP_MESSAGE_BYTES ? 'oversized' : otherVersion(wire(b.value)) ? 'unsupported_version' : 'invalid_schema'
        assert.deepEqual(decodeMembership(bytes), { ok: false, reason: want }, `a message ${b.why}`)
      })
    })

    it('answers random bytes, hostile texts and invalid UTF-8 with the right reason, never throwing', () => {
      check('decodeMembership hostile bytes', hostileBytes, 3000, assertDecodes)
    })

    it('answers byte-level and field-level mutations of valid messages with the right reason', () => {
      const valid = membershipMessage.map(m => encodeMembership(m as MembershipMessage))
      const arb = fc.oneof(
        mutateBytes(valid),
        withInvalidUtf8(valid),
        mutated(membershipMessage).map(v => enc.encode(JSON.stringify(v) ?? 'undefined'))
      )
      check('decodeMembership mutations', arb, 2000, assertDecodes)
    })

    it('refuses a message one byte over the limit without parsing it, and deep nesting below it', () => {
      const over = new Uint8Array(MAX_MEMBERSHIP_MESSAGE_BYTES + 1).fill(0x20)
      assert.deepEqual(decodeMembership(over), { ok: false, reason: 'oversized' })
      const depth = (MAX_MEMBERSHIP_MESSAGE_BYTES >> 1) - 16
      const deepData = '{"v":1,"t":"snap","inc":1,"seq":1,"at":1,"name":"n","groups":[],"snap":1,"addrs":[],"data":{"a":' + deepJsonText(100_000) + '}}'
      for (const text of [deepJsonText(depth), deepJsonText(depth >> 2, 'object'), deepData]) {
        const bytes = enc.encode(text)
        assert.ok(bytes.byteLength <= MAX_MEMBERSHIP_MESSAGE_BYTES)
        assertDecodes(bytes)
      }
    })
  })

  describe('isNodeSnapshot (snapshot content, src/node/snapshot.ts)', () => {
    validatorSuite('isNodeSnapshot', isNodeSnapshot, nodeSnapshot, [[nodeSnapshot as fc.Arbitrary<Record<string, unknown>>, nodeSnapshotBreaks]])

    it('accepted snapshots hold what the model registry and the API read from them', () => {
      check('isNodeSnapshot accepted shape', mutated(nodeSnapshot), 1000, v => {
        if (!isNodeSnapshot(v)) return
        const s = v as any
        assert.ok(Array.isArray(s.models) && s.models.every((m: any) => typeof m.name === 'string' && m.name.length > 0 && typeof m.fingerprint === 'string' && Number.isFinite(m.sizeBytes)))
        assert.ok(Array.isArray(s.resources.gpus) && s.resources.gpus.every((g: any) => Number.isFinite(g.totalMemoryBytes)))
        assert.ok(Number.isFinite(s.resources.cpu.cores))
        if (s.labels !== undefined) assert.ok(Object.values(s.labels).every(l => typeof l === 'string'))
      })
    })
  })

  describe('inference frames (src/p2p/inference-messages.ts)', () => {
    validatorSuite('isCallHead', isCallHead, callHead, [[callHead as unknown as fc.Arbitrary<Record<string, unknown>>, callHeadBreaks]])

    it('binary frame decoders return a frame or throw invalid_frame, for any bytes', () => {
      const body = (f: Uint8Array): Uint8Array => modelRawFramed(f, 1 << 20).bodies[0] ?? new Uint8Array(0)
      const anyBody = fc.oneof(fc.uint8Array({ maxLength: 64 }), responseFrame.map(body), badResponseFrame.map(body), callHead.map(h => Uint8Array.from([1, ...new TextEncoder().encode(JSON.stringify(h))])))
      check('inference frame decoders', anyBody, 5000, b => {
        for (const decode of [decodeRequestFrame, decodeResponseFrame]) {
          try {
            const f = decode(b)
            assert.ok(typeof f.t === 'string')
          } catch (err) {
            assert.ok(err instanceof WireError && err.code === 'invalid_frame', String(err))
          }
        }
      })
      // Well-formed response frames decode; the broken ones never do.
      check('response frames', responseFrame, 1000, f => { assert.ok(decodeResponseFrame(body(f))) })
      check('broken response frames', badResponseFrame, 500, f => { assert.throws(() => decodeResponseFrame(body(f)), (e: unknown) => e instanceof WireError) })
    })
  })

  describe('command frames, signatures and payloads (src/p2p/command-messages.ts, signing.ts, src/node/commands/payloads.ts)', () => {
    let key: PrivateKey
    let self: string
    let other: string

    before(async () => {
      key = await createIdentity()
      self = peerIdOf(key)
      other = peerIdOf(await createIdentity())
    })

    validatorSuite('isCommandEnvelope', isCommandEnvelope, commandEnvelope(), [[commandEnvelope(), commandEnvelopeBreaks]])
    validatorSuite('isSignedResult', isSignedResult, signedResult(), [[signedResult(), signedResultBreaks]])
    validatorSuite('isCommandResponse', isCommandResponse, commandResponse, commandResponseBreaks)

    it('isCommandResponse refuses a result frame whose result is broken', () => {
      check('isCommandResponse broken result', broken(signedResult(), signedResultBreaks), 1000, b => {
        assert.equal(isCommandResponse({ t: 'result', result: b.value }), false, `accepted a result ${b.why}`)
      })
    })

    it('verifies a signed envelope, and no field-level mutation of it, never throwing', async () => {
      const fields = fc.record({ type: fc.constantFrom(...COMMAND_TYPES), payload: jsonObject, group: fc.string({ minLength: 1, maxLength: 64 }), term: fc.nat() })
      await checkAsync('verifyCommand', fc.tuple(fields, fc.array(mutation, { minLength: 1, maxLength: 3 })), 600, async ([f, ms]) => {
        const env = await createCommand(key, { ...f, target: other })
        assert.equal(isCommandEnvelope(env), true)
        assert.equal(await verifyCommand(env), true)
        const mutant = ms.reduce<unknown>((acc, m) => applyMutation(acc, m), env)
        // The signature still holds only if nothing it covers changed (a mutation may be a no-op).
        const same = isPlainObject(mutant) && mutant.sig === env.sig && signedPart(mutant) === signedPart(env)
        if (isCommandEnvelope(mutant)) assert.equal(await verifyCommand(mutant), same)
        assert.equal(await verifyObject(self, COMMAND_SIGNING_DOMAIN, mutant as { sig: string }), same)
      })
    })

    it('verifyObject answers false, never throwing, for junk signers, signatures and values', async () => {
      const arb = fc.record({
        signer: fc.oneof(fc.string({ unit: 'binary', maxLength: 80 }), fc.constantFrom('', 'QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N', '16Uiu2HAmRKnEKuMS3hQM5ANRFTxCyJDzHNcLQbNhvpgHYXvyvJq5')),
        sig: fc.oneof(fc.string({ unit: 'binary', maxLength: 100 }), fc.base64String({ minLength: 88, maxLength: 88 }), fc.constant('A'.repeat(86) + '==')),
        value: hostileValue
      })
      await checkAsync('verifyObject junk', arb, 1500, async ({ signer, sig, value }) => {
        const obj = value !== null && typeof value === 'object' ? { ...(value as object), sig } : { value, sig }
        assert.equal(await verifyObject(signer, COMMAND_SIGNING_DOMAIN, obj), false)
      })
    })

    it('a signed result verifies only against its executor and only unmodified', async () => {
      await checkAsync('verifyResult', fc.tuple(signedResult(fc.constant('x')), hostileKey, hostileJsonValue), 300, async ([r, k, x]) => {
        const { sig: _sig, ...unsigned } = r
        const signed = await signResult(key, { ...unsigned, executor: self } as any)
        assert.equal(isSignedResult(signed), true)
        assert.equal(await verifyResult(signed, self), true)
        assert.equal(await verifyResult(signed, other), false)
        const changed = objectOf([...Object.entries(signed).filter(([f]) => f !== k || k === 'sig'), [k === 'sig' ? 'zz' : k, x]]) as unknown as SignedResult
        const same = signedPart(changed) === signedPart(signed) && changed.executor === self
        assert.equal(await verifyResult(changed, self), same)
      })
    })

    it('canonicalJson returns canonical JSON of any value or throws a SigningError, nothing else', () => {
      check('canonicalJson', fc.oneof(hostileValue, hostileJsonValue, jsonObject), 2000, v => {
        let text: string
        try {
          text = canonicalJson(v)
        } catch (err) {
          assert.ok(err instanceof SigningError, `threw ${(err as Error)?.name}: ${(err as Error)?.message}`)
          assert.ok(['unsignable', 'too_deep'].includes(err.code))
          return
        }
        const back = JSON.parse(text)
        assert.deepEqual(back, wire(v))
        assert.equal(canonicalJson(back), text, 'canonical form is a fixed point')
      })
    })

    it('checkPayload accepts every valid payload of every type', () => {
      const arb = fc.constantFrom(...COMMAND_TYPES).chain(t => fc.tuple(fc.constant(t), validPayloads[t]))
      check('checkPayload valid', arb, 3000, ([type, payload]) => {
        assert.deepEqual(checkPayload(type, payload), { ok: true }, `${type} ${JSON.stringify(payload)}`)
        assert.deepEqual(checkPayload(type, wire(payload)), { ok: true })
      })
    })

    it('checkPayload refuses every payload broken in a known way, with a message', () => {
      const withSpec = COMMAND_TYPES.filter(t => {
        const s = payloadBreaks[t].spec
        return s.required.length > 0 || s.closed !== false || Object.keys(s.invalid).length > 0
      })
      const arb = fc.oneof(
        fc.constantFrom(...withSpec).chain(t => broken(validPayloads[t], payloadBreaks[t].spec).map(b => [t, b.value, b.why] as const)),
        fc.constantFrom(...COMMAND_TYPES.flatMap(t => payloadBreaks[t].also.map(p => [t, p, `= ${JSON.stringify(p)}`] as const)))
      )
      check('checkPayload broken', arb, 3000, ([type, payload, why]) => {
        const res = checkPayload(type as CommandType, payload)
        assert.equal(res.ok, false, `${type} accepted a payload ${why}`)
        assert.equal(typeof (res as { message: string }).message, 'string')
      })
    })

    it('checkPayload answers hostile and mutated payloads of every type, never throwing', () => {
      const arb = fc.constantFrom(...COMMAND_TYPES).chain(t => fc.tuple(fc.constant(t), fc.oneof(hostileValue, hostileJsonValue, mutated(validPayloads[t]))))
      check('checkPayload hostile', arb, 2000, ([type, payload]) => {
        const res = checkPayload(type, payload)
        assert.ok(res.ok === true || typeof res.message === 'string')
      })
    })

    it('checkLlamacppArgs never admits a flag outside its allowlist, whatever the arguments', () => {
      const flags = Object.keys(LLAMACPP_ARG_RULES)
      const item = fc.oneof(fc.constantFrom(...flags, '--model', '--host', '--api-key', '__proto__', 'constructor', 'toString', '--', '-'), fc.string({ unit: 'binary', maxLength: 12 }), fc.integer().map(String))
      check('checkLlamacppArgs', fc.array(item, { maxLength: 12 }), 4000, args => {
        const res = checkLlamacppArgs(args)
        if (!res.ok) { assert.equal(typeof res.message, 'string'); return }
        for (let i = 0; i < args.length; i++) {
          assert.ok(Object.hasOwn(LLAMACPP_ARG_RULES, args[i]), `admitted flag ${JSON.stringify(args[i])}`)
          if (LLAMACPP_ARG_RULES[args[i]] !== 'flag') i++
        }
      })
    })
  })

  describe('blob frames (src/p2p/blob-messages.ts)', () => {
    validatorSuite('isBlobRequest', isBlobRequest, blobRequest, [[blobRequest as fc.Arbitrary<Record<string, unknown>>, blobRequestBreaks]])
    validatorSuite('isBlobControl', isBlobControl, blobControl, blobControlBreaks)

    it('isSafeModelName admits only names that stay inside the models directory', () => {
      const dir = path.resolve('/srv/models')
      const name = fc.oneof(
        fc.string({ unit: 'binary', maxLength: 210 }),
        fc.constantFrom('.', '..', '../x', 'a/../../b', '..\\x', 'C:\\x', '\u2024\u2024', '．．', 'a\u0000', '%2e%2e%2f', 'con', 'nul.gguf'),
        fc.array(fc.constantFrom('.', '/', '\\', 'a', '\u0000', '\u007f', '\u202e'), { maxLength: 12 }).map(a => a.join(''))
      )
      check('isSafeModelName', name, 5000, n => {
        if (!isSafeModelName(n)) return
        // Folders are allowed (`Org/x`, up to 4 levels); the file stays below the dir, and no
        // segment is empty, hidden or a dot.
        const file = path.resolve(dir, `${n}.gguf`)
        assert.ok(file.startsWith(dir + path.sep), `${JSON.stringify(n)} escapes to ${file}`)
        assert.equal(path.relative(dir, file), `${n}.gguf`, `${JSON.stringify(n)} is not kept as it is: ${file}`)
        const segments = n.split('/')
        assert.ok(segments.length <= 4 && segments.every(p => p !== '' && !p.startsWith('.')) && !/[\\\u0000-\u001f\u007f]/.test(n))
      })
    })

    it('rejects every blob request whose name would leave the directory', () => {
      check('isBlobRequest path names', fc.tuple(blobRequest, fc.constantFrom('../m', '..', '.', 'a/../b', 'a//b', 'a/.b', '/abs', 'a\\b', '.hidden', 'a/b/c/d/e')), 500, ([req, bad]) => {
        assert.equal(isBlobRequest({ ...req, name: bad }), false)
      })
    })
  })
})
