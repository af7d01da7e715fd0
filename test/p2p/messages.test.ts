import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { decodeMembership, encodeMembership, MAX_MEMBERSHIP_MESSAGE_BYTES, isRefused, type MembershipMessage } from '../../src/p2p/index.js'

const enc = new TextEncoder()

describe('membership messages', () => {
  it('round-trips heartbeat, snapshot and leave', () => {
    const messages: MembershipMessage[] = [
      { v: 1, t: 'hb', inc: 1, seq: 2, at: 3, name: 'n', groups: ['default'], snap: 4 },
      { v: 1, t: 'snap', inc: 1, seq: 3, at: 3, name: 'n', groups: [], snap: 5, addrs: ['/ip4/10.0.0.1/tcp/9191'], data: { a: 1 } },
      { v: 1, t: 'leave', inc: 1, seq: 4, at: 5 }
    ]
    for (const m of messages) {
      const res = decodeMembership(encodeMembership(m))
      assert.equal(res.ok, true)
      assert.deepEqual(res.ok && res.message, m)
    }
  })

  it('drops malformed, invalid, wrong-version and oversized input with a reason, never throwing', () => {
    const cases: Array<[Uint8Array, string]> = [
      [enc.encode('{not json'), 'malformed_json'],
      [new Uint8Array([0xff, 0xfe, 0x00]), 'malformed_json'],
      [enc.encode('null'), 'invalid_schema'],
      [enc.encode('[]'), 'invalid_schema'],
      [enc.encode(JSON.stringify({ v: 2, t: 'hb', inc: 1, seq: 1, at: 1, name: 'n', groups: [], snap: 1 })), 'unsupported_version'],
      [enc.encode(JSON.stringify({ v: '1', t: 'hb', inc: 1, seq: 1, at: 1, name: 'n', groups: [], snap: 1 })), 'invalid_schema'],
      [enc.encode(JSON.stringify({ v: 1, t: 'hb', inc: -1, seq: 1, at: 1, name: 'n', groups: [], snap: 1 })), 'invalid_schema'],
      [enc.encode(JSON.stringify({ v: 1, t: 'hb', inc: 1, seq: 1, at: 1, name: 'x'.repeat(65), groups: [], snap: 1 })), 'invalid_schema'],
      [enc.encode(JSON.stringify({ v: 1, t: 'leave', inc: 1, seq: 1, at: 1, extra: true })), 'invalid_schema'],
      [enc.encode(JSON.stringify({ v: 1, t: 'snap', inc: 1, seq: 1, at: 1, name: 'n', groups: [], snap: 1, addrs: [], data: 'str' })), 'invalid_schema'],
      [new Uint8Array(MAX_MEMBERSHIP_MESSAGE_BYTES + 1), 'oversized']
    ]
    for (const [bytes, reason] of cases) {
      const res = decodeMembership(bytes)
      assert.equal(res.ok, false)
      assert.equal(!res.ok && res.reason, reason)
    }
  })

  it('isRefused recognises connection refused only when every address refused', () => {
    const refused = Object.assign(new Error('connect ECONNREFUSED 127.0.0.1:1'), { code: 'ECONNREFUSED' })
    assert.equal(isRefused(refused), true)
    assert.equal(isRefused(new AggregateError([refused, refused])), true)
    assert.equal(isRefused(new AggregateError([refused, new Error('timeout')])), false)
    assert.equal(isRefused(new Error('wrap', { cause: refused })), true)
    assert.equal(isRefused(new Error('aborted')), false)
  })
})
