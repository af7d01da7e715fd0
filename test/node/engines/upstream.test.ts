import assert from 'node:assert/strict'
import { createHash } from 'node:crypto'
import { after, afterEach, describe, it } from 'node:test'
import {
  BadRequestError,
  ModelNotFoundError,
  NoHealthyHostError,
  OverloadedError,
  ShepherdError,
  TimeoutError,
  UnauthorizedError
} from '../../../src/errors.js'
import { errorFromResponse, parseSse, type SseEvent } from '../../../src/node/engines/openai-http.js'
import { UpstreamEngine, type UpstreamEngineOptions } from '../../../src/node/engines/upstream.js'
import { freePort } from '../../../src/node/engines/ports.js'
import type { ChatCompletionChunk, EngineChangeEvent, TextCompletionChunk } from '../../../src/node/engines/index.js'
import { decodeEmbedding } from '../../../src/node/engines/index.js'
import { assertMatchesOpenAISchema } from '../../support/openai-schema.js'
import { UpstreamStandin } from '../../support/upstream-standin.js'

const standins: UpstreamStandin[] = []
const engines: UpstreamEngine[] = []

async function standin (opts: Parameters<typeof UpstreamStandin.start>[0] = {}): Promise<UpstreamStandin> {
  const s = await UpstreamStandin.start(opts)
  standins.push(s)
  return s
}

function engine (s: UpstreamStandin | string, opts: Partial<UpstreamEngineOptions> = {}): UpstreamEngine {
  const e = new UpstreamEngine({ id: 'standin', baseUrl: typeof s === 'string' ? s : s.url, ...opts })
  engines.push(e)
  return e
}

async function collect<T> (iterable: AsyncIterable<T>): Promise<T[]> {
  const out: T[] = []
  for await (const item of iterable) out.push(item)
  return out
}

async function waitUntil (what: string, check: () => boolean | Promise<boolean>, timeoutMs = 5000): Promise<void> {
  const deadline = Date.now() + timeoutMs
  while (!await check()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await new Promise(resolve => setTimeout(resolve, 10))
  }
}

const chat = { model: 'standin-chat', messages: [{ role: 'user', content: 'hello little world' }] }

afterEach(async () => {
  await Promise.all(engines.splice(0).map(async e => { await e.close() }))
  await Promise.all(standins.splice(0).map(async s => { await s.close() }))
})

describe('upstream stand-in', () => {
  it('speaks the OpenAI shapes itself', async () => {
    const s = await standin()
    const post = async (path: string, body: unknown): Promise<any> => await (await fetch(`${s.url}${path}`, { method: 'POST', body: JSON.stringify(body) })).json()
    assertMatchesOpenAISchema('ListModelsResponse', await (await fetch(`${s.url}/models`)).json())
    assertMatchesOpenAISchema('CreateChatCompletionResponse', await post('/chat/completions', chat))
    assertMatchesOpenAISchema('CreateCompletionResponse', await post('/completions', { model: 'standin-chat', prompt: 'a b' }))
    assertMatchesOpenAISchema('CreateEmbeddingResponse', await post('/embeddings', { model: 'standin-embed', input: ['a', 'b'] }))
    assertMatchesOpenAISchema('ErrorResponse', await post('/chat/completions', { ...chat, model: 'nope' }))
    assert.equal(s.count('/v1/chat/completions'), 2)
  })
})

describe('parseSse', () => {
  async function * pieces (...parts: string[]): AsyncGenerator<Uint8Array> {
    for (const p of parts) yield new TextEncoder().encode(p)
  }

  it('splits events across any chunking and line ending', async () => {
    const text = 'data: {"a":1}\r\n\r\n: comment\n\ndata: {"b":2}\rdata: more\r\r' + 'event: done\ndata:[DONE]\n\n'
    const whole = await collect(parseSse(pieces(text)))
    const byte = await collect(parseSse(pieces(...text.split(''))))
    const expected: SseEvent[] = [
      { event: 'message', data: '{"a":1}' },
      { event: 'message', data: '{"b":2}\nmore' },
      { event: 'done', data: '[DONE]' }
    ]
    assert.deepEqual(whole, expected)
    assert.deepEqual(byte, expected)
  })

  it("reports llama-server's error field and an unterminated last event", async () => {
    const events = await collect(parseSse(pieces('error: {"error":{"code":400,"message":"bad"}}\n\ndata: {"tail":true}')))
    assert.deepEqual(events, [
      { event: 'error', data: '{"error":{"code":400,"message":"bad"}}' },
      { event: 'message', data: '{"tail":true}' }
    ])
  })

  it('keeps multi-byte characters split between chunks', async () => {
    const bytes = new TextEncoder().encode('data: "héllo ✓"\n\n')
    async function * split (): AsyncGenerator<Uint8Array> {
      for (let i = 0; i < bytes.length; i++) yield bytes.subarray(i, i + 1)
    }
    assert.deepEqual(await collect(parseSse(split())), [{ event: 'message', data: '"héllo ✓"' }])
  })
})

