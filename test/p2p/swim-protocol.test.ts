/**
 * `/shepherd/swim/1.0.0` at its boundary: the frame decoder (fuzzed; hostile, oversized and
 * garbage frames), the screen of claims about third parties, and over real libp2p hosts: a frame
 * that is not a SWIM frame resets the stream and is reported (the node audits it), and the node
 * keeps answering.
 */
import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import fc from 'fast-check'
import { newHost, exchange } from '../support/fuzz-hosts.js'
import type { Host } from '../../src/p2p/host.js'
import { SWIM_LAN_DEFAULTS } from '../../src/p2p/swim.js'
import { SwimDriver } from '../../src/p2p/swim-driver.js'
import {
  MAX_SWIM_FRAME_BYTES, MAX_SWIM_INCARNATION, MAX_THIRD_PARTY_INC_JUMP, SWIM_PROTOCOL, encodeSwimFrame, isSwimFrame, screenUpdates, type SwimFrame
} from '../../src/p2p/swim-protocol.js'

const A = '12D3KooWA' + 'a'.repeat(43)
const B = '12D3KooWB' + 'b'.repeat(43)
const C = '12D3KooWC' + 'c'.repeat(43)
const SELF = '12D3KooWS' + 's'.repeat(43)

const frame = (m: SwimFrame['m'], extra: Partial<SwimFrame> = {}): SwimFrame => ({ v: 1, inc: 5, boot: 5, snap: 0, m, ...extra })

describe('SWIM frame decoder', () => {
  it('never throws, and accepts only well-formed frames', () => {
    fc.assert(fc.property(fc.anything(), x => { assert.equal(typeof isSwimFrame(x), 'boolean') }), { numRuns: 2000 })
    assert.equal(isSwimFrame(frame({ t: 'ping', seq: 1, u: [[A, 3, 'suspect', B]] })), true)
    assert.equal(isSwimFrame(frame({ t: 'ping-req', seq: 1, target: A, u: [] })), true)
    assert.equal(isSwimFrame(frame({ t: 'gossip', u: [] }, { load: [1, 2], lead: [['default', 3, A]] })), true)
    // Wrong version, unknown fields, unknown message type, a status that is none, bad ids.
    assert.equal(isSwimFrame({ ...frame({ t: 'ack', seq: 1, u: [] }), v: 2 }), false)
    assert.equal(isSwimFrame({ ...frame({ t: 'ack', seq: 1, u: [] }), from: A }), false)
    assert.equal(isSwimFrame(frame({ t: 'shout', seq: 1, u: [] } as any)), false)
    assert.equal(isSwimFrame(frame({ t: 'ack', seq: 1, u: [[A, 1, 'zombie', B]] } as any)), false)
    assert.equal(isSwimFrame(frame({ t: 'ack', seq: 1, u: [['not-an-id', 1, 'dead', B]] })), false)
    assert.equal(isSwimFrame(frame({ t: 'ping-req', seq: 1, target: '0OIl', u: [] })), false)
    // Incarnations and sequence numbers out of range (an attacker pushing them past 2^53).
    for (const n of [-1, 1.5, MAX_SWIM_INCARNATION + 1, 2 ** 53, 1e308]) {
      assert.equal(isSwimFrame(frame({ t: 'ack', seq: 1, u: [] }, { inc: n })), false, `inc ${n}`)
      assert.equal(isSwimFrame(frame({ t: 'ack', seq: n, u: [] })), false, `seq ${n}`)
      assert.equal(isSwimFrame(frame({ t: 'ack', seq: 1, u: [[A, n, 'alive', A]] })), false, `update inc ${n}`)
    }
    // Too many updates in one frame.
    assert.equal(isSwimFrame(frame({ t: 'gossip', u: Array.from({ length: 17 }, () => [A, 1, 'alive', A] as [string, number, 'alive', string]) })), false)
  })

  it('an honest frame at its largest fits the frame limit', () => {
    const u = Array.from({ length: 16 }, () => [A, MAX_SWIM_INCARNATION, 'suspect', B] as [string, number, 'suspect', string])
    const lead = Array.from({ length: 32 }, (_, i) => [`group-${i}`.padEnd(64, 'x'), 2 ** 31, A] as [string, number, string])
    const f = frame({ t: 'ping-req', seq: MAX_SWIM_INCARNATION, target: C, u }, { load: [1e6, 1e6], lead, inc: MAX_SWIM_INCARNATION, boot: MAX_SWIM_INCARNATION, snap: 2 ** 40 })
    assert.equal(isSwimFrame(f), true)
    assert.ok(encodeSwimFrame(f).byteLength < MAX_SWIM_FRAME_BYTES, `${encodeSwimFrame(f).byteLength} bytes`)
  })
})

