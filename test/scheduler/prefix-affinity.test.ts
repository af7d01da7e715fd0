/**
 * Prefix-aware routing, the pure part (src/scheduler/prefix-affinity.ts): keys cut at message
 * boundaries and prompt blocks, the longest remembered prefix wins, a bounded LRU with a time to
 * live on a fake clock, and the guard that sends a turn elsewhere when its replica is overloaded.
 */
import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { PrefixAffinity, prefixKeys, preferPrefixHost } from '../../src/scheduler/prefix-affinity.js'
import { stateRank } from '../../src/scheduler/balancer.js'
import type { ModelHost } from '../../src/scheduler/model-registry.js'
import type { InferenceCall } from '../../src/node/index.js'

const SYSTEM = { role: 'system', content: 'You are a careful assistant. '.repeat(40) }
const chat = (messages: Array<{ role: string, content: string }>, model = 'm'): InferenceCall => ({ op: 'chat', requestId: 'r', model, stream: true, body: { model, messages } })
const turns = [
  [SYSTEM, { role: 'user', content: 'first question' }],
  [SYSTEM, { role: 'user', content: 'first question' }, { role: 'assistant', content: 'first answer' }, { role: 'user', content: 'second question' }]
]

describe('prefix keys', () => {
  it('a later turn shares the keys of the earlier turn\'s messages, and no more', () => {
    const a = prefixKeys(chat(turns[0]))
    const b = prefixKeys(chat(turns[1]))
    assert.equal(a.length, 2)
    assert.equal(b.length, 4)
    assert.deepEqual(b.slice(0, 2), a)
    // Another conversation with the same system prompt shares only the first key.
    const c = prefixKeys(chat([SYSTEM, { role: 'user', content: 'something else' }]))
    assert.equal(c[0], a[0])
    assert.notEqual(c[1], a[1])
  })

  it('keys differ per model and per operation, and calls without a prompt have none', () => {
    assert.notEqual(prefixKeys(chat(turns[0], 'a'))[0], prefixKeys(chat(turns[0], 'b'))[0])
    const emb: InferenceCall = { op: 'embeddings', requestId: 'r', model: 'm', stream: false, body: { model: 'm', input: 'x' } }
    assert.deepEqual(prefixKeys(emb), [])
  })

  it('a raw prompt is cut in whole blocks: a longer prompt shares the blocks of a shorter one', () => {
    const call = (prompt: string): InferenceCall => ({ op: 'completion', requestId: 'r', model: 'm', stream: false, body: { model: 'm', prompt } })
    const short = prefixKeys(call('x'.repeat(1100)), 512)
    const long = prefixKeys(call('x'.repeat(1100) + 'y'.repeat(600)), 512)
    assert.equal(short.length, 2)
    assert.equal(long.length, 3)
    assert.deepEqual(long.slice(0, 2), short)
  })
})

describe('prefix table', () => {
  it('finds the host of the longest remembered prefix', () => {
    let now = 0
    const t = new PrefixAffinity(() => now)
    const k1 = prefixKeys(chat(turns[0]))
    const k2 = prefixKeys(chat(turns[1]))
    t.record(k1, 'A')
    assert.deepEqual(t.lookup(k2), { host: 'A', depth: 2 })
    // Another conversation on B with the same system prompt: the first conversation still goes to A.
    t.record(prefixKeys(chat([SYSTEM, { role: 'user', content: 'other' }])), 'B')
    assert.deepEqual(t.lookup(k2), { host: 'A', depth: 2 })
    // A conversation never seen, sharing only the system prompt, follows the last host of that prompt.
    assert.deepEqual(t.lookup(prefixKeys(chat([SYSTEM, { role: 'user', content: 'new' }]))), { host: 'B', depth: 1 })
    assert.equal(t.lookup(prefixKeys(chat([{ role: 'user', content: 'nothing shared' }]))), undefined)
    now += 1
    assert.equal(t.stats.hits, 3)
  })

  it('forgets a prefix after its time to live, on the clock it was given', () => {
    let now = 1_000
    const t = new PrefixAffinity(() => now, { maxEntries: 100, ttlMs: 60_000, blockChars: 512, keysPerCall: 16 })
    const k = prefixKeys(chat(turns[0]))
    t.record(k, 'A')
    now += 59_000
    assert.equal(t.lookup(k)?.host, 'A')
    now += 2_000
    assert.equal(t.lookup(k), undefined)
    assert.equal(t.size, 0, 'expired keys are dropped when met')
  })

  it('is bounded: the least recently used keys go first', () => {
    const t = new PrefixAffinity(() => 0, { maxEntries: 4, ttlMs: 60_000, blockChars: 512, keysPerCall: 2 })
    const conv = (i: number): string[] => prefixKeys(chat([{ role: 'user', content: `conversation ${i}` }, { role: 'user', content: 'more' }]))
    t.record(conv(1), 'A')
    t.record(conv(2), 'B')
    assert.equal(t.size, 4)
    t.record(conv(3), 'C')
    assert.equal(t.size, 4)
    assert.equal(t.lookup(conv(1)), undefined)
    assert.equal(t.lookup(conv(3))?.host, 'C')
    for (let i = 0; i < 1000; i++) t.record(conv(i), 'X')
    assert.equal(t.size, 4)
  })

  it('forgets a host', () => {
    const t = new PrefixAffinity(() => 0)
    const k = prefixKeys(chat(turns[1]))
    t.record(k, 'A')
    t.forget('A')
    assert.equal(t.lookup(k), undefined)
  })
})

describe('preferring the prefix host', () => {
  const host = (peerId: string, load: number, state: ModelHost['state'] = 'loaded', local = false): ModelHost => ({ peerId, name: peerId, local, state, fingerprint: 'f', load, rttMs: 1, weight: 1 })
  const ctx = (slack = 2, localHasRoom = true): Parameters<typeof preferPrefixHost>[2] => ({ load: h => h.load, slack, localHasRoom, stateRank })
  const ids = (hs: ModelHost[]): string[] => hs.map(h => h.peerId)

  it('moves a healthy, not overloaded prefix host first', () => {
    assert.deepEqual(ids(preferPrefixHost([host('A', 0), host('B', 1), host('C', 2)], 'C', ctx())), ['C', 'A', 'B'])
  })

  it('keeps the strategy\'s order when the prefix host is overloaded, less ready, or not a candidate', () => {
    assert.deepEqual(ids(preferPrefixHost([host('A', 0), host('B', 3)], 'B', ctx(2))), ['A', 'B'])
    assert.deepEqual(ids(preferPrefixHost([host('A', 0), host('B', 0, 'on_disk')], 'B', ctx())), ['A', 'B'])
    // Not in the list: dead, or its breaker open (the router's list has neither).
    assert.deepEqual(ids(preferPrefixHost([host('A', 0), host('B', 0)], 'Z', ctx())), ['A', 'B'])
    assert.deepEqual(ids(preferPrefixHost([host('A', 0), host('B', 0)], undefined, ctx())), ['A', 'B'])
    // This node without a free slot.
    assert.deepEqual(ids(preferPrefixHost([host('A', 0), host('self', 0, 'loaded', true)], 'self', ctx(2, false))), ['A', 'self'])
    assert.deepEqual(ids(preferPrefixHost([host('A', 0), host('self', 0, 'loaded', true)], 'self', ctx(2, true))), ['self', 'A'])
  })
})
