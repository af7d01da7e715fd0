/**
 * Issue 14: merges of peers' gossiped deployments are serialized and idempotent. Unit tests of
 * `SnapshotMerger` with a counting target, then the issue's attack on real nodes: a member built
 * from src/p2p's `Mesh` gossips a snapshot of 900 signed junk deployments (what one message holds) under a new version
 * every 50 ms. Counted, not timed: merges run, how many at once, snapshots the victim publishes;
 * and the two honest nodes never see each other suspect or dead.
 */
import '../../src/polyfill.js'
import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { SnapshotMerger } from '../../src/node/snapshot-merge.js'
import type { Deployment } from '../../src/node/deployments.js'
import { MeshNode } from '../../src/node/index.js'
import { resolveOptions } from '../../src/config/index.js'
import { Mesh, createIdentity, peerIdOf } from '../../src/p2p/index.js'
import { signDeployment } from '../../src/node/deployment-record.js'
import { isNodeSnapshot, type NodeSnapshot } from '../../src/node/snapshot.js'
import { logSink, setLogSink } from '../../src/logger.js'
import { tempDir } from '../support/cluster.js'

const sleep = async (ms: number): Promise<void> => { await new Promise(resolve => setTimeout(resolve, ms)) }

function rec (model: string, updatedAt = 1): Deployment {
  return { model, replicas: 1, group: 'default', updatedAt, origin: 'o', deleted: false, sig: `sig-${model}-${updatedAt}` }
}

describe('SnapshotMerger', () => {
  it('runs one merge at a time, keeps only the newest waiting set per peer, and skips a set it merged already', async () => {
    let active = 0
    let most = 0
    const merged: string[] = []
    const merger = new SnapshotMerger({
      merge: async (set, from) => {
        most = Math.max(most, ++active)
        await sleep(20)
        merged.push(`${from}:${set.length}`)
        active--
        return set.length
      }
    })
    for (let i = 1; i <= 30; i++) {
      merger.offer('p', Array.from({ length: i }, (_, k) => rec(`m${k}`)))
      merger.offer('q', [rec('same')])
    }
    await merger.idle()
    assert.equal(most, 1, 'never two merges at once')
    // p: the first set starts at once, the other 29 replace each other while it runs: 2 merges.
    assert.deepEqual(merged.filter(m => m.startsWith('p:')), ['p:1', 'p:30'])
    assert.deepEqual(merged.filter(m => m.startsWith('q:')), ['q:1'], 'an unchanged set is merged once')
    assert.ok(merger.stats.superseded >= 28, `superseded ${merger.stats.superseded}`)
    merger.offer('q', [rec('same')])
    await merger.idle()
    assert.equal(merger.stats.merges, 3)
    assert.ok(merger.stats.unchanged > 0)
  })

  it('tries a set again after a failed merge (nothing remembered as merged)', async () => {
    let fail = true
    let calls = 0
    const merger = new SnapshotMerger({ merge: async () => { calls++; if (fail) throw new Error('disk full'); return 1 } })
    const log = logSink
    setLogSink(() => {})
    try {
      merger.offer('p', [rec('a')])
      await merger.idle()
      fail = false
      merger.offer('p', [rec('a')])
      await merger.idle()
      merger.offer('p', [rec('a')])
      await merger.idle()
    } finally {
      setLogSink(log)
    }
    assert.equal(calls, 2)
  })
})

