import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import { ConnectionListenAddrs, DuplicateIdentityDetector } from '../../src/p2p/duplicate-identity.js'

const SELF = 'self-id'
const P = 'peer-id'
const OPTS = { graceMs: 3000, liveMs: 10_000, clearAfterMs: 30_000, warnEveryMs: 60_000 }

/** Heartbeats of `peer` with incarnation `inc` every second from `from` to `to` (ms); returns the last observation. */
function beats (d: DuplicateIdentityDetector, peer: string, inc: number, from: number, to: number): ReturnType<DuplicateIdentityDetector['heard']> {
  let last = d.heard(peer, inc, from)
  for (let t = from + 1000; t <= to; t += 1000) last = d.heard(peer, inc, t)
  return last
}

describe('DuplicateIdentityDetector', () => {
  it('is quiet for one process, and for a restart (the old incarnation stops, a relayed message of it arrives late)', () => {
    const d = new DuplicateIdentityDetector(SELF, 1, 0, OPTS)
    assert.equal(beats(d, P, 100, 0, 20_000).duplicate, false)
    // Restart at 21 s: new incarnation; one relayed heartbeat of the old one 500 ms later.
    d.heard(P, 21_000, 21_000)
    assert.equal(d.heard(P, 100, 21_500).duplicate, false)
    assert.equal(beats(d, P, 21_000, 22_000, 60_000).duplicate, false)
    assert.deepEqual(d.list(60_000), [])
  })

  it('marks a peer id whose two incarnations alternate, names both, warns once per period, and clears once one stops', () => {
    const d = new DuplicateIdentityDetector(SELF, 1, 0, OPTS)
    beats(d, P, 100, 0, 10_000)
    let detectedAt = -1
    let warns = 0
    // From 10 s on the copy (incarnation 10_500) beats too, interleaved with the original.
    for (let t = 10_500; t <= 80_000; t += 1000) {
      const a = d.heard(P, 10_500, t)
      const b = d.heard(P, 100, t + 500)
      for (const o of [a, b]) {
        if (o.detected) detectedAt = t
        if (o.warn) warns++
      }
    }
    assert.ok(detectedAt >= 13_500 && detectedAt <= 15_000, `detected at ${detectedAt}: right after the grace`)
    assert.equal(warns, 2, 'warned at detection and once a minute later')
    const dup = d.get(P, 80_500)
    assert.ok(dup != null)
    assert.deepEqual(dup.incarnations, [100, 10_500])
    assert.equal(dup.self, false)
    assert.ok(dup.since >= detectedAt && dup.since <= detectedAt + 500)
    // The copy is stopped (its last beat at 80 s): only the original beats. The original alone is
    // no evidence once the copy is silent past liveMs; the mark goes clearAfterMs after that.
    beats(d, P, 100, 81_000, 119_000)
    assert.ok(d.get(P, 119_000) != null, 'still marked: the last evidence was at 90.5 s')
    beats(d, P, 100, 120_000, 122_000)
    assert.equal(d.get(P, 122_000), undefined, 'cleared 40 s after the copy stopped, not 60')
  })

  it('marks its own id when another process (newer or older) gossips with it', () => {
    // This node started at 50 s (incarnation 50_000); another process with its id, older, beats.
    const d = new DuplicateIdentityDetector(SELF, 50_000, 50_000, OPTS)
    assert.equal(d.heardSelf(10_000, 50_500).duplicate, false, 'within the grace: could be our own previous run, relayed')
    let o = d.heardSelf(10_000, 51_500)
    assert.equal(o.duplicate, false)
    o = d.heardSelf(10_000, 53_500)
    assert.equal(o.detected, true)
    assert.equal(o.warn, true)
    assert.deepEqual(d.self(53_500)?.incarnations, [10_000, 50_000])
    assert.equal(d.self(53_500)?.self, true)

    // The other side: this node is the older one; a newer process appears with its id.
    const older = new DuplicateIdentityDetector(SELF, 10_000, 10_000, OPTS)
    assert.equal(older.heardSelf(50_000, 50_000).duplicate, false)
    assert.equal(older.heardSelf(50_000, 53_001).detected, true, 'still alive itself past the grace')
  })

  it('clears the same way when the original stops and the copy goes on', () => {
    const d = new DuplicateIdentityDetector(SELF, 1, 0, OPTS)
    for (let t = 0; t <= 20_000; t += 1000) { d.heard(P, 100, t); if (t >= 5000) d.heard(P, 5000, t + 500) }
    assert.ok(d.get(P, 20_500) != null)
    beats(d, P, 5000, 21_500, 59_500)
    assert.ok(d.get(P, 59_500) != null, 'the copy alone was evidence until 10 s after the original\'s last beat')
    beats(d, P, 5000, 60_500, 61_500)
    assert.equal(d.get(P, 61_500), undefined, 'cleared 40 s after the original stopped')
  })

  it('takes a peer restarting every second for restarts, not for a duplicate', () => {
    const d = new DuplicateIdentityDetector(SELF, 1, 0, OPTS)
    for (let i = 0; i < 50; i++) assert.equal(d.heard(P, 1000 + i, 1000 * i).duplicate, false)
    assert.equal(d.get(P, 50_000), undefined)
  })

  it('names all three processes when a data dir was copied twice', () => {
    const d = new DuplicateIdentityDetector(SELF, 1, 0, OPTS)
    for (let t = 0; t < 20_000; t += 1000) for (let k = 0; k < 3; k++) d.heard(P, 100 + k, t + k)
    assert.deepEqual(d.get(P, 20_000)?.incarnations, [100, 101, 102])
  })

  it('marks an id whose open connections lead to two processes, and its own id when a member reports it', () => {
    const d = new DuplicateIdentityDetector(SELF, 1, 0, OPTS)
    const o = d.conflictingConnections(P, 1000)
    assert.deepEqual(o, { duplicate: true, detected: true, warn: true })
    assert.deepEqual(d.get(P, 1000)?.evidence, ['connections'])
    assert.equal(d.conflictingConnections(P, 2000).detected, false, 'still the same duplicate')
    assert.equal(d.get(P, 32_001), undefined, 'cleared clearAfterMs after the connections stopped conflicting')

    assert.equal(d.self(0), undefined)
    assert.equal(d.reportedBy('member-b', 5000).detected, true)
    d.reportedBy('member-c', 6000)
    assert.deepEqual(d.self(6000)?.reportedBy, ['member-b', 'member-c'])
    assert.deepEqual(d.self(6000)?.evidence, ['reported'])
    assert.equal(d.self(36_001), undefined)
  })
})

