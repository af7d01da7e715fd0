/**
 * The HTTP client of the proxying engines against servers that misbehave the way real ones do
 * (issue 12): llama-server (cpp-httplib) advertises keep-alive and then closes a connection after
 * a streamed answer, so a request sent on that connection meets the close. Before the fix that
 * request failed as 503 `no_healthy_host` and a busy host looked unhealthy to the router.
 */
import assert from 'node:assert/strict'
import http from 'node:http'
import type { AddressInfo, Socket } from 'node:net'
import { after, describe, it } from 'node:test'
import { NoHealthyHostError, ShepherdError } from '../../../src/errors.js'
import { OpenAIHttpClient } from '../../../src/node/engines/openai-http.js'

interface Server { url: string, sockets: Set<Socket>, requests: number, close: () => Promise<void> }

/**
 * A server whose every connection answers its first request (keep-alive advertised) and closes,
 * without a word, as the next request arrives on it: the close a reused connection can meet.
 */
async function closingServer (answer: (req: http.IncomingMessage, res: http.ServerResponse) => void): Promise<Server> {
  const sockets = new Set<Socket>()
  const perSocket = new WeakMap<Socket, number>()
  const state: Server = { url: '', sockets, requests: 0, close: async () => {} }
  const server = http.createServer((req, res) => {
    const n = (perSocket.get(req.socket) ?? 0) + 1
    perSocket.set(req.socket, n)
    if (n > 1) { req.socket.destroy(); return }
    state.requests++
    let body = ''
    req.setEncoding('utf8').on('data', d => { body += d as string }).on('end', () => { answer(Object.assign(req, { body }), res) })
  })
  server.keepAliveTimeout = 60_000
  server.on('connection', s => { sockets.add(s); s.once('close', () => sockets.delete(s)) })
  await new Promise<void>(resolve => server.listen(0, '127.0.0.1', resolve))
  state.url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/v1`
  state.close = async () => {
    for (const s of sockets) s.destroy()
    await new Promise(resolve => server.close(resolve))
  }
  return state
}

const servers: Server[] = []
after(async () => { await Promise.all(servers.map(async s => { await s.close() })) })

function sse (res: http.ServerResponse, pieces: string[]): void {
  res.writeHead(200, { 'content-type': 'text/event-stream', connection: 'keep-alive', 'keep-alive': 'timeout=5, max=100' })
  for (const p of pieces) res.write(`data: ${JSON.stringify({ choices: [{ index: 0, delta: { content: p } }] })}\n\n`)
  res.end('data: [DONE]\n\n')
}

describe('OpenAIHttpClient over connections the server closes', () => {
  it('sends a request again on a new connection when its kept-alive one was closed under it', async () => {
    const s = await closingServer((_req, res) => { sse(res, ['a', 'b']) })
    servers.push(s)
    const client = new OpenAIHttpClient({ baseUrl: s.url, timeoutMs: 10_000 })
    for (let i = 0; i < 5; i++) {
      const got: string[] = []
      for await (const c of client.postStream<any>('/chat/completions', { model: 'm', stream: true }, { model: 'm' })) got.push(c.choices[0].delta.content)
      assert.deepEqual(got, ['a', 'b'], `request ${i}`)
    }
    // Every answer came from a connection's first request: the reused ones were retried.
    assert.equal(s.requests, 5)
  })

  it('retries JSON requests the same way, and answers many concurrent streams without a 503', async () => {
    const s = await closingServer((req, res) => {
      if (req.url?.endsWith('/stream') === true) { sse(res, ['x']); return }
      res.writeHead(200, { 'content-type': 'application/json' })
      res.end(JSON.stringify({ ok: true }))
    })
    servers.push(s)
    const client = new OpenAIHttpClient({ baseUrl: s.url, timeoutMs: 10_000 })
    for (let i = 0; i < 3; i++) assert.deepEqual(await client.postJson('/json', { i }), { ok: true })
    const results = await Promise.allSettled(Array.from({ length: 64 }, async () => {
      let n = 0
      for await (const _ of client.postStream('/stream', {}, { model: 'm' })) n++
      return n
    }))
    const failed = results.filter(r => r.status === 'rejected')
    assert.equal(failed.length, 0, String((failed[0] as PromiseRejectedResult | undefined)?.reason))
  })

  it('still says no_healthy_host when nobody listens, and does not retry a server that answered', async () => {
    const dead = new OpenAIHttpClient({ baseUrl: 'http://127.0.0.1:1/v1', timeoutMs: 5000 })
    await assert.rejects(dead.postJson('/x', {}, { model: 'm' }), NoHealthyHostError)
    let hits = 0
    const s = await closingServer((_req, res) => {
      hits++
      res.writeHead(500, { 'content-type': 'application/json' })
      res.end(JSON.stringify({ error: { message: 'boom', code: 500 } }))
    })
    servers.push(s)
    const client = new OpenAIHttpClient({ baseUrl: s.url, timeoutMs: 5000 })
    await assert.rejects(client.postJson('/x', {}), (err: unknown) => err instanceof ShepherdError && err.status === 500 && /boom/.test(err.message))
    assert.equal(hits, 1)
  })

  it('keeps a well-behaved server\'s connection for the next stream once [DONE] came', async () => {
    let connections = 0
    const server = http.createServer((_req, res) => { _req.resume(); sse(res, ['a']) })
    server.on('connection', () => { connections++ })
    await new Promise<void>(resolve => server.listen(0, '127.0.0.1', resolve))
    servers.push({ url: '', sockets: new Set(), requests: 0, close: async () => { server.closeAllConnections(); await new Promise(resolve => server.close(resolve)) } })
    const client = new OpenAIHttpClient({ baseUrl: `http://127.0.0.1:${(server.address() as AddressInfo).port}/v1`, timeoutMs: 5000 })
    for (let i = 0; i < 5; i++) {
      let n = 0
      for await (const _ of client.postStream('/chat/completions', {}, { model: 'm' })) n++
      assert.equal(n, 1)
      // The rest of the body (the chunked terminator) is read in the background.
      await new Promise(resolve => setTimeout(resolve, 20))
    }
    assert.equal(connections, 1)
  })

  it('reports a stream the server cut mid-answer as upstream_disconnected, not a clean end', async () => {
    const s = await closingServer((_req, res) => {
      res.writeHead(200, { 'content-type': 'text/event-stream' })
      res.write(`data: ${JSON.stringify({ choices: [{ index: 0, delta: { content: 'a' } }] })}\n\n`)
      setTimeout(() => { res.socket?.destroy() }, 20)
    })
    servers.push(s)
    const client = new OpenAIHttpClient({ baseUrl: s.url, timeoutMs: 5000 })
    const got: string[] = []
    await assert.rejects((async () => {
      for await (const c of client.postStream<any>('/chat/completions', {}, { model: 'm' })) got.push(c.choices[0].delta.content)
    })(), (err: unknown) => err instanceof ShepherdError && err.code === 'upstream_disconnected')
    assert.deepEqual(got, ['a'])
  })
})