describe('a member gossiping a snapshot full of junk deployments under a new version every 50 ms', () => {
  const JUNK = 900
  let victim: MeshNode
  let honest: MeshNode
  let attacker: Mesh<NodeSnapshot>
  const events: string[] = []
  const originalSink = logSink

  async function node (name: string, bootstrap: string[] = []): Promise<MeshNode> {
    const options = await resolveOptions({ env: {}, flags: { 'no-mdns': true, 'data-dir': await tempDir('shepherd-merge-'), listen: ['/ip4/127.0.0.1/tcp/0'], name, open: true, bootstrap, 'heartbeat-ms': 300, 'suspect-after-ms': 1500, 'dead-after-ms': 3000 } })
    const n = await MeshNode.create(options)
    await n.start()
    return n
  }

  async function until (what: string, cond: () => boolean, ms = 20_000): Promise<void> {
    const deadline = Date.now() + ms
    while (!cond()) {
      if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
      await sleep(50)
    }
  }

  before(async () => {
    setLogSink(() => {})
    victim = await node('victim')
    honest = await node('honest', [victim.mesh.addresses()[0]])
    await until('the honest nodes see each other', () => victim.mesh.table.get(honest.id)?.status === 'alive' && honest.mesh.table.get(victim.id)?.status === 'alive')
    for (const [n, other] of [[victim, honest], [honest, victim]] as const) {
      n.mesh.on('peer:suspect', r => { if (r.id === other.id) events.push(`${n.name} suspected ${other.name}`) })
      n.mesh.on('peer:dead', r => { if (r.id === other.id) events.push(`${n.name} saw ${other.name} dead`) })
    }
  })

  after(async () => {
    await attacker?.stop({ announce: false })
    await honest?.stop({ announce: false })
    await victim?.stop({ announce: false })
    setLogSink(originalSink)
  })

  it('merges the set once, one merge at a time, publishes a bounded number of snapshots and keeps the honest nodes alive', async () => {
    const key = await createIdentity()
    const id = peerIdOf(key)
    // 900 signed records (~255 bytes each) are as many as one 256 KiB membership message holds.
    const junk = await Promise.all(Array.from({ length: JUNK }, async (_, i) => await signDeployment(key, { model: `junk-${i}`, replicas: 1, group: 'default', updatedAt: Date.now(), origin: id, deleted: false })))
    const data: NodeSnapshot = { version: '1', resources: { cpu: { cores: 1 }, memory: { totalBytes: 1 }, disk: {}, gpus: [], llamacpp: [] } as unknown as NodeSnapshot['resources'], models: [], api: null, deployments: junk }
    assert.ok(isNodeSnapshot(data))
    let version = 1
    attacker = new Mesh<NodeSnapshot>({
      privateKey: key, name: 'junk', groups: ['default'], listen: ['/ip4/127.0.0.1/tcp/0'], bootstrap: [victim.mesh.addresses()[0]], mdns: false, mdnsIntervalMs: 1000,
      heartbeatMs: 300, suspectAfterMs: 1500, deadAfterMs: 3000, snapshotIntervalMs: 60_000, pingIntervalMs: 5000, redialMinMs: 200, redialMaxMs: 1000,
      snapshotVersion: () => version, snapshotData: () => data, validateSnapshot: isNodeSnapshot
    })
    // Count what reaches the store: every merge call, and how many run at once.
    const store = victim.deployments
    const realMerge = store.merge.bind(store)
    let calls = 0
    let active = 0
    let most = 0
    store.merge = async (incoming, from) => {
      // Merges of the attacker's set; the honest node gossips the records on too (its own set, another merge).
      if (from === id) calls++
      most = Math.max(most, ++active)
      try { return await realMerge(incoming, from) } finally { active-- }
    }
    await attacker.start()
    await until('the attacker is alive on the victim', () => victim.mesh.table.get(attacker.peerId)?.status === 'alive')
    const publishedBefore = victim.mesh.stats.work.snapshotsPublished
    const t0 = Date.now()
    // The churn: a new version of the same snapshot every 50 ms for 5 s, published at once.
    while (Date.now() - t0 < 5000) {
      version++
      attacker.scheduleSnapshot(0)
      await sleep(50)
    }
    await until('the junk was merged', () => store.list().length >= JUNK, 20_000)
    await victim.merger.idle()
    const elapsed = Date.now() - t0
    const published = victim.mesh.stats.work.snapshotsPublished - publishedBefore
    assert.equal(most, 1, 'merges never overlap')
    assert.ok(calls <= 2, `merges of the attacker's set: ${calls} (the victim took ${victim.mesh.stats.work.snapshotsApplied} snapshots from all peers)`)
    assert.ok(victim.merger.stats.unchanged + victim.mesh.stats.dropped.state_rate > 0, 'repeats were skipped or refused')
    // One snapshot per MIN_SNAPSHOT_GAP_MS (250 ms) at most, plus a few for joins.
    assert.ok(published <= Math.ceil(elapsed / 250) + 4, `the victim published ${published} snapshots in ${elapsed} ms`)
    assert.ok(store.list().length <= 1024)
    await sleep(1000)
    assert.deepEqual(events, [], 'the honest nodes never suspected each other')
    assert.equal(honest.mesh.table.get(victim.id)?.status, 'alive')
  })
})
