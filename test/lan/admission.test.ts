/**
 * The README's quick start on a real LAN (network namespaces, mDNS only, product defaults: no swarm
 * key): the first node founds the mesh, the others show up on it as pending, one `admit` each on a
 * member makes them members everywhere (the ledger is synced), and a pending node gets nothing.
 */
import { after, before, describe, test } from 'node:test'
import assert from 'node:assert/strict'
import { MeshCluster } from './mesh-cluster.js'

describe('admission on a namespace LAN', { timeout: 90_000 }, () => {
  let cluster: MeshCluster | undefined
  const c = (): MeshCluster => { if (cluster == null) throw new Error('the cluster did not start'); return cluster }
  const members = async (i: number): Promise<{ mesh: string, members: Array<{ id: string, status: string }> }> => await c().getJson(i, '/api/members')
  const admit = async (on: number, id: string): Promise<number> => (await fetch(`${c().nodes[on].apiUrl}/api/members/${id}/admit`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: '{}' })).status

  before(async () => {
    cluster = await MeshCluster.start({ nodes: 3, membership: 'admission' })
  })
  after(async () => { await cluster?.destroy() })

  test('newcomers are pending until admitted; one admit each joins them to every member', async () => {
    const t0 = performance.now()
    const [n0, n1, n2] = c().nodes.map(n => n.peerId)
    await c().waitUntil([0], peers => [n1, n2].every(id => peers.some(p => p.id === id && (p.status as string) === 'pending')), { t0, timeoutMs: 15_000, what: 'node 0 sees both newcomers pending (mDNS)' })
    console.log(`[lan] newcomers pending after ${Math.round(performance.now() - t0)} ms`)
    assert.equal(await admit(0, n1), 200)
    assert.equal(await admit(0, n2), 200)
    const mesh = (await members(0)).mesh
    await c().waitUntil([0, 1, 2], (peers, i) => [n0, n1, n2].filter((_, j) => j !== i).every(id => peers.some(p => p.id === id && p.status === 'alive' && p.resources != null)), { t0: performance.now(), timeoutMs: 15_000, what: 'every node sees the two others alive with a snapshot' })
    for (const i of [1, 2]) {
      const m = await members(i)
      assert.equal(m.mesh, mesh, `node ${i} adopted the mesh`)
      assert.deepEqual(m.members.filter(x => x.status === 'member').map(x => x.id).sort(), [n0, n1, n2].sort())
    }
    const groups = await c().getJson<{ groups: Array<{ members: unknown[] }> }>(2, '/api/groups')
    assert.equal(groups.groups[0].members.length, 3, 'one group of three')
  })
})
