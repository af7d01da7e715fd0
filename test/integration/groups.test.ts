/** Groups and leader election with real node processes on loopback. */
import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { getJson, startNode, stopNode, waitFor, type NodeProcess } from '../support/cluster.js'

/** Mutating API calls carry JSON (the API refuses simple cross-site requests). */
const JSON_BODY = { headers: { 'content-type': 'application/json' }, body: '{}' }

async function leaders (nodes: NodeProcess[], group: string): Promise<Array<{ leader: string | null, term: number }>> {
  return await Promise.all(nodes.map(async n => {
    const g = await getJson(`${n.api}/api/groups/${group}`).catch(() => ({ leader: null, term: -1 }))
    return { leader: g.leader, term: g.term }
  }))
}

describe('groups and leader election', () => {
  const all: NodeProcess[] = []
  let nodes: NodeProcess[] = []

  before(async () => {
    const first = await startNode({ name: 'g-1', args: ['--group', 'default', '--group', 'gpu'] })
    const boot = ['--bootstrap', `/ip4/127.0.0.1/tcp/${first.p2pPort}`]
    const rest = await Promise.all([startNode({ name: 'g-2', args: [...boot, '--group', 'default', '--group', 'gpu'] }), startNode({ name: 'g-3', args: [...boot] })])
    nodes = [first, ...rest]
    all.push(...nodes)
  })
  after(async () => { await Promise.all(all.map(async n => await stopNode(n, 'SIGKILL'))) })

  it('elects exactly one leader per group on start, agreed by every member', async () => {
    const { ms } = await waitFor('one agreed leader of default', async () => {
      const views = await leaders(nodes, 'default')
      return views[0].leader != null && views.every(v => v.leader === views[0].leader && v.term === views[0].term)
    }, 8000)
    console.log(`# default group: leader agreed ${ms.toFixed(0)} ms after the nodes were up`)
    const gpu = await waitFor('gpu leader', async () => {
      const views = await leaders(nodes.slice(0, 2), 'gpu')
      return views[0].leader != null && views[0].leader === views[1].leader ? views[0].leader : null
    }, 8000)
    assert.ok([nodes[0].id, nodes[1].id].includes(gpu.value), 'the gpu leader is a gpu member')
    const g = await getJson(`${nodes[2].api}/api/groups/gpu`)
    assert.equal(g.joined, false)
    assert.equal(g.members.length, 2)
    const list = await getJson(`${nodes[0].api}/api/groups`)
    assert.deepEqual(list.groups.map((x: any) => x.name), ['default', 'gpu'])
  })

  it('joins and leaves groups through the API', async () => {
    const n3 = nodes[2]
    const joined = await (await fetch(`${n3.api}/api/groups/gpu/join`, { method: 'POST', ...JSON_BODY })).json() as any
    assert.equal(joined.joined, true)
    await waitFor('others see g-3 in gpu', async () => (await getJson(`${nodes[0].api}/api/groups/gpu`)).members.some((m: any) => m.id === n3.id), 3000)
    await fetch(`${n3.api}/api/groups/gpu/leave`, { method: 'POST', ...JSON_BODY })
    await waitFor('others see g-3 gone from gpu', async () => !(await getJson(`${nodes[0].api}/api/groups/gpu`)).members.some((m: any) => m.id === n3.id), 3000)
    const bad = await fetch(`${n3.api}/api/groups/${encodeURIComponent('no/such')}/join`, { method: 'POST', ...JSON_BODY })
    assert.equal(bad.status, 400)
    assert.equal((await bad.json() as any).error.param, 'name')
  })

  it('replaces a leader killed with kill -9 within 3 s, with a higher term', async () => {
    const before = (await leaders(nodes, 'default'))[0]
    const victim = nodes.find(n => n.id === before.leader)!
    const survivors = nodes.filter(n => n !== victim)
    const killedAt = performance.now()
    victim.child.kill('SIGKILL')
    await waitFor('a new leader agreed by the survivors', async () => {
      const views = await leaders(survivors, 'default')
      return views.every(v => v.leader != null && v.leader !== victim.id && v.leader === views[0].leader && v.term > before.term)
    }, 3000)
    console.log(`# leader failover: ${(performance.now() - killedAt).toFixed(0)} ms`)

    // The old leader comes back: it follows (terms survive restarts, the live leader is kept).
    const back = await startNode({ name: victim.name, dataDir: victim.dataDir, args: ['--bootstrap', `/ip4/127.0.0.1/tcp/${survivors[0].p2pPort}`] })
    all.push(back)
    const now = (await leaders(survivors, 'default'))[0]
    await waitFor('the restarted node follows the current leader', async () => {
      const [v] = await leaders([back], 'default')
      return v.leader === now.leader && v.term === now.term
    }, 4000)
    nodes = [...survivors, back]
  })
})
