/**
 * Deployments end to end: the group's leader places replicas with signed load_model commands,
 * the model file travels over /shepherd/blob to nodes that lack it, a lost replica is re-placed,
 * and the model is served through /v1 on every node all along.
 */
import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import fs from 'node:fs/promises'
import path from 'node:path'
import { createTinyModel } from '../support/tiny-model.js'
import { getJson, startNode, stopNode, tempDir, waitFor, type NodeProcess } from '../support/cluster.js'

const MODEL = 'tiny-chat'

async function post (url: string, body: unknown, method = 'POST'): Promise<{ status: number, body: any }> {
  // Every mutating call carries JSON, `{}` when there is nothing to say (the API refuses simple cross-site requests).
  const res = await fetch(url, { method, headers: { 'content-type': 'application/json' }, body: JSON.stringify(body ?? {}) })
  return { status: res.status, body: await res.json() }
}

async function chat (api: string): Promise<{ status: number, host: string | null, body: any }> {
  const res = await fetch(`${api}/v1/chat/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ model: MODEL, messages: [{ role: 'user', content: 'hi' }], max_tokens: 4, temperature: 0 })
  })
  return { status: res.status, host: res.headers.get('x-shepherd-host'), body: await res.json() }
}

describe('deployments placed by the group leader', () => {
  const all: NodeProcess[] = []
  let nodes: NodeProcess[] = []
  let a: NodeProcess
  const modelsDirs: string[] = []

  before(async () => {
    for (let i = 0; i < 3; i++) modelsDirs.push(await tempDir(`shepherd-deploy-models-${i}-`))
    await createTinyModel(path.join(modelsDirs[0], `${MODEL}.gguf`))
    const common = ['--threads', '1', '--keep-alive-ms', '2000']
    a = await startNode({ name: 'd-a', args: [...common, '--models-dir', modelsDirs[0]] })
    const boot = ['--bootstrap', `/ip4/127.0.0.1/tcp/${a.p2pPort}`]
    const rest = await Promise.all([1, 2].map(async i => await startNode({ name: `d-${'abc'[i]}`, args: [...common, ...boot, '--models-dir', modelsDirs[i]] })))
    nodes = [a, ...rest]
    all.push(...nodes)
    await waitFor('a leader for default', async () => {
      const views = await Promise.all(nodes.map(async n => await getJson(`${n.api}/api/groups/default`)))
      return views.every(v => v.leader != null && v.leader === views[0].leader && v.members.length === 3)
    }, 10_000)
  })
  after(async () => { await Promise.all(all.map(async n => await stopNode(n, 'SIGKILL'))) })

  it('refuses a deployment of a model no node has, and bad input', async () => {
    const unknown = await post(`${a.api}/api/deployments`, { model: 'ghost', replicas: 1 })
    assert.equal(unknown.status, 404)
    assert.equal(unknown.body.error.code, 'model_not_found')
    const bad = await post(`${a.api}/api/deployments`, { model: MODEL, replicas: 0 })
    assert.equal(bad.status, 400)
    assert.equal(bad.body.error.param, 'replicas')
  })

  it('places 2 replicas, pulling the file to a node that lacked it, and serves it from every node', async () => {
    const t0 = performance.now()
    // Created on a node that is not necessarily the leader: the deployment is gossiped.
    const created = await post(`${nodes[2].api}/api/deployments`, { model: MODEL, replicas: 2, group: 'default' })
    assert.equal(created.status, 201, JSON.stringify(created.body))
    const { value } = await waitFor('2 replicas loaded', async () => {
      const { deployments } = await getJson(`${a.api}/api/deployments`)
      const d = deployments.find((x: any) => x.model === MODEL)
      return d?.status.actual.filter((r: any) => r.state === 'loaded').length === 2 ? d : null
    }, 20_000)
    console.log(`# 2 replicas loaded ${(performance.now() - t0).toFixed(0)} ms after the deployment`)
    const holders: string[] = value.status.actual.map((r: any) => r.nodeId)
    const pulled = nodes.filter(n => n !== a && holders.includes(n.id))
    assert.ok(pulled.length >= 1, 'at least one replica is on a node that had no file')
    for (const n of pulled) {
      const i = nodes.indexOf(n)
      const files = await fs.readdir(modelsDirs[i])
      assert.ok(files.includes(`${MODEL}.gguf`), `the file travelled to ${n.name}`)
      const [orig, copy] = await Promise.all([fs.readFile(path.join(modelsDirs[0], `${MODEL}.gguf`)), fs.readFile(path.join(modelsDirs[i], `${MODEL}.gguf`))])
      assert.ok(orig.equals(copy), 'byte-identical copy')
    }
    for (const n of nodes) {
      const res = await chat(n.api)
      assert.equal(res.status, 200, `${n.name}: ${JSON.stringify(res.body)}`)
      assert.equal(res.body.object, 'chat.completion')
    }
    // Replicas are pinned: they outlive the 2 s keep-alive.
    await new Promise(resolve => setTimeout(resolve, 3000))
    const { deployments } = await getJson(`${a.api}/api/deployments`)
    assert.equal(deployments[0].status.actual.filter((r: any) => r.state === 'loaded').length, 2)
  })

  it('re-places a replica lost with a killed node, and requests keep succeeding', async () => {
    const { deployments } = await getJson(`${a.api}/api/deployments`)
    const holders: string[] = deployments[0].status.actual.map((r: any) => r.nodeId)
    const victim = nodes.find(n => n !== a && holders.includes(n.id))!
    const survivors = nodes.filter(n => n !== victim)
    const killedAt = performance.now()
    victim.child.kill('SIGKILL')
    const failures: number[] = []
    const load = (async () => {
      while (performance.now() - killedAt < 6000) {
        const r = await chat(survivors[0].api)
        if (r.status !== 200) failures.push(r.status)
      }
    })()
    await waitFor('2 replicas again, without the victim', async () => {
      const { deployments } = await getJson(`${survivors[0].api}/api/deployments`)
      const actual = deployments[0].status.actual.filter((r: any) => r.state === 'loaded')
      return actual.length === 2 && !actual.some((r: any) => r.nodeId === victim.id)
    }, 10_000)
    console.log(`# replica re-placed ${(performance.now() - killedAt).toFixed(0)} ms after kill -9`)
    await load
    assert.deepEqual(failures, [], 'no request failed during the re-placement')
    nodes = survivors
  })

  it('runs operator commands on self and, from a non-leader member, on a peer (issue 15), and audits both', async () => {
    const group = await getJson(`${a.api}/api/groups/default`)
    const follower = nodes.find(n => n.id !== group.leader)!
    const other = nodes.find(n => n !== follower)!
    const self = await post(`${follower.api}/api/commands`, { target: 'self', type: 'scan_models' })
    assert.equal(self.status, 200)
    assert.equal(self.body.status, 'ok')
    // A member signs as an operator (term 0): the peer checks its membership, not a leadership claim.
    const remote = await post(`${follower.api}/api/commands`, { target: other.id, type: 'scan_models' })
    assert.equal(remote.body.status, 'ok', JSON.stringify(remote.body))
    assert.equal(remote.body.issuedAs, 'member')
    const audit = await getJson(`${other.api}/api/commands`)
    assert.ok(audit.commands.some((e: any) => e.verdict === 'accepted' && e.issuer === follower.id && e.term === 0), JSON.stringify(audit.commands.slice(0, 3)))
    // The node is still serving.
    assert.equal((await chat(other.api)).status, 200)
  })

  it('undeploys: replicas are unloaded', async () => {
    const del = await post(`${a.api}/api/deployments/${MODEL}`, undefined, 'DELETE')
    assert.equal(del.status, 200)
    assert.equal(del.body.deleted, true)
    await waitFor('no replica loaded', async () => {
      const models = await getJson(`${a.api}/api/models`)
      return models.models.find((m: any) => m.name === MODEL)?.hosts.every((h: any) => h.state === 'on_disk')
    }, 10_000)
    assert.deepEqual((await getJson(`${a.api}/api/deployments`)).deployments, [])
  })
})