describe('ConnectionListenAddrs', () => {
  it('tells two processes (disjoint listen addresses) from one process on two connections', () => {
    const c = new ConnectionListenAddrs()
    c.identified(P, 'c1', ['/ip4/10.0.0.1/tcp/9191', '/ip4/127.0.0.1/tcp/9191'])
    c.identified(P, 'c2', ['/ip4/127.0.0.1/tcp/9191', '/ip4/10.0.0.1/tcp/9191'])
    assert.equal(c.conflict(P, ['c1', 'c2']), false, 'the same process dialled both ways')
    c.identified(P, 'c3', ['/ip4/10.0.0.2/tcp/9191'])
    assert.equal(c.conflict(P, ['c1', 'c2', 'c3']), true)
    assert.equal(c.conflict(P, ['c1', 'c2']), false, 'only open connections count')
    c.closed('c3')
    assert.equal(c.conflict(P, ['c1', 'c2', 'c3']), false)
    c.identified('other', 'c4', ['/ip4/10.0.0.9/tcp/9191'])
    assert.equal(c.conflict(P, ['c1', 'c4']), false, 'a connection of another peer never counts')
    c.identified(P, 'c5', [])
    assert.equal(c.conflict(P, ['c1', 'c5']), false, 'no addresses announced: no evidence')
  })
})