describe('errorFromResponse', () => {
  it('maps statuses onto typed errors, keeping status and message', () => {
    const bad = errorFromResponse(400, { error: { message: 'temperature too high', type: 'invalid_request_error', param: 'temperature', code: null } })
    assert.ok(bad instanceof BadRequestError)
    assert.equal(bad.status, 400)
    assert.equal(bad.message, 'temperature too high')
    assert.equal(bad.param, 'temperature')
    const ctx = errorFromResponse(400, { error: { code: 400, message: 'too long', type: 'exceed_context_size_error' } })
    assert.equal(ctx.code, 'context_length_exceeded')
    assert.ok(errorFromResponse(401, { error: 'no key' }) instanceof UnauthorizedError)
    assert.ok(errorFromResponse(404, { error: { message: 'no such model', code: 'model_not_found' } }, 'm') instanceof ModelNotFoundError)
    assert.equal(errorFromResponse(404, 'Not Found').code, 'not_found')
    assert.ok(errorFromResponse(429, {}) instanceof OverloadedError)
    assert.ok(errorFromResponse(504, {}) instanceof TimeoutError)
    const forbidden = errorFromResponse(403, { error: { message: 'region blocked', code: 'unsupported_country' } })
    assert.equal(forbidden.status, 403)
    assert.equal(forbidden.code, 'unsupported_country')
    const loading = errorFromResponse(503, { error: { code: 503, message: 'Loading model', type: 'unavailable_error' } })
    assert.deepEqual([loading.status, loading.code, loading.message], [503, 'upstream_unavailable', 'Loading model'])
    const plain = errorFromResponse(500, 'segfault\n')
    assert.deepEqual([plain.status, plain.code, plain.message, plain.type], [500, 'upstream_error', 'segfault', 'server_error'])
  })
})

