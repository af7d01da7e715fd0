/**
 * Issue 14, bounded state: a hostile peer built from this project's own p2p stack tries the
 * issue's attacks on a real two-node mesh (libp2p on loopback, open membership so that every
 * key counts as a member and only the new verification stands in the way):
 * - ghost peers: throw-away keys whose validly signed snapshots are relayed through one
 *   connection and name a victim port as their address;
 * - heartbeats stamped 10 years ahead;
 * - a 240 KB snapshot re-sent every 50 ms.
 * Each stays bounded, counted as work (records, dial targets, dials, connections, snapshots
 * validated), not timed; and the two honest nodes never see each other die.
 */
import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import net from 'node:net'
import { Mesh, MEMBERSHIP_TOPIC, createIdentity, encodeMembership, newRecord, type MembershipMessage } from '../../src/p2p/index.js'
import { shouldEvict } from '../../src/p2p/membership.js'
import { createHost, type Host } from '../../src/p2p/host.js'
import { TopicValidatorResult } from '@libp2p/gossipsub'
import { MAX_UNVERIFIED_PER_SOURCE, STATE_BYTES_BURST, STATE_BYTES_PER_SEC } from '../../src/p2p/membership-limits.js'
import { SNAPSHOT_PROTOCOL } from '../../src/p2p/snapshot-exchange.js'

const sleep = async (ms: number): Promise<void> => { await new Promise(resolve => setTimeout(resolve, ms)) }

async function mesh (name: string, bootstrap: string[] = [], version: () => number = () => 1, membership: 'flood' | 'swim' = 'flood'): Promise<Mesh> {
  return new Mesh({
    membership,
    privateKey: await createIdentity(), name, groups: ['default'], listen: ['/ip4/127.0.0.1/tcp/0'], bootstrap, mdns: false, mdnsIntervalMs: 1000,
    heartbeatMs: 300, suspectAfterMs: 1500, deadAfterMs: 3000, snapshotIntervalMs: 60_000, pingIntervalMs: 5000, redialMinMs: 200, redialMaxMs: 1000,
    snapshotVersion: version, snapshotData: () => ({ v: version() }), validateSnapshot: (d: unknown): d is Record<string, unknown> => typeof d === 'object' && d !== null
  })
}

async function hostileHost (subscribe = true): Promise<Host> {
  const h = await createHost({ privateKey: await createIdentity(), listen: ['/ip4/127.0.0.1/tcp/0'], mdns: false, mdnsIntervalMs: 1000 })
  // Ghosts publish without subscribing: the attacker's gossip mesh is then the victim alone.
  if (subscribe) h.services.pubsub.subscribe(MEMBERSHIP_TOPIC)
  // Its ghosts all share its address: without this, its own gossipsub scores every peer on
  // 127.0.0.1 down (IP colocation) and relays nothing. An attacker configures its stack as it likes.
  ;(h.services.pubsub as unknown as { score: { params: { IPColocationFactorWhitelist: Set<string> } } }).score.params.IPColocationFactorWhitelist.add('127.0.0.1')
  // Relays whatever it is given: the attacker vouches for its ghosts.
  h.services.pubsub.topicValidators.set(MEMBERSHIP_TOPIC, () => TopicValidatorResult.Accept)
  return h
}

async function until (what: string, cond: () => boolean, ms = 15_000): Promise<void> {
  const deadline = Date.now() + ms
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await sleep(50)
  }
}

describe('eviction of dead peers', () => {
  it('forgets a peer dead or gone past the TTL, or never heard from and not connected; never a connected one', () => {
    const ttl = 1000
    const rec = { ...newRecord<unknown>('p', 0), lastSeen: 5, status: 'dead' as const, statusSince: 100 }
    assert.equal(shouldEvict(rec, 1100, ttl), false)
    assert.equal(shouldEvict(rec, 1101, ttl), true)
    assert.equal(shouldEvict({ ...rec, status: 'left' }, 1101, ttl), true)
    assert.equal(shouldEvict({ ...rec, status: 'suspect' }, 99_999, ttl), false, 'suspect is settled by the detector first')
    assert.equal(shouldEvict({ ...rec, connected: true }, 99_999, ttl), false)
    assert.equal(shouldEvict({ ...rec, lastSeen: 0 }, 1001, ttl), true, 'an unseen record (firstSeen 0)')
  })
})

