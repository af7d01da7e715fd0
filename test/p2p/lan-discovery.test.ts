/**
 * The pace of mDNS queries (src/p2p/lan-discovery.ts). The discovery itself is tested on a real
 * namespace LAN (test/lan/discovery.test.ts), where it also checks the back-off and the dropped answers.
 */
import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { nextQueryDelay } from '../../src/p2p/lan-discovery.js'

const opts = { intervalMs: 1000, maxIntervalMs: 30_000 }

describe('nextQueryDelay', () => {
  it('queries every interval while the node is connected to no one', () => {
    assert.equal(nextQueryDelay(0, true, opts), 1000)
    assert.equal(nextQueryDelay(16_000, true, opts), 1000, 'a node that lost every peer goes back to the fast pace at once')
  })

  it('doubles the interval once connected, up to the cap', () => {
    const seen: number[] = []
    let last = 0
    for (let i = 0; i < 8; i++) seen.push(last = nextQueryDelay(last, false, opts))
    assert.deepEqual(seen, [1000, 2000, 4000, 8000, 16_000, 30_000, 30_000, 30_000])
  })

  it('never goes below the interval nor above the cap, whatever the last delay was', () => {
    assert.equal(nextQueryDelay(100, false, opts), 1000)
    assert.equal(nextQueryDelay(1e9, false, opts), 30_000)
    assert.equal(nextQueryDelay(5000, false, { intervalMs: 5000, maxIntervalMs: 5000 }), 5000)
  })
})
