/**
 * A flooding or lying peer on the membership topic is throttled and penalised; the honest peers
 * keep being heard. Real libp2p hosts on loopback.
 */
import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { Mesh, MEMBERSHIP_TOPIC, createIdentity, encodeMembership } from '../../src/p2p/index.js'
import { createHost, type Host } from '../../src/p2p/host.js'
import { TokenBuckets } from '../../src/p2p/token-buckets.js'

function mesh (name: string, bootstrap: string[] = []): Promise<Mesh> {
  return createIdentity().then(privateKey => new Mesh({
    privateKey, name, groups: ['default'], listen: ['/ip4/127.0.0.1/tcp/0'], bootstrap, mdns: false, mdnsIntervalMs: 1000,
    heartbeatMs: 200, suspectAfterMs: 1000, deadAfterMs: 2000, snapshotIntervalMs: 5000, pingIntervalMs: 5000, redialMinMs: 200, redialMaxMs: 1000,
    snapshotVersion: () => 1, snapshotData: () => ({}), validateSnapshot: (d: unknown): d is Record<string, unknown> => typeof d === 'object' && d !== null
  }))
}

describe('TokenBuckets', () => {
  it('allows the burst, then the rate, per key', () => {
    let now = 0
    const b = new TokenBuckets(2, 3, () => now)
    assert.deepEqual([1, 2, 3, 4].map(() => b.take('a')), [true, true, true, false])
    assert.equal(b.take('b'), true, 'another key has its own bucket')
    now = 500
    assert.equal(b.take('a'), true)
    assert.equal(b.take('a'), false)
  })
})

describe('gossip under a hostile peer', () => {
  let a: Mesh, b: Mesh
  let attacker: Host
  before(async () => {
    a = await mesh('a')
    await a.start()
    b = await mesh('b', [a.addresses()[0]])
    await b.start()
    attacker = await createHost({ privateKey: await createIdentity(), listen: ['/ip4/127.0.0.1/tcp/0'], mdns: false, mdnsIntervalMs: 1000 })
    attacker.services.pubsub.subscribe(MEMBERSHIP_TOPIC)
    await attacker.dial(a.libp2p.getMultiaddrs()[0])
    const deadline = Date.now() + 5000
    while (Date.now() < deadline && (a.table.get(b.peerId)?.status !== 'alive' || attacker.services.pubsub.getSubscribers(MEMBERSHIP_TOPIC).length === 0)) await new Promise(resolve => setTimeout(resolve, 50))
  })
  after(async () => {
    await attacker.stop()
    await b.stop({ announce: false })
    await a.stop({ announce: false })
  })

  it('drops garbage and a flood, penalises the sender, and keeps hearing the honest peer', async () => {
    const pubsub = attacker.services.pubsub
    const enc = new TextEncoder()
    let seq = 0
    const valid = (): Uint8Array => encodeMembership({ v: 1, t: 'hb', inc: 1, seq: seq++, at: Date.now(), name: 'flood', groups: ['default'], snap: 1 })
    for (let i = 0; i < 400; i++) {
      const payload = i % 4 === 0 ? enc.encode(`{"v":1,"t":"hb","garbage":${i}}`) : valid()
      await pubsub.publish(MEMBERSHIP_TOPIC, payload).catch(() => {})
    }
    await new Promise(resolve => setTimeout(resolve, 1500))
    const dropped = a.stats.dropped
    assert.ok(dropped.invalid_schema > 0, `invalid messages dropped (${dropped.invalid_schema})`)
    assert.ok(dropped.rate_limited > 0, `flood throttled (${dropped.rate_limited})`)
    const score = (a.libp2p.services.pubsub as unknown as { getScore: (id: string) => number }).getScore(attacker.peerId.toString())
    assert.ok(score < -80, `the flooder is graylisted (score ${score})`)
    // The honest peer is still alive and current on A.
    const rec = a.table.get(b.peerId)!
    assert.equal(rec.status, 'alive')
    assert.ok(Date.now() - rec.lastSeen < 1000)
  })
})
