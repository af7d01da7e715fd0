/**
 * When a worker stops an rpc-server whose split has moved on (issue 16): the pure rule in
 * src/node/split/rpc-idle.ts. The LAN test (test/lan/split.test.ts) checks it end to end.
 */
import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import fc from 'fast-check'
import { RPC_IDLE_DEFAULTS, headNamesWorker, idleGrants, type GrantUse } from '../../../src/node/split/rpc-idle.js'

const T = 1_000_000
const opts = { idleMs: 15_000, unusedMs: 600_000 }
const grant = (over: Partial<GrantUse> = {}): GrantUse => ({ model: 'm', head: 'H', startedAt: T, open: 0, lastAt: null, headNamesMe: false, ...over })

describe('idle rpc-servers', () => {
  it('keeps a grant while a tunnel of its head is open, however old', () => {
    assert.deepEqual(idleGrants([grant({ open: 1, lastAt: T + 1 })], T + 10 * 3_600_000, opts), [])
  })

  it('keeps a grant while the head names this node in its split, tunnels or not', () => {
    assert.deepEqual(idleGrants([grant({ headNamesMe: true, lastAt: T + 1 })], T + 10 * 3_600_000, opts), [])
  })

  it('stops one whose last tunnel closed idleMs ago and that the head no longer names', () => {
    const g = grant({ lastAt: T + 5_000 })
    assert.deepEqual(idleGrants([g], T + 5_000 + 14_999, opts), [])
    assert.deepEqual(idleGrants([g], T + 5_000 + 15_000, opts), [g])
  })

  it('waits unusedMs for a head that never connected (it may still be pulling the file)', () => {
    const g = grant()
    assert.deepEqual(idleGrants([g], T + 599_999, opts), [])
    assert.deepEqual(idleGrants([g], T + 600_000, opts), [g])
  })

  it('counts only tunnels of this grant: one closed before a move to a new head is no use', () => {
    const g = grant({ lastAt: T - 1 })
    assert.deepEqual(idleGrants([g], T + 20_000, opts), [], 'the new head gets the unused grace')
  })

  it('has defaults that give a reload time to reconnect and a pull time to finish', () => {
    assert.ok(RPC_IDLE_DEFAULTS.idleMs >= 10_000)
    assert.ok(RPC_IDLE_DEFAULTS.unusedMs >= 5 * 60_000)
  })

  it('never stops a grant in use (property)', () => {
    fc.assert(fc.property(fc.record({
      open: fc.nat(4), lastAt: fc.option(fc.nat(10_000_000)), startedAt: fc.nat(10_000_000), headNamesMe: fc.boolean()
    }), fc.nat(100_000_000), (g, now) => {
      const out = idleGrants([grant(g)], now, opts)
      if (g.open > 0 || g.headNamesMe) return out.length === 0
      return true
    }))
  })
})

describe("reading the head's snapshot", () => {
  const models = [
    { name: 'm', state: 'loaded', shards: [{ nodeId: 'H', layers: [0, 3] }, { nodeId: 'W', layers: [4, 7] }] },
    { name: 'other', state: 'loaded', shards: [{ nodeId: 'H', layers: [0, 3] }, { nodeId: 'X', layers: [4, 7] }] }
  ]

  it('names a worker in a loaded or loading split of that model only', () => {
    assert.equal(headNamesWorker(models, 'm', 'W'), true)
    assert.equal(headNamesWorker(models, 'm', 'X'), false, 'another worker')
    assert.equal(headNamesWorker(models, 'other', 'W'), false, 'another model')
    assert.equal(headNamesWorker([{ ...models[0], state: 'loading' }], 'm', 'W'), true)
    assert.equal(headNamesWorker([{ ...models[0], state: 'on_disk' }], 'm', 'W'), false, 'an unloaded copy still listing old shards')
    assert.equal(headNamesWorker([{ name: 'm', state: 'loaded' }], 'm', 'W'), false, 'loaded whole, no split')
  })

  it('reads garbage as "not named"', () => {
    for (const bad of [null, undefined, 42, 'x', {}, [null], [{ name: 'm', shards: 'W' }], [{ name: 'm', shards: [null] }]]) {
      assert.equal(headNamesWorker(bad, 'm', 'W'), false)
    }
  })
})
