/**
 * Issue 15 items 2 and 4 on a real 3-node mesh (CLI processes on loopback, swarm-key members):
 * `command`, `logs` and `deploy --wait` work from a node that is not the group's leader (it signs
 * as a member operator, which the targets check against their own membership); two nodes named
 * alike are warned about at start and a command by that name is refused with both ids; the
 * deployment's progress (transfer, loading, placed) shows in `/api/deployments`, in SSE
 * `deployment:progress` events and in `shepherd-mesh deployments`.
 */
import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import path from 'node:path'
import { createTinyModel } from '../support/tiny-model.js'
import { getJson, runCli, startNode, stopNode, tempDir, waitFor, type NodeProcess } from '../support/cluster.js'

const MODEL = 'tiny-op'

/** Collects `deployment:progress` events of a node's SSE stream until `stop()`. */
function progressEvents (api: string): { events: any[], stop: () => void } {
  const events: any[] = []
  const ac = new AbortController()
  void (async () => {
    const res = await fetch(`${api}/api/events`, { signal: ac.signal })
    let buf = ''
    for await (const chunk of res.body as any) {
      buf += Buffer.from(chunk).toString('utf8')
      let i
      while ((i = buf.indexOf('\n\n')) >= 0) {
        const block = buf.slice(0, i)
        buf = buf.slice(i + 2)
        if (block.startsWith('event: deployment:progress\n')) events.push(JSON.parse(block.split('\n')[1].slice('data: '.length)))
      }
    }
  })().catch(() => {})
  return { events, stop: () => { ac.abort() } }
}

describe('operator commands from any member', () => {
  let nodes: NodeProcess[] = []
  let leader: NodeProcess
  let follower: NodeProcess
  let other: NodeProcess

  before(async () => {
    const dirs = await Promise.all([0, 1, 2].map(async () => await tempDir('shepherd-op-models-')))
    await createTinyModel(path.join(dirs[0], `${MODEL}.gguf`))
    const common = ['--threads', '1']
    const a = await startNode({ name: 'op-a', timeoutMs: 90_000, args: [...common, '--models-dir', dirs[0]] })
    const boot = ['--bootstrap', `/ip4/127.0.0.1/tcp/${a.p2pPort}`]
    // Two machines with one name, as every Raspberry Pi is "raspberrypi".
    const rest = await Promise.all([1, 2].map(async i => await startNode({ name: 'rig', timeoutMs: 90_000, args: [...common, ...boot, '--models-dir', dirs[i]] })))
    nodes = [a, ...rest]
    const { value } = await waitFor('one leader for default, seen by all', async () => {
      const views = await Promise.all(nodes.map(async n => await getJson(`${n.api}/api/groups/default`)))
      return views.every(v => v.leader != null && v.leader === views[0].leader && v.members.length === 3) ? views[0].leader as string : null
    }, 30_000)
    leader = nodes.find(n => n.id === value)!
    const followers = nodes.filter(n => n !== leader)
    follower = followers[0]
    other = followers[1]
  })
  after(async () => { await Promise.all(nodes.map(async n => await stopNode(n, 'SIGKILL'))) })

  const env = (n: NodeProcess): NodeJS.ProcessEnv => ({ SHEPHERD_API: n.api, SHEPHERD_API_KEY: '' })

  it('warns at start about two nodes named alike, and refuses a command by that name with both ids', async () => {
    const rigs = nodes.filter(n => n.name === 'rig')
    await waitFor('a duplicate-name warning', () => rigs.some(n => n.stderr.join('').includes("shepherd-mesh: warning: 2 nodes are named 'rig'")), 15_000)
    const r = await runCli(['command', 'rig', 'scan_models'], env(nodes[0]))
    assert.equal(r.code, 1)
    assert.match(r.err, /'rig' names 2 peers: /)
    for (const n of rigs) assert.ok(r.err.includes(n.id), `the error lists ${n.id}`)
    const groups = await runCli(['groups'], env(follower))
    assert.match(groups.out, new RegExp(`default\\s+${leader.name} \\(…${leader.id.slice(-8)}\\)`))
  })

  it('command and logs from a node that is not the leader, to the leader and to another member', async () => {
    for (const target of [leader, other]) {
      const c = await runCli(['command', target.id, 'scan_models'], env(follower))
      assert.equal(c.code, 0, c.err)
      assert.match(c.out, /"models":/)
      const logs = await runCli(['logs', target.id.slice(-10), '--lines', '20'], env(follower))
      assert.equal(logs.code, 0, logs.err)
      assert.match(logs.out, /"component":/)
      const audit = (await getJson(`${target.api}/api/commands?limit=50`)).commands as any[]
      assert.ok(audit.some(e => e.issuer === follower.id && e.type === 'scan_models' && e.verdict === 'accepted'), 'the target audited the follower as the issuer')
    }
    const json = JSON.parse((await runCli(['command', other.id, 'scan_models', '--json'], env(follower))).out)
    assert.equal(json.issuedAs, 'member')
  })

  it('deploy --wait from a non-leader waits until placed; progress in the API, SSE and `deployments`', async () => {
    const sse = progressEvents(follower.api)
    try {
      const d = await runCli(['deploy', MODEL, '--replicas', '3', '--wait', '--timeout', '2m'], env(follower))
      assert.equal(d.code, 0, d.err)
      assert.match(d.out, new RegExp(`^placed ${MODEL}: 3/3 replica\\(s\\) on `, 'm'))
      // The progress line went to stderr and ended placed.
      assert.match(d.err, new RegExp(`${MODEL}: placed 3/3`))
      const { deployments } = await getJson(`${follower.api}/api/deployments`)
      const dep = deployments.find((x: any) => x.model === MODEL)
      assert.equal(dep.progress.phase, 'placed')
      assert.equal(dep.progress.placed, 3)
      assert.deepEqual(dep.progress.replicas.map((r: any) => r.phase), ['loaded', 'loaded', 'loaded'])
      // Two nodes lacked the file: each pulled it, and the follower heard each one finish.
      await waitFor('progress events from the two nodes that pulled', () => {
        const pulled = new Set(sse.events.filter(e => e.model === MODEL && e.nodeId !== nodes[0].id && e.phase === 'loaded').map(e => e.nodeId))
        return pulled.size === 2
      }, 10_000)
      const local = sse.events.filter(e => e.nodeId === follower.id && e.model === MODEL).map(e => e.phase)
      assert.ok(local.includes('transferring') && local.includes('loading') && local.at(-1) === 'loaded', `the follower's own pull: ${local.join(', ')}`)
      const done = sse.events.find(e => e.nodeId === follower.id && e.phase === 'loaded')
      assert.equal(done.group, 'default')
      assert.equal(done.percent, 100)
      assert.ok(typeof done.totalBytes === 'number' && done.totalBytes > 0)
      const list = await runCli(['deployments'], env(other))
      assert.equal(list.code, 0, list.err)
      assert.match(list.out, new RegExp(`^${MODEL}\\s+default\\s+3/3\\s+placed\\s+-\\s+…${leader.id.slice(-8)}$`, 'm'))
    } finally {
      sse.stop()
    }
  })
})
