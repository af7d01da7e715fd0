/**
 * A busy host queues; it is not reported unhealthy (issue 12). Real nodes, real HTTP, a real
 * llama-server child: an entry node without the model relays 16 concurrent streaming chats (twice
 * the host's 8 slots) to a host on the llama-server engine, and also sends them to the host's own
 * API. Every answer must complete: before the fix, the host's engine reused a kept-alive
 * connection that llama-server had closed after a streamed answer, the request failed as 503
 * `no_healthy_host` (about 1 in 10 at 16 clients), and the entry's breaker counted the host down.
 */
import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { execFile } from 'node:child_process'
import http from 'node:http'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { promisify } from 'node:util'
import { createTinyModel } from '../support/tiny-model.js'
import { NO_BYTE_TOKENS } from '../support/tool-fixtures.js'
import { getJson, startNode, stopNode, tempDir, waitFor, type NodeProcess } from '../support/cluster.js'

const MODEL = 'tiny-hop'
const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..')
const CLIENTS = 16
const PER_CLIENT = 12

/** One streamed chat on a connection of its own: status, and whether it ended with [DONE] and no error event. */
async function streamedChat (url: string, seed: number): Promise<{ status: number, complete: boolean, pieces: number, text: string }> {
  const body = Buffer.from(JSON.stringify({
    model: MODEL,
    messages: [{ role: 'user', content: 'Tell me a story about the sea.' }],
    max_tokens: 24,
    temperature: 0.8,
    seed,
    // The tiny vocabulary's end of turn banned: every answer has its 24 tokens.
    logit_bias: { ...NO_BYTE_TOKENS, 260: -100 },
    stream: true
  }))
  const res = await new Promise<http.IncomingMessage>((resolve, reject) => {
    const req = http.request(url, { method: 'POST', agent: false, headers: { 'content-type': 'application/json', 'content-length': body.byteLength } }, resolve)
    req.once('error', reject)
    req.end(body)
  })
  let text = ''
  res.setEncoding('utf8')
  for await (const piece of res) text += piece as string
  const events = text.split('\n\n').filter(e => e.startsWith('data: ')).map(e => e.slice(6))
  const complete = events.at(-1) === '[DONE]' && !events.some(e => e.startsWith('{"error"'))
  return { status: res.statusCode ?? 0, complete, pieces: events.filter(e => /"content":"[^"]/.test(e)).length, text: text.slice(0, 300) }
}

/** `CLIENTS` closed-loop clients, `PER_CLIENT` chats each; the failures as `status body`. */
async function load (url: string): Promise<{ ok: number, failures: string[] }> {
  let seed = 0
  let ok = 0
  const failures: string[] = []
  await Promise.all(Array.from({ length: CLIENTS }, async () => {
    for (let i = 0; i < PER_CLIENT; i++) {
      const r = await streamedChat(url, ++seed).catch((err: Error) => ({ status: -1, complete: false, pieces: 0, text: err.message }))
      if (r.status === 200 && r.complete && r.pieces > 0) ok++
      else failures.push(`${r.status} ${r.text}`)
    }
  }))
  return { ok, failures }
}

describe('a busy host queues instead of being reported unhealthy', () => {
  const nodes: NodeProcess[] = []

  before(async () => {
    const built = await promisify(execFile)('bash', [path.join(ROOT, 'scripts', 'build-llama-server.sh')], { cwd: ROOT, maxBuffer: 256 * 1024 * 1024 })
    const binaryDir = path.dirname(built.stdout.trim().split('\n').at(-1) ?? '')
    const dir = await tempDir('shepherd-hop-')
    await createTinyModel(path.join(dir, `${MODEL}.gguf`))
    const entry = await startNode({ name: 'hop-entry', timeoutMs: 60_000, args: ['--engine', 'none'] })
    nodes.push(entry)
    nodes.push(await startNode({
      name: 'hop-host',
      timeoutMs: 60_000,
      args: ['--engine', 'llama-server', '--llamacpp', binaryDir, '--threads', '1', '--parallel', '8', '--keep-alive-ms', '3600000', '--models-dir', dir, '--bootstrap', `/ip4/127.0.0.1/tcp/${entry.p2pPort}`]
    }))
    await waitFor('the entry to see the model', async () => {
      const { models } = await getJson<{ models: Array<{ name: string }> }>(`${entry.api}/api/models`)
      return models.some(m => m.name === MODEL)
    }, 30_000)
    // Loads the model on the host.
    const warm = await streamedChat(`${nodes[1].api}/v1/chat/completions`, 0)
    assert.equal(warm.status, 200, warm.text)
  })
  after(async () => { await Promise.all(nodes.map(async n => await stopNode(n, 'SIGKILL'))) })

  it(`answers ${CLIENTS} concurrent streams on the host's own API, twice its slots, all complete`, async () => {
    const { ok, failures } = await load(`${nodes[1].api}/v1/chat/completions`)
    assert.deepEqual(failures.slice(0, 3), [], `${failures.length} of ${CLIENTS * PER_CLIENT} failed`)
    assert.equal(ok, CLIENTS * PER_CLIENT)
  })

  it(`relays ${CLIENTS} concurrent streams through the entry, all complete, and the host's breaker stays closed`, async () => {
    const [entry, host] = nodes
    const { ok, failures } = await load(`${entry.api}/v1/chat/completions`)
    assert.deepEqual(failures.slice(0, 3), [], `${failures.length} of ${CLIENTS * PER_CLIENT} failed`)
    assert.equal(ok, CLIENTS * PER_CLIENT)
    const { breakers } = await getJson<{ breakers: Record<string, { failures: number, open: boolean }> }>(`${entry.api}/api/models`)
    assert.equal(breakers[host.id]?.failures ?? 0, 0, JSON.stringify(breakers))
  })
})
