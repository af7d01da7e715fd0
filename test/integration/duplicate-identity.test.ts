/**
 * A copied data dir (issue 11 item 5): two processes run as one peer id. Three real nodes on
 * loopback (A, B, and C started from a copy of A's data dir): B names A's id as duplicate in
 * `/api/peers/:id` and stops routing to it (its snapshot is dropped, not merged), A names its
 * own id in `/api/node`, both say so in their logs, and `shepherd-mesh doctor` names it while A
 * runs. Once the copy stops, the mark clears and A is served again.
 */
import assert from 'node:assert/strict'
import fs from 'node:fs/promises'
import path from 'node:path'
import { after, before, describe, it } from 'node:test'
import { getJson, runCli, startNode, stopNode, tempDir, waitFor, type NodeProcess } from '../support/cluster.js'
import { createTinyModel } from '../support/tiny-model.js'

const MODEL = 'tiny-chat'
const COMMON = ['--open', '--threads', '1', '--engine', 'none']

describe('a duplicate peer id (copied data dir)', () => {
  const nodes: NodeProcess[] = []
  let a: NodeProcess
  let b: NodeProcess
  let c: NodeProcess
  let dataC: string
  before(async () => {
    const dataA = await tempDir()
    const models = await tempDir()
    await createTinyModel(path.join(models, `${MODEL}.gguf`))
    // A first start creates A's identity; the copy is taken while A is stopped.
    const first = await startNode({ name: 'orig', dataDir: dataA, args: COMMON })
    await stopNode(first)
    dataC = await tempDir()
    await fs.cp(dataA, dataC, { recursive: true })

    a = await startNode({ name: 'orig', dataDir: dataA, args: [...COMMON, '--engine', 'embedded', '--models-dir', models] })
    b = await startNode({ name: 'other', args: [...COMMON, '--bootstrap', `/ip4/127.0.0.1/tcp/${a.p2pPort}`] })
    nodes.push(a, b)
    assert.equal(a.id, first.id)
    await waitFor('B routes to A\'s model', async () => (await getJson(`${b.api}/v1/models`)).data.some((m: any) => m.id === MODEL), 15_000)
  })
  after(async () => { for (const n of nodes) await stopNode(n, 'SIGKILL') })

  it('is detected by the third node and by the original, named in API, logs and doctor, and never routed to', async () => {
    c = await startNode({ name: 'copy', dataDir: dataC, args: [...COMMON, '--bootstrap', `/ip4/127.0.0.1/tcp/${b.p2pPort}`] })
    nodes.push(c)
    assert.equal(c.id, a.id, 'the copy runs as the same peer id')

    const seenByB = await waitFor('B marks A\'s id as duplicate', async () => (await getJson(`${b.api}/api/peers/${a.id}`)).duplicateIdentity, 20_000)
    assert.equal(seenByB.value.peer, a.id)
    assert.equal(seenByB.value.self, false)
    // B holds a connection to each process: they announce different listen addresses.
    assert.ok(seenByB.value.evidence.includes('connections'), JSON.stringify(seenByB.value))
    const listed = (await getJson(`${b.api}/api/peers`)).peers.find((p: any) => p.id === a.id)
    assert.ok(listed.duplicateIdentity != null)

    const seenByA = await waitFor('A marks its own id as duplicate', async () => (await getJson(`${a.api}/api/node`)).duplicateIdentity, 20_000)
    assert.equal(seenByA.value.self, true)
    assert.deepEqual(seenByA.value.reportedBy, [b.id], 'B told A (A never connects to its copy)')

    // Not routed to: B drops the ambiguous id's snapshot, so its model is gone from B's table.
    await waitFor('A\'s model no longer routed from B', async () => !(await getJson(`${b.api}/v1/models`)).data.some((m: any) => m.id === MODEL), 10_000)
    const chat = await fetch(`${b.api}/v1/chat/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ model: MODEL, messages: [{ role: 'user', content: 'hi' }], max_tokens: 2 }) })
    assert.equal(chat.status, 404, 'a clear refusal, not a request sent to whichever process answers')

    await waitFor('B logs it', () => b.stderr.join('').includes('two processes run with one peer id'), 5000)
    await waitFor('A logs it', () => a.stderr.join('').includes('another process runs with this node\'s peer id'), 5000)

    // doctor queries the running node's API (its store is locked by the node).
    const doc = await runCli(['doctor', '--data-dir', a.dataDir, '--api', a.api])
    assert.notEqual(doc.code, 0, doc.out + doc.err)
    assert.match(doc.out, /duplicate identity: this node's peer id/)
    const docB = await runCli(['doctor', '--data-dir', b.dataDir, '--api', b.api])
    assert.match(docB.out, new RegExp(`duplicate identity: peer orig \\(${a.id}\\)`))
  })

  it('clears once the copy stops, and A is routed to again', async () => {
    await stopNode(c, 'SIGKILL')
    await waitFor('the mark cleared on B', async () => (await getJson(`${b.api}/api/peers/${a.id}`)).duplicateIdentity == null, 60_000, 250)
    await waitFor('A routed to again', async () => (await getJson(`${b.api}/v1/models`)).data.some((m: any) => m.id === MODEL), 30_000, 250)
    const doc = await runCli(['doctor', '--data-dir', b.dataDir, '--api', b.api])
    assert.equal(doc.code, 0, doc.out + doc.err)
    assert.match(doc.out, /no duplicate peer ids/)
  })
})