describe('screening claims about others', () => {
  const view = new Map<string, { inc: number, status: 'alive' | 'suspect' | 'dead' | 'left' }>([[A, { inc: 10, status: 'alive' }], [C, { inc: 7, status: 'alive' }]])
  const deps = { self: SELF, selfInc: 20, view: (id: string) => view.get(id), verified: (id: string) => id !== '12D3KooWG' + 'g'.repeat(43) }

  it('takes the sender\'s word about itself, and its aliveness from the frame', () => {
    const { updates } = screenUpdates(B, frame({ t: 'gossip', u: [[B, 9, 'left', B], [B, 9, 'dead', B]] }, { inc: 9 }), deps)
    assert.deepEqual(updates, [[B, 9, 'alive', B], [B, 9, 'left', B]])
  })

  it('turns a third party\'s "dead" or "left" into a suspicion this node times itself', () => {
    const { updates, screened } = screenUpdates(B, frame({ t: 'gossip', u: [[A, 10, 'dead', B], [C, 7, 'left', B]] }), deps)
    assert.deepEqual(updates.slice(1), [[A, 10, 'suspect', B], [C, 7, 'suspect', B]])
    assert.equal(screened, 2)
  })

  it('drops suspicions at incarnations this node does not know, far jumps, ghosts and claims ahead of our own incarnation', () => {
    const ghost = '12D3KooWG' + 'g'.repeat(43)
    const { updates, screened } = screenUpdates(B, frame({
      t: 'gossip',
      u: [
        [A, 11, 'suspect', B], // ahead of the incarnation known: its subject would have to refute ever higher
        [A, 10 + MAX_THIRD_PARTY_INC_JUMP + 1, 'alive', B], // pushes A's incarnation towards the limit
        [ghost, 1, 'alive', B], // a peer this node cannot verify
        [SELF, 21, 'suspect', B], // about us, ahead of our incarnation
        [SELF, 20, 'left', B], // about us, not ours to say
        [A, 10 + MAX_THIRD_PARTY_INC_JUMP, 'alive', B], // a refutation gossiped on: kept
        [SELF, 20, 'suspect', B], // about us at our incarnation: kept (we refute)
        [SELF, 19, 'dead', B] // about us, below our incarnation: kept (we answer with ours)
      ]
    }), deps)
    assert.deepEqual(updates.slice(1), [[A, 10 + MAX_THIRD_PARTY_INC_JUMP, 'alive', B], [SELF, 20, 'suspect', B], [SELF, 19, 'dead', B]])
    assert.equal(screened, 5)
  })
})

describe('SWIM stream handler over real libp2p', () => {
  let a: Host, b: Host
  let driver: SwimDriver
  const violations: string[] = []
  before(async () => {
    [a, b] = await Promise.all([newHost(), newHost()])
    await a.dial(b.getMultiaddrs()[0])
    driver = new SwimDriver(b, {
      config: { ...SWIM_LAN_DEFAULTS, probeIntervalMs: 200, probeTimeoutMs: 100 },
      incarnation: 1,
      boot: 1,
      snapshotVersion: () => 0,
      verified: () => true,
      onChange: () => {},
      onViolation: (_p, r) => { violations.push(r) },
      readTimeoutMs: 500
    })
    await driver.start()
  })
  after(async () => { await driver.stop(); await Promise.all([a.stop(), b.stop()]) })

  const framed = (body: Uint8Array): Uint8Array => {
    const len: number[] = []
    let n = body.byteLength
    do { let x = n % 128; n = Math.floor(n / 128); if (n > 0) x |= 0x80; len.push(x) } while (n > 0)
    return new Uint8Array([...len, ...body])
  }

  it('resets a stream that carries garbage, an invalid frame, an oversized one or nothing, and reports each', async () => {
    const cases: Array<{ name: string, chunks: Uint8Array[], close?: boolean }> = [
      { name: 'garbage', chunks: [framed(new TextEncoder().encode('{not json'))] },
      { name: 'not utf-8', chunks: [framed(new Uint8Array([0xff, 0xfe, 0xfd]))] },
      { name: 'schema', chunks: [framed(new TextEncoder().encode(JSON.stringify({ ...frame({ t: 'ack', seq: 1, u: [] }), inc: 2 ** 60 })))] },
      { name: 'oversized', chunks: [new Uint8Array([0xff, 0xff, 0x7f]), new Uint8Array(1000)] },
      { name: 'silent', chunks: [], close: false }
    ]
    for (const c of cases) {
      const before = violations.length
      const got = await exchange(a, b.peerId, SWIM_PROTOCOL, c.chunks, { close: c.close, ms: 3000 })
      assert.equal(got.bytes.byteLength, 0, `${c.name}: no answer`)
      assert.equal(got.end, 'reset', `${c.name}: reset`)
      assert.equal(violations.length, before + 1, `${c.name}: reported`)
    }
    assert.equal(driver.stats.violations, cases.length)
    // Still serving: a valid ping is answered with an ack on a stream of its own (it made A a member).
    const ok = await exchange(a, b.peerId, SWIM_PROTOCOL, [framed(encodeSwimFrame(frame({ t: 'ping', seq: 7, u: [] }, { inc: 3 })))])
    assert.equal(ok.end, 'closed')
    assert.equal(driver.stats.framesReceived, 1)
    assert.deepEqual(driver.member(a.peerId.toString()), { inc: 3, status: 'alive' })
  })
})
