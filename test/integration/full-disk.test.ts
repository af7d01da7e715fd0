/**
 * A full disk (issue 11 item 5), on a real 8 MiB tmpfs holding the node's data dir: a write the
 * disk refuses answers 507 `insufficient_storage` in the OpenAI error shape, changes nothing in
 * memory, kills nothing (no unhandled rejection), the node keeps serving chat, `/v1/models` and
 * `/healthz`, and once space is freed the same write succeeds. Needs root (mount).
 */
import assert from 'node:assert/strict'
import { execFile } from 'node:child_process'
import fs from 'node:fs/promises'
import path from 'node:path'
import { after, before, describe, it } from 'node:test'
import { promisify } from 'node:util'
import { getJson, startNode, stopNode, tempDir, waitFor, type NodeProcess } from '../support/cluster.js'
import { createTinyModel } from '../support/tiny-model.js'

const run = promisify(execFile)
const MODEL = 'tiny-chat'

async function send (url: string, body: unknown, method = 'POST'): Promise<{ status: number, body: any }> {
  const res = await fetch(url, { method, headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) })
  return { status: res.status, body: await res.json() }
}

/** Writes zeros into `file` until the file system refuses: the disk is then full. */
async function fill (file: string): Promise<void> {
  const fh = await fs.open(file, 'w')
  const chunk = Buffer.alloc(64 * 1024)
  try {
    for (;;) await fh.write(chunk)
  } catch (err) {
    assert.equal((err as NodeJS.ErrnoException).code, 'ENOSPC')
  } finally {
    await fh.close()
  }
  // The last partial chunk, byte-sized writes: nothing left at all.
  const small = await fs.open(file, 'a')
  try { for (;;) await small.write(Buffer.alloc(512)) } catch {} finally { await small.close() }
}

/** Labels that make a deployment record bigger than a page: it can never fit in the log's slack. */
const bigLabels = Object.fromEntries(Array.from({ length: 32 }, (_, i) => [`label${i}`, 'x'.repeat(128)]))

describe('a full disk under a running node', () => {
  let mnt: string
  let n: NodeProcess
  before(async () => {
    mnt = await tempDir('shepherd-tmpfs-')
    await run('mount', ['-t', 'tmpfs', '-o', 'size=8m', 'tmpfs', mnt])
    const models = await tempDir()
    await createTinyModel(path.join(models, `${MODEL}.gguf`))
    n = await startNode({ name: 'full', dataDir: path.join(mnt, 'data'), args: ['--models-dir', models, '--threads', '1'] })
    await waitFor('the model listed', async () => (await getJson(`${n.api}/v1/models`)).data.some((m: any) => m.id === MODEL), 10_000)
  })
  after(async () => {
    if (n != null) await stopNode(n, 'SIGKILL')
    await run('umount', [mnt]).catch(() => {})
    await fs.rm(mnt, { recursive: true, force: true })
  })

  it('answers 507 and changes nothing, keeps serving, and writes again once space is freed', async () => {
    const first = await send(`${n.api}/api/deployments`, { model: MODEL, replicas: 1 })
    assert.equal(first.status, 201, JSON.stringify(first.body))

    const filler = path.join(mnt, 'filler')
    await fill(filler)
    const refused = await send(`${n.api}/api/deployments`, { model: MODEL, replicas: 2, constraints: { labels: bigLabels } })
    assert.equal(refused.status, 507, JSON.stringify(refused.body))
    assert.equal(refused.body.error.code, 'insufficient_storage')
    assert.equal(refused.body.error.type, 'server_error')
    assert.equal(typeof refused.body.error.message, 'string')

    const listed = await getJson(`${n.api}/api/deployments`)
    assert.equal(listed.deployments.length, 1)
    assert.equal(listed.deployments[0].replicas, 1, 'memory holds the old state')
    assert.equal(listed.deployments[0].constraints, undefined)

    // Still serving.
    assert.equal((await fetch(`${n.api}/healthz`)).status, 200)
    assert.ok((await getJson(`${n.api}/v1/models`)).data.some((m: any) => m.id === MODEL))
    const chat = await send(`${n.api}/v1/chat/completions`, { model: MODEL, messages: [{ role: 'user', content: 'hi' }], max_tokens: 4, temperature: 0 })
    assert.equal(chat.status, 200, JSON.stringify(chat.body))
    assert.equal(n.child.exitCode, null, 'the node is alive')
    assert.equal(n.child.signalCode, null)
    assert.doesNotMatch(n.stderr.join(''), /unhandled|UnhandledPromiseRejection/i)

    await fs.rm(filler)
    const again = await send(`${n.api}/api/deployments`, { model: MODEL, replicas: 2, constraints: { labels: bigLabels } })
    assert.equal(again.status, 201, JSON.stringify(again.body))
    assert.equal((await getJson(`${n.api}/api/deployments`)).deployments[0].replicas, 2)
    assert.equal(n.child.exitCode, null)
  })
})
