/**
 * OpenAI API through the mesh, end to end: real node processes on loopback, the tiny GGUF model
 * served by node-llama-cpp on B and C, requests made to A with the official `openai` client.
 */
import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import path from 'node:path'
import OpenAI from 'openai'
import { createTinyModel } from '../support/tiny-model.js'
import { assertMatchesOpenAISchema } from '../support/openai-schema.js'
import { getJson, startNode, stopNode, tempDir, waitFor, type NodeProcess } from '../support/cluster.js'

const MODEL = 'tiny-chat'

describe('OpenAI API routed across the mesh', () => {
  const nodes: NodeProcess[] = []
  let a: NodeProcess, b: NodeProcess, c: NodeProcess
  let client: OpenAI

  before(async () => {
    const dirB = await tempDir('shepherd-models-b-')
    const dirC = await tempDir('shepherd-models-c-')
    await createTinyModel(path.join(dirB, `${MODEL}.gguf`))
    await createTinyModel(path.join(dirC, `${MODEL}.gguf`))
    a = await startNode({ name: 'entry-a' })
    const common = ['--bootstrap', `/ip4/127.0.0.1/tcp/${a.p2pPort}`, '--threads', '1', '--keep-alive-ms', '4000']
    b = await startNode({ name: 'host-b', args: [...common, '--models-dir', dirB] })
    nodes.push(a, b)
    client = new OpenAI({ baseURL: `${a.api}/v1`, apiKey: 'unused', maxRetries: 0 })
    await waitFor('A to see B\'s model', async () => {
      const { data } = await getJson(`${a.api}/v1/models`)
      return data.some((m: any) => m.id === MODEL)
    }, 10_000)
    c = await startNode({ name: 'host-c', args: [...common, '--models-dir', dirC] })
    nodes.push(c)
    await waitFor('A to see two replicas', async () => {
      const { models } = await getJson(`${a.api}/api/models`)
      return models.find((m: any) => m.name === MODEL)?.hosts.length === 2
    }, 10_000)
  })

  after(async () => { await Promise.all(nodes.map(async n => await stopNode(n, 'SIGKILL'))) })

  it('lists the mesh\'s models in /v1/models, in OpenAI\'s shape', async () => {
    const list = await client.models.list()
    const ids = list.data.map(m => m.id)
    assert.deepEqual(ids, [MODEL])
    const raw = await getJson(`${a.api}/v1/models`)
    assertMatchesOpenAISchema('ListModelsResponse', raw)
    assert.equal(raw.data[0].state, 'on_disk')
    const one = await client.models.retrieve(MODEL)
    assertMatchesOpenAISchema('Model', one)
    await assert.rejects(client.models.retrieve('no-such-model'), (err: any) => err.status === 404 && err.code === 'model_not_found')
  })

  it('answers a chat completion from another node, loading the model on demand', async () => {
    const body = { model: MODEL, messages: [{ role: 'user' as const, content: 'Hello there' }], temperature: 0, max_tokens: 16, seed: 7 }
    const t0 = performance.now()
    const first = await client.chat.completions.create(body)
    console.log(`# first request (with on-demand load) ${(performance.now() - t0).toFixed(0)} ms`)
    assertMatchesOpenAISchema('CreateChatCompletionResponse', first)
    assert.equal(first.object, 'chat.completion')
    assert.equal(first.model, MODEL)
    assert.ok(first.usage != null && first.usage.completion_tokens > 0)
    assert.ok(['stop', 'length'].includes(first.choices[0].finish_reason))
    const second = await client.chat.completions.create(body)
    assert.equal(second.choices[0].message.content, first.choices[0].message.content, 'deterministic at temperature 0')
    // The load shows up in the gossiped snapshot.
    await waitFor('model loaded in /v1/models', async () => (await getJson(`${a.api}/v1/models`)).data[0].state === 'loaded', 3000)
  })

  it('streams chat chunks through the relay, ending with [DONE], with usage when asked', async () => {
    const body = { model: MODEL, messages: [{ role: 'user' as const, content: 'Tell me a story' }], temperature: 0, max_tokens: 24, seed: 3 }
    const whole = await client.chat.completions.create(body)
    const stream = await client.chat.completions.create({ ...body, stream: true, stream_options: { include_usage: true } })
    let text = ''
    let chunks = 0
    let usage: any
    let finish: string | null = null
    for await (const chunk of stream) {
      assertMatchesOpenAISchema('CreateChatCompletionStreamResponse', chunk)
      chunks++
      if (chunk.usage != null) usage = chunk.usage
      for (const ch of chunk.choices) {
        text += ch.delta.content ?? ''
        finish = ch.finish_reason ?? finish
      }
    }
    assert.ok(chunks > 2)
    assert.equal(text, whole.choices[0].message.content)
    assert.equal(finish, whole.choices[0].finish_reason)
    assert.equal(usage.completion_tokens, whole.usage!.completion_tokens)
    const raw = await fetch(`${a.api}/v1/chat/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ ...body, stream: true }) })
    assert.equal(raw.headers.get('content-type'), 'text/event-stream')
    const sse = await raw.text()
    assert.match(sse, /^data: \{/)
    assert.ok(sse.endsWith('data: [DONE]\n\n'))
  })

  it('serves text completions and embeddings', async () => {
    const completion = await client.completions.create({ model: MODEL, prompt: 'Once upon', max_tokens: 8, temperature: 0 })
    assertMatchesOpenAISchema('CreateCompletionResponse', completion)
    assert.equal(completion.object, 'text_completion')
    const emb = await client.embeddings.create({ model: MODEL, input: ['hello world', 'goodbye'] })
    assertMatchesOpenAISchema('CreateEmbeddingResponse', emb)
    assert.equal(emb.data.length, 2)
    assert.equal(emb.data[0].embedding.length, 64)
  })

  it('relays on pooled streams: A counts reused streams and idle ones, the host counts what it served', async () => {
    const sample = async (node: NodeProcess, series: string): Promise<number> => {
      const text = await (await fetch(`${node.api}/metrics`)).text()
      const line = text.split('\n').find(l => l.startsWith(series + ' '))
      assert.ok(line != null, `${series} in ${node.name}'s /metrics`)
      return Number(line.slice(series.length + 1))
    }
    const reused = await sample(a, 'shepherd_relay_requests_sent_total{stream="reused"}')
    const fresh = await sample(a, 'shepherd_relay_requests_sent_total{stream="new"}')
    // Every request so far went from A to a host; after the first to each host, streams were reused.
    assert.ok(reused >= 2, `reused ${reused}, new ${fresh}`)
    assert.ok(fresh >= 1 && fresh <= 4, `new streams: ${fresh}`)
    assert.ok(await sample(a, 'shepherd_relay_idle_streams') >= 1)
    const served = await sample(b, 'shepherd_relay_requests_served_total{outcome="ok"}') + await sample(c, 'shepherd_relay_requests_served_total{outcome="ok"}')
    assert.equal(served, reused + fresh, 'every relayed request was served by B or C')
  })

  it('answers every error with the OpenAI error shape and the right status', async () => {
    const post = async (p: string, body: string, headers: Record<string, string> = { 'content-type': 'application/json' }): Promise<{ status: number, body: any }> => {
      const res = await fetch(`${a.api}${p}`, { method: 'POST', headers, body })
      return { status: res.status, body: await res.json() }
    }
    const cases: Array<[string, Promise<{ status: number, body: any }>, number, string | null]> = [
      ['unknown model', post('/v1/chat/completions', JSON.stringify({ model: 'nope', messages: [{ role: 'user', content: 'x' }] })), 404, 'model_not_found'],
      ['missing messages', post('/v1/chat/completions', JSON.stringify({ model: MODEL })), 400, 'invalid_request'],
      ['bad JSON', post('/v1/chat/completions', '{"model":'), 400, 'invalid_json'],
      ['bad parameter on the host', post('/v1/chat/completions', JSON.stringify({ model: MODEL, messages: [{ role: 'user', content: 'x' }], temperature: 'hot' })), 400, null],
      ['too large', post('/v1/embeddings', JSON.stringify({ model: MODEL, input: 'x'.repeat(9 * 1024 * 1024) })), 413, 'payload_too_large']
    ]
    for (const [what, p, status, code] of cases) {
      const res = await p
      assert.equal(res.status, status, `${what}: ${JSON.stringify(res.body)}`)
      assertMatchesOpenAISchema('ErrorResponse', res.body)
      if (code != null) assert.equal(res.body.error.code, code, what)
    }
  })

  it('unloads the model after its keep-alive', async () => {
    await waitFor('model back on disk', async () => (await getJson(`${a.api}/v1/models`)).data[0].state === 'on_disk', 9000)
  })

  it('fails over to replica C when B is killed', async () => {
    const body = { model: MODEL, messages: [{ role: 'user' as const, content: 'ping' }], temperature: 0, max_tokens: 4 }
    b.child.kill('SIGKILL')
    // No waiting for failure detection: requests right away must still succeed.
    for (let i = 0; i < 4; i++) {
      const res = await client.chat.completions.create(body)
      assert.ok(res.choices[0].message.content != null)
    }
    const raw = await fetch(`${a.api}/v1/chat/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) })
    assert.equal(raw.status, 200)
    assert.equal(raw.headers.get('x-shepherd-host'), c.id)
  })
})
