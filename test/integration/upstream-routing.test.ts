/**
 * Routing to an upstream engine across the mesh. The upstream is a stand-in for a third-party
 * OpenAI-compatible server a user runs beside us (Ollama, vLLM...): test/support/upstream-standin.ts.
 */
import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { UpstreamStandin } from '../support/upstream-standin.js'
import { assertMatchesOpenAISchema } from '../support/openai-schema.js'
import { getJson, startNode, stopNode, waitFor, type NodeProcess } from '../support/cluster.js'

describe('upstream engine behind a peer', () => {
  let upstream: UpstreamStandin
  let privateUpstream: UpstreamStandin
  const all: NodeProcess[] = []
  let a: NodeProcess, b: NodeProcess

  before(async () => {
    upstream = await UpstreamStandin.start({ models: ['remote-llm'], chunkDelayMs: 20 })
    privateUpstream = await UpstreamStandin.start({ models: ['private-llm'] })
    a = await startNode({ name: 'u-a', args: ['--engine', 'none', '--request-timeout-ms', '1500'] })
    const boot = ['--bootstrap', `/ip4/127.0.0.1/tcp/${a.p2pPort}`]
    b = await startNode({ name: 'u-b', args: [...boot, '--engine', 'none', '--upstream', upstream.url] })
    const c = await startNode({ name: 'u-c', args: [...boot, '--engine', 'none', '--upstream', privateUpstream.url, '--no-allow-remote'] })
    all.push(a, b, c)
    await waitFor('A sees the upstream model', async () => (await getJson(`${a.api}/v1/models`)).data.some((m: any) => m.id === 'remote-llm'), 10_000)
    await waitFor('C is alive on A', async () => (await getJson(`${a.api}/api/peers`)).peers.some((p: any) => p.id === c.id && p.resources != null), 10_000)
  })
  after(async () => {
    await Promise.all(all.map(async n => await stopNode(n, 'SIGKILL')))
    await upstream.close()
    await privateUpstream.close()
  })

  it('relays a chat through B to its upstream, streaming included', async () => {
    const res = await fetch(`${a.api}/v1/chat/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ model: 'remote-llm', messages: [{ role: 'user', content: 'one two three' }] }) })
    assert.equal(res.status, 200)
    assert.equal(res.headers.get('x-shepherd-host'), b.id)
    assertMatchesOpenAISchema('CreateChatCompletionResponse', await res.json())
    const stream = await fetch(`${a.api}/v1/chat/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ model: 'remote-llm', stream: true, messages: [{ role: 'user', content: 'one two three four' }] }) })
    const text = await stream.text()
    assert.ok(text.endsWith('data: [DONE]\n\n'))
    assert.ok(text.split('\n\n').length > 4)
  })

  it('passes audio through untouched', async () => {
    const res = await fetch(`${a.api}/v1/audio/speech`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ model: 'remote-llm', input: 'hello', voice: 'alloy' }) })
    assert.equal(res.status, 200)
    const bytes = Buffer.from(await res.arrayBuffer())
    assert.ok(bytes.length > 0)
    assert.equal(upstream.count('/v1/audio/speech'), 1)
    const form = new FormData()
    form.append('model', 'remote-llm')
    form.append('file', new Blob([Buffer.from('RIFF....WAVEfmt ')]), 'a.wav')
    const tr = await fetch(`${a.api}/v1/audio/transcriptions`, { method: 'POST', body: form })
    assert.equal(tr.status, 200, await tr.clone().text())
    assert.equal(upstream.count('/v1/audio/transcriptions'), 1)
  })

  it('a client that goes away stops the request on the host (the upstream sees it closed)', async () => {
    upstream.chunkDelayMs = 200
    const before = upstream.closedEarly
    const ac = new AbortController()
    const res = await fetch(`${a.api}/v1/chat/completions`, { method: 'POST', signal: ac.signal, headers: { 'content-type': 'application/json' }, body: JSON.stringify({ model: 'remote-llm', stream: true, messages: [{ role: 'user', content: Array.from({ length: 50 }, (_, i) => `w${i}`).join(' ') }] }) })
    const reader = res.body!.getReader()
    await reader.read()
    ac.abort()
    const { ms } = await waitFor('the upstream request closed early', () => upstream.closedEarly > before, 3000)
    console.log(`# client abort reached the upstream behind B in ${ms.toFixed(0)} ms`)
    upstream.chunkDelayMs = 20
  })

  it('times out with 504, and answers 503 when the only host fails', async () => {
    upstream.failNext({ kind: 'hang' }, 1, '/v1/chat/completions')
    const slow = await fetch(`${a.api}/v1/chat/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ model: 'remote-llm', messages: [{ role: 'user', content: 'x' }] }) })
    assert.equal(slow.status, 504)
    assert.equal((await slow.json() as any).error.code, 'timeout')
    upstream.failNext({ kind: 'status', status: 503 }, 2, '/v1/chat/completions')
    const down = await fetch(`${a.api}/v1/chat/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ model: 'remote-llm', messages: [{ role: 'user', content: 'x' }] }) })
    assert.equal(down.status, 503)
    assertMatchesOpenAISchema('ErrorResponse', await down.json())
  })

  it('a node with allowRemote off serves its own clients only', async () => {
    const list = await getJson(`${a.api}/v1/models`)
    assert.ok(!list.data.some((m: any) => m.id === 'private-llm'), 'not offered to the mesh')
    const res = await fetch(`${a.api}/v1/chat/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ model: 'private-llm', messages: [{ role: 'user', content: 'x' }] }) })
    assert.equal(res.status, 404)
    const c = all[2]
    const local = await fetch(`${c.api}/v1/chat/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ model: 'private-llm', messages: [{ role: 'user', content: 'x' }] }) })
    assert.equal(local.status, 200)
  })
})