describe('UpstreamEngine', () => {
  after(async () => {
    await Promise.all(standins.map(async s => { await s.close() }))
  })

  it('lists the models the server lists, and follows its changes', async () => {
    const s = await standin({ models: ['a', 'b'] })
    const e = engine(s, { modelsRefreshMs: 40 })
    const changes: EngineChangeEvent[] = []
    e.on('change', ev => { changes.push(ev) })
    await e.refresh()
    assert.deepEqual(e.listModels().map(m => [m.id, m.state]), [['a', 'loaded'], ['b', 'loaded']])
    s.models = ['b', 'c']
    await waitUntil('the list to refresh', () => e.listModels().some(m => m.id === 'c'))
    assert.deepEqual(e.listModels().map(m => m.id).sort(), ['b', 'c'])
    assert.deepEqual(changes, [
      { model: 'a', state: 'loaded' }, { model: 'b', state: 'loaded' },
      { model: 'c', state: 'loaded' }, { model: 'a', state: 'on_disk' }
    ])
    assert.equal((await e.load('b')).state, 'loaded')
    assert.equal(await e.unload('b'), false)
  })

  it('forwards chat bodies untouched and returns the answer', async () => {
    const s = await standin()
    const e = engine(s)
    const res = await e.chat({ ...chat, temperature: 0.3, stream_options: { include_usage: true }, custom_field: { x: 1 } })
    assertMatchesOpenAISchema('CreateChatCompletionResponse', res)
    assert.equal(res.choices[0].message.content, 'You said hello little world')
    const sent = JSON.parse(s.received.at(-1)!.body.toString()) as Record<string, unknown>
    assert.deepEqual(sent, { model: 'standin-chat', messages: chat.messages, temperature: 0.3, custom_field: { x: 1 }, stream: false })
  })

  it('relays a chat stream chunk by chunk', async () => {
    const s = await standin({ chunkDelayMs: 5 })
    const e = engine(s)
    const chunks = await collect(e.chatStream({ ...chat, stream_options: { include_usage: true } }))
    for (const c of chunks) assertMatchesOpenAISchema('CreateChatCompletionStreamResponse', c)
    assert.equal(chunks.map(c => c.choices[0]?.delta.content ?? '').join(''), 'You said hello little world')
    assert.equal(chunks.at(-2)?.choices[0].finish_reason, 'stop')
    assert.deepEqual(chunks.at(-1)?.usage, { prompt_tokens: 4, completion_tokens: 5, total_tokens: 9 })
    assert.equal(JSON.parse(s.received.at(-1)!.body.toString()).stream, true)

    // The chunks before a cut connection arrive before the error does: nothing waits for the end.
    s.failNext({ kind: 'drop', afterChunks: 3 }, 1, '/v1/chat/completions')
    const got: ChatCompletionChunk[] = []
    await assert.rejects(async () => { for await (const c of e.chatStream(chat)) got.push(c) },
      (err: ShepherdError) => err.code === 'upstream_disconnected' && err.status === 502)
    assert.equal(got.length, 3)
  })

  it('serves completions and embeddings', async () => {
    const s = await standin()
    const e = engine(s)
    const res = await e.completion({ model: 'standin-chat', prompt: 'one two three', max_tokens: 3 })
    assertMatchesOpenAISchema('CreateCompletionResponse', res)
    assert.deepEqual([res.choices[0].text, res.choices[0].finish_reason], ['You said one', 'length'])
    const chunks: TextCompletionChunk[] = await collect(e.completionStream({ model: 'standin-chat', prompt: 'one two' }))
    assert.equal(chunks.map(c => c.choices[0].text).join(''), 'You said one two')
    assert.equal(chunks.at(-1)?.choices[0].finish_reason, 'stop')

    const floats = await e.embeddings({ model: 'standin-embed', input: ['alpha', 'beta'] })
    assertMatchesOpenAISchema('CreateEmbeddingResponse', floats)
    assert.equal(floats.data.length, 2)
    // OpenAI's schema describes only float arrays; base64 is checked by decoding it.
    const b64 = await e.embeddings({ model: 'standin-embed', input: ['alpha', 'beta'], encoding_format: 'base64' })
    assert.deepEqual(decodeEmbedding(b64.data[1].embedding as string), floats.data[1].embedding)
  })

  it('sends its API key, and a rejected key is a 401', async () => {
    const s = await standin({ apiKey: 'sk-test' })
    assert.equal((await engine(s, { apiKey: 'sk-test' }).chat(chat)).object, 'chat.completion')
    const wrong = engine(s, { apiKey: 'sk-wrong' })
    assert.equal((await wrong.health()).status, 'down')
    await assert.rejects(wrong.chat(chat), NoHealthyHostError)
    assert.match((await wrong.health()).detail ?? '', /Incorrect API key/)
    // Pass-through relays the server's own answer.
    const raw = await wrong.passthrough({ method: 'POST', path: '/audio/speech', headers: {}, body: null })
    assert.equal(raw.status, 401)
    assertMatchesOpenAISchema('ErrorResponse', JSON.parse(Buffer.concat(await collect(raw.body)).toString()))
  })

  it('refuses an unlisted model without asking the server to run it', async () => {
    const s = await standin()
    const e = engine(s)
    await e.refresh()
    await assert.rejects(e.chat({ ...chat, model: 'missing' }), ModelNotFoundError)
    assert.equal(s.count('/v1/chat/completions'), 0)
    // A model added since the last read is found by reading the list again.
    s.models.push('new-model')
    await new Promise(resolve => setTimeout(resolve, 1_050))
    assert.equal((await e.chat({ ...chat, model: 'new-model' })).model, 'new-model')
    await assert.rejects(e.chat({ messages: [] } as never), BadRequestError)
  })

  it('turns HTTP errors into typed errors with the status and message', async () => {
    const s = await standin()
    const e = engine(s)
    const path = '/v1/chat/completions'
    s.failNext({ kind: 'status', status: 500, message: 'GPU on fire' }, 1, path)
    await assert.rejects(e.chat(chat), (err: ShepherdError) => err.status === 500 && err.message === 'GPU on fire' && err.code === 'server_error')
    s.failNext({ kind: 'status', status: 429 }, 1, path)
    await assert.rejects(e.chat(chat), OverloadedError)
    s.failNext({ kind: 'status', status: 400, message: 'bad temperature' }, 1, path)
    await assert.rejects(collect(e.chatStream(chat)), (err: ShepherdError) => err instanceof BadRequestError && err.message === 'bad temperature')
    s.failNext({ kind: 'status', status: 422 }, 1, '/v1/embeddings')
    await assert.rejects(e.embeddings({ model: 'standin-embed', input: 'x' }), (err: ShepherdError) => err.status === 422)
  })

  it('times out a silent server with TimeoutError', async () => {
    const s = await standin()
    const e = engine(s, { requestTimeoutMs: 150 })
    await e.refresh()
    s.failNext({ kind: 'hang' }, 1, '/v1/chat/completions')
    const started = Date.now()
    await assert.rejects(e.chat(chat), (err: ShepherdError) => err instanceof TimeoutError && err.status === 504)
    assert.ok(Date.now() - started < 2000)
    // A stream that goes quiet between chunks times out too.
    s.chunkDelayMs = 400
    await assert.rejects(collect(e.chatStream(chat)), TimeoutError)
  })

  it('cancels the upstream request when the caller aborts or stops reading', async () => {
    const s = await standin()
    const e = engine(s)
    await e.refresh()
    s.failNext({ kind: 'hang' }, 1, '/v1/chat/completions')
    const controller = new AbortController()
    const reason = new Error('client went away')
    const pending = e.chat(chat, { signal: controller.signal })
    await waitUntil('the request to arrive', () => s.count('/v1/chat/completions') === 1)
    controller.abort(reason)
    await assert.rejects(pending, err => err === reason)
    await waitUntil('the upstream connection to close', () => s.closedEarly === 1)

    s.chunkDelayMs = 50
    for await (const chunk of e.chatStream(chat)) {
      assert.equal(chunk.object, 'chat.completion.chunk')
      break
    }
    await waitUntil('the stream to be cancelled', () => s.closedEarly === 2)
    assert.equal((await e.health()).activeRequests, 0)
  })

  it('says down when the server cannot be reached, and NoHealthyHostError for requests', async () => {
    const s = await standin()
    const e = engine(s, { healthIntervalMs: 30 })
    assert.equal((await e.health()).status, 'ok')
    await s.close()
    await waitUntil('health to go down', async () => (await e.health()).status === 'down')
    assert.match((await e.health()).detail ?? '', /cannot be reached \(ECONNREFUSED\)/)
    await assert.rejects(e.chat(chat), (err: ShepherdError) => err instanceof NoHealthyHostError && err.status === 503)

    const nothing = engine(`http://127.0.0.1:${await freePort()}/v1`)
    assert.equal((await nothing.health()).status, 'down')
    await assert.rejects(nothing.passthrough({ method: 'POST', path: '/audio/speech', headers: {}, body: null }), NoHealthyHostError)
  })

  it('passes audio and multipart bodies through untouched', async () => {
    const s = await standin({ apiKey: 'sk-up' })
    const e = engine(s, { apiKey: 'sk-up' })
    assert.equal(e.supportsPassthrough('/audio/speech'), true)

    const speech = await e.passthrough({
      method: 'POST',
      path: '/audio/speech',
      headers: { 'content-type': 'application/json', authorization: 'Bearer caller-key', 'x-trace': 't1' },
      body: new TextEncoder().encode(JSON.stringify({ model: 'standin-chat', input: 'hi there', voice: 'alloy' }))
    })
    assert.equal(speech.status, 200)
    assert.equal(speech.headers['content-type'], 'audio/mpeg')
    const parts = await collect(speech.body)
    const audio = Buffer.concat(parts)
    assert.equal(audio.length, 16 * 1024)
    assert.equal(createHash('sha256').update(audio).digest('hex'), speech.headers['x-standin-sha256'])
    const sent = s.received.at(-1)!
    assert.equal(sent.headers.authorization, 'Bearer sk-up')
    assert.equal(sent.headers['x-trace'], 't1')

    const boundary = '----shepherd7MA4YWxkTrZu0gW'
    const file = Buffer.from(Array.from({ length: 3000 }, (_, i) => (i * 7) & 0xff))
    const multipart = Buffer.concat([
      Buffer.from(`--${boundary}\r\nContent-Disposition: form-data; name="model"\r\n\r\nstandin-chat\r\n--${boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\nContent-Type: audio/wav\r\n\r\n`),
      file,
      Buffer.from(`\r\n--${boundary}--\r\n`)
    ])
    const transcription = await e.passthrough({
      method: 'POST',
      path: '/audio/transcriptions',
      headers: { 'content-type': `multipart/form-data; boundary=${boundary}` },
      body: multipart
    })
    const answer = JSON.parse(Buffer.concat(await collect(transcription.body)).toString()) as { text: string, content_type: string }
    assert.equal(answer.text, `received ${multipart.length} bytes sha256 ${createHash('sha256').update(multipart).digest('hex')}`)
    assert.equal(answer.content_type, `multipart/form-data; boundary=${boundary}`)

    const missing = await e.passthrough({ method: 'POST', path: '/images/edits', headers: { 'content-type': 'application/json' }, body: new TextEncoder().encode('{"model":"standin-chat"}') })
    assert.equal(missing.status, 404)
    assertMatchesOpenAISchema('ErrorResponse', JSON.parse(Buffer.concat(await collect(missing.body)).toString()))
    await assert.rejects(e.passthrough({ method: 'GET', path: '/../secret', headers: {}, body: null }), BadRequestError)
  })

  it('aborts requests in flight on close and serves nothing after', async () => {
    const s = await standin()
    const e = engine(s)
    await e.refresh()
    s.failNext({ kind: 'hang' }, 1, '/v1/chat/completions')
    const pending = e.chat(chat)
    await waitUntil('the request to arrive', () => s.count('/v1/chat/completions') === 1)
    await e.close()
    await assert.rejects(pending, (err: ShepherdError) => err.code === 'engine_closed')
    await assert.rejects(e.chat(chat), (err: ShepherdError) => err.code === 'engine_closed')
    assert.equal((await e.health()).status, 'down')
  })
})
