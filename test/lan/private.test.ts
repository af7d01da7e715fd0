/**
 * Private swarms on a real LAN (network namespaces, mDNS only): two swarms with different keys
 * and a keyless node share one bridge; each swarm sees only its own members, the keyless node
 * sees nothing, and none of them can reach another's API through the mesh.
 */
import { mkdtemp, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, test } from 'node:test'
import assert from 'node:assert/strict'
import { generateSwarmKey } from '../../src/p2p/index.js'
import { MeshCluster } from './mesh-cluster.js'

describe('private swarms on a namespace LAN', { timeout: 90_000 }, () => {
  let cluster: MeshCluster | undefined
  const c = (): MeshCluster => { if (cluster == null) throw new Error('the cluster did not start'); return cluster }

  before(async () => {
    const dir = await mkdtemp(join(tmpdir(), 'shepherd-keys-'))
    const k1 = join(dir, 'k1'); const k2 = join(dir, 'k2')
    await writeFile(k1, generateSwarmKey(), { mode: 0o600 })
    await writeFile(k2, generateSwarmKey(), { mode: 0o600 })
    // 0,1: swarm one · 2,3: swarm two · 4: no key (an open node on the same LAN).
    cluster = await MeshCluster.start({
      nodes: 5,
      nodeArgs: { 0: ['--swarm-key', k1], 1: ['--swarm-key', k1], 2: ['--swarm-key', k2], 3: ['--swarm-key', k2] },
      // Node 4 runs the product default (admission, no key).
      membership: 'admission'
    })
  })
  after(async () => { await cluster?.destroy() })

  test('each swarm sees exactly its own members; the keyless node sees nobody', async () => {
    const t0 = performance.now()
    await c().waitUntil([0, 1, 2, 3], (peers, i) => {
      const partner = c().nodes[i ^ 1].peerId
      return peers.some(p => p.id === partner && p.status === 'alive')
    }, { t0, timeoutMs: 15_000, what: 'each node sees its swarm partner' })
    console.log(`[lan] private swarms formed in ${Math.round(performance.now() - t0)} ms`)
    // mDNS announces every node to every other; give the wrong-key dials several rounds.
    await new Promise(resolve => setTimeout(resolve, 3000))
    for (const i of [0, 1, 2, 3]) {
      const ids = (await c().peers(i)).map(p => p.id)
      assert.deepEqual(ids, [c().nodes[i ^ 1].peerId], `node ${i} sees only its partner`)
    }
    assert.deepEqual(await c().peers(4), [], 'the keyless node sees nothing')
    const open = await c().getJson<{ groups: unknown[] }>(4, '/api/groups')
    assert.equal((open.groups as Array<{ members: unknown[] }>)[0].members.length, 1, 'alone in its group')
  })
})