// Both failure detectors: flooded heartbeats, and SWIM (the default), whose probes must not be
// starved into false deaths by the attacks either.
for (const membership of ['flood', 'swim'] as const) {
  describe(`membership under a hostile peer (bounded state, ${membership})`, () => {
    let a: Mesh, b: Mesh
    const deaths: string[] = []
    before(async () => {
      a = await mesh('a', [], () => 1, membership)
      await a.start()
      b = await mesh('b', [a.addresses()[0]], () => 1, membership)
      await b.start()
      await until('a and b alive to each other', () => a.table.get(b.peerId)?.status === 'alive' && b.table.get(a.peerId)?.status === 'alive')
      a.on('peer:dead', rec => { if (rec.id === b.peerId) deaths.push(`a saw b dead at ${new Date().toISOString()}`) })
      b.on('peer:dead', rec => { if (rec.id === a.peerId) deaths.push(`b saw a dead at ${new Date().toISOString()}`) })
      a.on('peer:suspect', rec => { if (rec.id === b.peerId) deaths.push(`a suspected b at ${new Date().toISOString()}`) })
    })
    after(async () => {
      await b.stop({ announce: false })
      await a.stop({ announce: false })
    })

    it('pulls a snapshot it missed from its owner: a heartbeat or SWIM frame names a newer version, nothing is published to everyone', async () => {
      let version = 1
      const c = await mesh('c', [a.addresses()[0]], () => version, membership)
      await c.start()
      try {
        await until('c has a snapshot on a and b', () => a.table.get(c.peerId)?.snapshotVersion === 1 && b.table.get(c.peerId)?.snapshotVersion === 1 && c.table.get(b.peerId)?.status === 'alive')
        // A join is two pulls per pair (c takes a's and b's; they take c's) and c's one publish.
        await until('c holds a\'s and b\'s snapshots', () => c.table.get(a.peerId)?.snapshotVersion === 1 && c.table.get(b.peerId)?.snapshotVersion === 1)
        assert.ok(c.stats.work.snapshotsPulled >= 1 && c.stats.work.pullsServed >= 1, JSON.stringify(c.stats.work))
        assert.ok(c.stats.work.snapshotsPublished <= 2, `c published its first snapshot, not one per member met: ${JSON.stringify(c.stats.work)}`)
        await sleep(1500)
        const pulledBefore = a.stats.work.snapshotsPulled + b.stats.work.snapshotsPulled
        const published = c.stats.work.snapshotsPublished
        // A change whose snapshot never goes out (no scheduleSnapshot; the periodic check is 60 s away).
        version = 2
        await until('a and b hold version 2', () => a.table.get(c.peerId)?.snapshotVersion === 2 && b.table.get(c.peerId)?.snapshotVersion === 2, 10_000)
        assert.ok(a.stats.work.snapshotsPulled + b.stats.work.snapshotsPulled >= pulledBefore + 2, 'a and b each pulled it')
        assert.equal((a.table.get(c.peerId)?.snapshot as { v?: number } | null)?.v, 2)
        assert.equal(c.stats.work.snapshotsPublished, published, 'c published nothing: each that lacked it pulled it')
      } finally {
        await c.stop({ announce: false })
      }
    })

    it('asks a member that does not pull (an older node) with `want`, and it publishes its snapshot', async () => {
      let version = 1
      const c = await mesh('c', [a.addresses()[0]], () => version, membership)
      await c.start()
      // An older node: it never registered the snapshot protocol (identify-push tells a and b).
      await c.libp2p.unhandle(SNAPSHOT_PROTOCOL)
      try {
        await until('c has a snapshot on a and b', () => a.table.get(c.peerId)?.snapshotVersion === 1 && b.table.get(c.peerId)?.snapshotVersion === 1 && c.table.get(b.peerId)?.status === 'alive')
        await sleep(1500)
        const wantsBefore = a.stats.work.wantsSent + b.stats.work.wantsSent
        const published = c.stats.work.snapshotsPublished
        version = 2
        await until('a holds version 2', () => a.table.get(c.peerId)?.snapshotVersion === 2, 10_000)
        assert.ok(a.stats.work.wantsSent + b.stats.work.wantsSent > wantsBefore, 'a or b asked')
        assert.ok(c.stats.work.wantsAnswered >= 1, 'c answered')
        assert.ok(c.stats.work.snapshotsPublished - published <= 3, 'one snapshot answered the asks (the gap merges repeats)')
      } finally {
        await c.stop({ announce: false })
      }
    })

    it('keeps ghost peers out of the table, dials their claimed address a bounded number of times, then stops', async () => {
      // The victim port: a TCP listener that counts connections (it never speaks, so a dial times out).
      let connections = 0
      const victim = net.createServer(sock => { connections++; sock.on('error', () => {}); setTimeout(() => sock.destroy(), 3000).unref() })
      await new Promise<void>(resolve => victim.listen(0, '127.0.0.1', resolve))
      const victimAddr = `/ip4/127.0.0.1/tcp/${(victim.address() as net.AddressInfo).port}`
      const attacker = await hostileHost()
      const ghosts: Host[] = []
      try {
        await attacker.dial(a.libp2p.getMultiaddrs()[0])
        const GHOSTS = MAX_UNVERIFIED_PER_SOURCE + 8
        for (let i = 0; i < GHOSTS; i++) {
          const g = await hostileHost(false)
          // The attacker dials out (libp2p limits inbound connections per address a second).
          await attacker.dial(g.getMultiaddrs()[0])
          ghosts.push(g)
        }
        await until('the ghosts see the attacker subscribed', () => ghosts.every(g => g.services.pubsub.getSubscribers(MEMBERSHIP_TOPIC).length > 0))
        await until('the victim in the attacker\'s gossip mesh', () => (attacker.services.pubsub as unknown as { getMeshPeers: (t: string) => string[] }).getMeshPeers(MEMBERSHIP_TOPIC).includes(a.peerId))
        const sent = { snaps: 0 }
        for (let round = 0; round < 6; round++) {
          await Promise.all(ghosts.map(async (g, i) => {
            const msg: MembershipMessage = round % 2 === 0
              ? { v: 1, t: 'snap', inc: 1, seq: round, at: Date.now(), name: `ghost-${i}`, groups: ['default'], snap: round + 1, addrs: [victimAddr], data: { models: Array.from({ length: 40 }, (_, k) => ({ name: `m${k}` })) } }
              : { v: 1, t: 'hb', inc: 1, seq: round, at: Date.now(), name: `ghost-${i}`, groups: ['default'], snap: round }
            await g.services.pubsub.publish(MEMBERSHIP_TOPIC, encodeMembership(msg)).then(() => { sent.snaps++ }).catch(() => {})
          }))
          await sleep(400)
        }
        assert.ok(sent.snaps > GHOSTS, `the ghosts published (${sent.snaps})`)
        await until('the relayed ghost gossip reached the victim', () => a.stats.dropped.unverified > 0, 5000)
        const ghostIds = new Set(ghosts.map(g => g.peerId.toString()))
        assert.equal(a.table.list().filter(r => ghostIds.has(r.id)).length, 0, 'no ghost has a record')
        const r = a.redialStats()
        assert.ok(r.hinted <= MAX_UNVERIFIED_PER_SOURCE, `ghost dial targets bounded: ${r.hinted}`)
        // Each hinted ghost is dialed at most 3 times, then dropped; the victim port sees no more.
        // Up to 3 dials of 5 s each per ghost, in the hinted half of the dial slots.
        await until('the ghost dial targets dropped', () => a.redialStats().hinted === 0, 60_000)
        const bounded = connections
        assert.ok(bounded <= MAX_UNVERIFIED_PER_SOURCE * 3, `connections to the victim port: ${bounded}`)
        await sleep(3000)
        assert.equal(connections, bounded, 'no dial to a ghost after its targets were dropped')
        assert.equal(b.table.list().filter(rec => ghostIds.has(rec.id)).length, 0, 'nothing of them reached the other node')
      } finally {
        await Promise.all(ghosts.map(async g => { await g.stop() }))
        await attacker.stop()
        victim.close()
      }
      assert.deepEqual(deaths, [], 'the honest nodes kept each other alive')
    })

    it('clamps heartbeats stamped 10 years ahead: the delay histogram never goes negative', async () => {
      const attacker = await hostileHost()
      try {
        await attacker.dial(a.libp2p.getMultiaddrs()[0])
        await until('the attacker sees the victim subscribed', () => attacker.services.pubsub.getSubscribers(MEMBERSHIP_TOPIC).some(p => p.equals(a.libp2p.peerId)))
        const tenYears = 10 * 365 * 24 * 3600_000
        for (let seq = 1; seq <= 10; seq++) {
          await attacker.services.pubsub.publish(MEMBERSHIP_TOPIC, encodeMembership({ v: 1, t: 'hb', inc: 1, seq, at: Date.now() + tenYears, name: 'future', groups: [], snap: 0 })).catch(() => {})
          await sleep(50)
        }
        await until('the future heartbeats arrived (connected: a verified peer)', () => a.table.get(attacker.peerId.toString())?.status === 'alive', 5000)
        const h = a.stats.heartbeatDelay
        assert.ok(h.sum >= 0, `delay histogram sum ${h.sum}`)
        assert.ok(h.counts.every(c => c >= 0))
      } finally {
        await attacker.stop()
      }
    })

    it('budgets snapshot bytes per origin: a 240 KB snapshot every 50 ms is validated a bounded number of times', async () => {
      const attacker = await hostileHost()
      try {
        await attacker.dial(a.libp2p.getMultiaddrs()[0])
        await until('the attacker sees the victim subscribed', () => attacker.services.pubsub.getSubscribers(MEMBERSHIP_TOPIC).some(p => p.equals(a.libp2p.peerId)))
        const validatedBefore = a.stats.work.snapshotsValidated
        const droppedBefore = a.stats.dropped.state_rate + a.stats.dropped.rate_limited
        const pad = 'x'.repeat(240_000)
        const t0 = Date.now()
        let sent = 0
        for (let i = 1; i <= 60; i++) {
          const msg: MembershipMessage = { v: 1, t: 'snap', inc: 1, seq: i, at: Date.now(), name: 'churn', groups: [], snap: i, addrs: [], data: { pad } }
          await attacker.services.pubsub.publish(MEMBERSHIP_TOPIC, encodeMembership(msg)).then(() => { sent++ }).catch(() => {})
          await sleep(50)
        }
        await sleep(1000)
        const seconds = (Date.now() - t0) / 1000
        const validated = a.stats.work.snapshotsValidated - validatedBefore
        const dropped = a.stats.dropped.state_rate + a.stats.dropped.rate_limited - droppedBefore
        assert.ok(sent >= 50, `the churn was sent (${sent})`)
        // Budget: the burst plus the rate over the churn (~4 s on a quiet machine: ~5 snapshots of 240 KB).
        const budget = Math.floor((STATE_BYTES_BURST + STATE_BYTES_PER_SEC * seconds) / 240_000) + 1
        assert.ok(validated <= budget, `snapshots validated: ${validated} of ${sent} in ${seconds} s (budget ${budget})`)
        assert.ok(dropped >= sent - budget - 2, `dropped as over budget: ${dropped} of ${sent}`)
        assert.ok(validated >= 1, 'the first snapshots within budget are taken')
      } finally {
        await attacker.stop()
      }
      assert.equal(a.table.get(b.peerId)?.status, 'alive')
      assert.deepEqual(deaths, [], 'the honest nodes kept each other alive')
    })
  })
}
