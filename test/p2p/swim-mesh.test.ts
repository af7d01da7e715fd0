/**
 * The membership layer with `membership: 'swim'` (real `Mesh`es: libp2p, gossipsub, SWIM): an
 * idle mesh publishes no heartbeats (liveness comes from SWIM probes), a change of load still
 * reaches the others at once, round trips come from SWIM acks, and a member gone silent (its SWIM
 * paused: no probes and no answers, connections open, as under SIGSTOP) is dead in every peer
 * table, then alive again once it resumes.
 */
import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { waitFor } from '../support/cluster.js'
import { Mesh } from '../../src/p2p/mesh.js'
import { createIdentity } from '../../src/p2p/identity.js'

describe('mesh with SWIM membership', () => {
  const meshes: Mesh[] = []
  const load = { active: 0, queued: 0 }
  const dead: string[] = []

  async function mesh (name: string, bootstrap: string[]): Promise<Mesh> {
    const m = new Mesh({
      privateKey: await createIdentity(), name, groups: ['default'], listen: ['/ip4/127.0.0.1/tcp/0'], bootstrap, mdns: false, mdnsIntervalMs: 1000,
      heartbeatMs: 300, suspectAfterMs: 1500, deadAfterMs: 3000, snapshotIntervalMs: 60_000, pingIntervalMs: 5000, redialMinMs: 200, redialMaxMs: 1000,
      membership: 'swim', swimProbeIntervalMs: 500, swimProbeTimeoutMs: 250, swimSuspicionMult: 4, maxConnections: 64,
      snapshotVersion: () => 1, snapshotData: () => ({ v: 1 }), validateSnapshot: (d: unknown): d is Record<string, unknown> => typeof d === 'object' && d !== null,
      load: () => load,
      leadership: () => [['default', 1, 'x'.repeat(40)]]
    })
    await m.start()
    m.on('peer:dead', rec => { dead.push(`${name}:${rec.name}`) })
    meshes.push(m)
    return m
  }

  before(async () => {
    const a = await mesh('a', [])
    const boot = [a.addresses()[0]]
    await mesh('b', boot)
    await mesh('c', boot)
  })

  after(async () => { await Promise.all(meshes.map(async m => { await m.stop() })) })

  const statusOf = (on: Mesh, of: Mesh): string | undefined => on.table.get(of.peerId)?.status
  const allAlive = (): boolean => meshes.every(m => meshes.every(o => o === m || statusOf(m, o) === 'alive'))

  it('sees everyone alive, then publishes nothing while idle; a load change still goes out', async () => {
    const [a, b] = meshes
    await waitFor('all alive everywhere', allAlive, 10_000)
    await waitFor('SWIM views alive', () => meshes.every(m => meshes.every(o => o === m || m.swimView(o.peerId)?.status === 'alive')), 5000)
    // Let the greetings (snapshots on meeting, the first heartbeat) settle.
    await new Promise(resolve => setTimeout(resolve, 1000))
    const sent0 = meshes.map(m => m.stats.messagesSent)
    await new Promise(resolve => setTimeout(resolve, 3000))
    const published = meshes.map((m, i) => m.stats.messagesSent - sent0[i])
    // Flooding would be 10 heartbeats each in 3 s at 300 ms.
    assert.ok(published.every(n => n === 0), `gossip published while idle: ${published.join(', ')}`)
    assert.ok(meshes.every(m => (m.swimStats()?.framesSent ?? 0) > 0), 'SWIM probes ran')
    assert.ok(b.table.get(a.peerId)?.rttMs != null, 'round trip known')

    load.active = 3
    await waitFor('the new load seen by B', () => b.table.get(a.peerId)?.load?.active === 3, 3000)
    assert.deepEqual(dead, [])
  })

  it('a member gone silent is dead in every table, and alive again once it resumes', async () => {
    const [a, b, c] = meshes
    c.swimPause(true)
    const ms = (await waitFor('C dead on A and B', () => statusOf(a, c) === 'dead' && statusOf(b, c) === 'dead', 12_000)).ms
    console.log(`# silent member dead in both tables after ${ms.toFixed(0)} ms`)
    c.swimPause(false)
    const back = (await waitFor('C alive again on A and B', () => statusOf(a, c) === 'alive' && statusOf(b, c) === 'alive', 8000)).ms
    console.log(`# resumed member alive after ${back.toFixed(0)} ms`)
    await waitFor('A and B alive on C', () => statusOf(c, a) === 'alive' && statusOf(c, b) === 'alive', 8000)
    // C, silent, sent nothing that could fail: silence alone does not make it think itself cut off.
    assert.deepEqual(dead.filter(d => !d.endsWith(':c')), [], 'nobody but C was taken for dead')
  })
})
