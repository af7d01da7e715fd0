/**
 * Model ids keep the folders below the models dir (issue 13 item 6), end to end with real node
 * processes: a file at `<dir>/Org/Tiny-Chat.gguf` is the model `Org/Tiny-Chat` on every node, a
 * client may name it in any case when that is unambiguous, a deployment copies it into the same
 * folder on a node that lacked it, and the deployment is addressed by that id.
 */
import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import fs from 'node:fs/promises'
import path from 'node:path'
import { createTinyModel } from '../support/tiny-model.js'
import { getJson, startNode, stopNode, tempDir, waitFor, type NodeProcess } from '../support/cluster.js'

const MODEL = 'Org/Tiny-Chat'

async function send (url: string, body: unknown, method = 'POST'): Promise<{ status: number, body: any }> {
  const res = await fetch(url, { method, headers: { 'content-type': 'application/json' }, body: JSON.stringify(body ?? {}) })
  return { status: res.status, body: await res.json() }
}

describe('model ids with folders', () => {
  const nodes: NodeProcess[] = []
  const dirs: string[] = []

  before(async () => {
    for (let i = 0; i < 2; i++) dirs.push(await tempDir(`shepherd-ids-${i}-`))
    await fs.mkdir(path.join(dirs[0], 'Org'))
    await createTinyModel(path.join(dirs[0], 'Org', 'Tiny-Chat.gguf'))
    const common = ['--threads', '1', '--keep-alive-ms', '2000']
    const a = await startNode({ name: 'ids-a', timeoutMs: 90_000, args: [...common, '--models-dir', dirs[0]] })
    nodes.push(a)
    nodes.push(await startNode({ name: 'ids-b', timeoutMs: 90_000, args: [...common, '--bootstrap', `/ip4/127.0.0.1/tcp/${a.p2pPort}`, '--models-dir', dirs[1]] }))
    await waitFor('a leader for default', async () => {
      const views = await Promise.all(nodes.map(async n => await getJson(`${n.api}/api/groups/default`)))
      return views.every(v => v.leader != null && v.leader === views[0].leader && v.members.length === 2)
    }, 60_000)
  })
  after(async () => { await Promise.all(nodes.map(async n => await stopNode(n, 'SIGKILL'))) })

  it('lists the model under its folder on every node', async () => {
    for (const n of nodes) {
      await waitFor(`${n.name} lists ${MODEL}`, async () => {
        const { data } = await getJson(`${n.api}/v1/models`)
        return data.some((m: any) => m.id === MODEL)
      }, 60_000)
    }
  })

  it('serves a request naming the model in another case, through the node without the file', async () => {
    const res = await send(`${nodes[1].api}/v1/chat/completions`, { model: 'org/tiny-chat', messages: [{ role: 'user', content: 'hi' }], max_tokens: 2, temperature: 0 })
    assert.equal(res.status, 200, JSON.stringify(res.body))
    assert.equal(res.body.model, MODEL)
    const unknown = await send(`${nodes[1].api}/v1/chat/completions`, { model: 'Org/Other', messages: [{ role: 'user', content: 'hi' }], max_tokens: 2 })
    assert.equal(unknown.status, 404, JSON.stringify(unknown.body))
  })

  it('deploys it on both nodes: the copy lands in the same folder, byte-identical; undeploy by the same id', async () => {
    const created = await send(`${nodes[1].api}/api/deployments`, { model: MODEL, replicas: 2, group: 'default' })
    assert.equal(created.status, 201, JSON.stringify(created.body))
    await waitFor('2 replicas loaded', async () => {
      const { deployments } = await getJson(`${nodes[0].api}/api/deployments`)
      const d = deployments.find((x: any) => x.model === MODEL)
      return d?.status.actual.filter((r: any) => r.state === 'loaded').length === 2
    }, 120_000)
    const [orig, copy] = await Promise.all([fs.readFile(path.join(dirs[0], 'Org', 'Tiny-Chat.gguf')), fs.readFile(path.join(dirs[1], 'Org', 'Tiny-Chat.gguf'))])
    assert.ok(orig.equals(copy), 'byte-identical copy in the same folder')
    const gone = await send(`${nodes[0].api}/api/deployments/${MODEL}`, {}, 'DELETE')
    assert.equal(gone.status, 200, JSON.stringify(gone.body))
    const { deployments } = await getJson(`${nodes[0].api}/api/deployments`)
    assert.equal(deployments.some((d: any) => d.model === MODEL && d.deleted !== true), false)
  })
})
