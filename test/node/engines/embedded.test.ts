import assert from 'node:assert/strict'
import { statSync } from 'node:fs'
import { readFile, mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, it } from 'node:test'
import { getLlama, InsufficientMemoryError as LlamaInsufficientMemoryError, readGgufFileInfo, type Llama } from 'node-llama-cpp'
import { BadRequestError, InsufficientMemoryError, ModelNotFoundError, OverloadedError, ShepherdError } from '../../../src/errors.js'
import {
  decodeEmbedding,
  EmbeddedEngine,
  type ChatCompletionChunk,
  type ChatCompletionRequest,
  type EngineChangeEvent,
  type TextCompletionChunk
} from '../../../src/node/engines/index.js'
import { assertMatchesOpenAISchema } from '../../support/openai-schema.js'
import { createTinyModel, TINY_MODEL } from '../../support/tiny-model.js'

let dir: string
let engine: EmbeddedEngine
/** Starting node-llama-cpp takes about a second; engines made per test share one instance. */
let sharedLlama: Llama
const engines: EmbeddedEngine[] = []

/** Every engine a test makes is closed at the end, even when the test fails. */
function makeEngine (opts: ConstructorParameters<typeof EmbeddedEngine>[0] = {}): EmbeddedEngine {
  const e = new EmbeddedEngine({ modelsDirs: [dir], threads: 1, llama: sharedLlama, ...opts })
  engines.push(e)
  return e
}

function chatBody (over: Partial<ChatCompletionRequest> = {}): ChatCompletionRequest {
  return { model: 'tiny', messages: [{ role: 'user', content: 'hello there' }], temperature: 0, max_tokens: 40, ...over }
}

async function collect<T> (iterable: AsyncIterable<T>): Promise<T[]> {
  const out: T[] = []
  for await (const item of iterable) out.push(item)
  return out
}

function recordChanges (e: EmbeddedEngine): EngineChangeEvent[] {
  const events: EngineChangeEvent[] = []
  e.on('change', ev => { events.push(ev) })
  return events
}

async function waitForChange (e: EmbeddedEngine, model: string, state: string, timeoutMs: number): Promise<void> {
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => { reject(new Error(`no '${state}' change for ${model} within ${timeoutMs} ms`)) }, timeoutMs)
    const listener = (ev: EngineChangeEvent): void => {
      if (ev.model !== model || ev.state !== state) return
      clearTimeout(timer)
      e.off('change', listener)
      resolve()
    }
    e.on('change', listener)
  })
}

/** Awaits the requests while sampling the engine's health, to see how many ran at once. */
async function watchLoad<T> (e: EmbeddedEngine, requests: Array<Promise<T>>): Promise<{ results: T[], mostActive: number, mostQueued: number }> {
  let done = false
  let mostActive = 0
  let mostQueued = 0
  const all = Promise.all(requests).finally(() => { done = true })
  while (!done) {
    const health = await e.health()
    mostActive = Math.max(mostActive, health.activeRequests)
    mostQueued = Math.max(mostQueued, health.queuedRequests)
    await new Promise(resolve => setImmediate(resolve))
  }
  return { results: await all, mostActive, mostQueued }
}

function stateOf (e: EmbeddedEngine, model: string): string | undefined {
  return e.listModels().find(m => m.id === model)?.state
}

/** The shared node-llama-cpp, but its model loads fail as out of memory whenever `refuse` says so. */
function refusingLlama (refuse: (modelPath: string) => boolean): Llama {
  return new Proxy(sharedLlama, {
    get (target, prop) {
      if (prop === 'loadModel') {
        return async (opts: Parameters<Llama['loadModel']>[0]) => {
          if (refuse(opts.modelPath)) throw new LlamaInsufficientMemoryError('A model of this size cannot fit')
          return await target.loadModel(opts)
        }
      }
      const value: unknown = Reflect.get(target, prop, target)
      return typeof value === 'function' ? value.bind(target) : value
    }
  })
}

/**
 * A stream taken to its first chunk and held there: its model is busy until `release`. Should
 * the model be unloaded all the same, the stream lets go, or the unload would wait for it forever.
 */
async function holdStream (e: EmbeddedEngine, model: string): Promise<{ release: () => Promise<void> }> {
  const it = e.chatStream(chatBody({ model, max_tokens: 400 }))[Symbol.asyncIterator]()
  await it.next()
  const release = async (): Promise<void> => {
    e.off('change', onChange)
    await it.return(undefined)
  }
  const onChange = (ev: EngineChangeEvent): void => {
    if (ev.model === model && ev.state === 'on_disk') void release()
  }
  e.on('change', onChange)
  return { release }
}

before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'shepherd-engine-'))
  await createTinyModel(join(dir, 'tiny.gguf'))
  await createTinyModel(join(dir, 'tiny-b.gguf'), { seed: 2 })
  // The main engine starts node-llama-cpp itself, as a node does.
  engine = new EmbeddedEngine({ modelsDirs: [dir], threads: 1, keepAliveMs: Infinity })
  engines.push(engine)
  sharedLlama = await getLlama({ gpu: false, maxThreads: 1, build: 'never' })
})

after(async () => {
  await Promise.all(engines.map(async e => { await e.close() }))
  await sharedLlama.dispose()
  await rm(dir, { recursive: true, force: true })
})

describe('tiny model', () => {
  it('is deterministic per seed and carries the llama metadata node-llama-cpp reads', async () => {
    const again = await createTinyModel(join(dir, 'again.gguf.tmp'))
    const other = await createTinyModel(join(dir, 'other.gguf.tmp'), { seed: 9 })
    const [a, b, c] = await Promise.all([readFile(join(dir, 'tiny.gguf')), readFile(again), readFile(other)])
    assert.ok(a.equals(b), 'same seed gives the same bytes')
    assert.ok(!a.equals(c), 'another seed gives other weights')
    assert.ok(a.length > 100_000 && a.length < 1_000_000, `size ${a.length}`)

    const info = await readGgufFileInfo(join(dir, 'tiny.gguf'))
    const md = info.metadata as unknown as Record<string, Record<string, unknown>>
    assert.equal(md.general.architecture, 'llama')
    const llama = md.llama as { embedding_length: number, block_count: number, context_length: number }
    assert.equal(llama.embedding_length, TINY_MODEL.defaultNEmbd)
    assert.equal(llama.block_count, TINY_MODEL.nLayer)
    assert.equal(llama.context_length, TINY_MODEL.contextLength)
    const tok = md.tokenizer as { ggml: { model: string, tokens: string[], token_type: number[] }, chat_template: string }
    assert.equal(tok.ggml.model, 'llama')
    assert.ok(tok.ggml.tokens.length > 550 && tok.ggml.tokens.length < 650)
    assert.equal(tok.ggml.tokens.indexOf('<0x41>'), tok.ggml.token_type.indexOf(6) + 0x41)
    assert.match(tok.chat_template, /<\|im_start\|>/)
  })
})

describe('EmbeddedEngine', () => {
  it('lists the models on disk before anything is loaded', () => {
    const models = makeEngine().listModels().sort((a, b) => a.id.localeCompare(b.id))
    assert.deepEqual(models.map(m => [m.id, m.state]), [['tiny', 'on_disk'], ['tiny-b', 'on_disk']])
    assert.ok((models[0].sizeBytes ?? 0) > 100_000)
  })

  it('loads on demand; concurrent first requests share one load', async () => {
    const e = makeEngine()
    const events = recordChanges(e)
    const results = await Promise.all([1, 2, 3].map(async i => await e.chat(chatBody({ max_tokens: 5, messages: [{ role: 'user', content: `hi ${i}` }] }))))
    assert.equal(results.length, 3)
    assert.deepEqual(events, [{ model: 'tiny', state: 'loading' }, { model: 'tiny', state: 'loaded' }])
    assert.equal(stateOf(e, 'tiny'), 'loaded')
    assert.equal(stateOf(e, 'tiny-b'), 'on_disk')
  })

  it('loads the tiny model in well under a second once node-llama-cpp is up', async () => {
    await engine.load('tiny')
    assert.equal(await engine.unload('tiny'), true)
    const started = performance.now()
    const model = await engine.load('tiny')
    const ms = performance.now() - started
    assert.equal(model.state, 'loaded')
    assert.equal(model.contextLength, TINY_MODEL.contextLength)
    assert.ok(ms < 1000, `load took ${ms} ms`)
  })

  it('answers in the OpenAI chat completion shape, deterministically at temperature 0', async () => {
    const a = await engine.chat(chatBody())
    const b = await engine.chat(chatBody())
    assertMatchesOpenAISchema('CreateChatCompletionResponse', a)
    assert.match(a.id, /^chatcmpl-[0-9a-f]{32}$/)
    assert.notEqual(a.id, b.id)
    assert.equal(a.model, 'tiny')
    assert.ok(Math.abs(a.created - Date.now() / 1000) < 60)
    assert.ok(a.choices[0].message.content !== null && a.choices[0].message.content.length > 0)
    assert.equal(a.choices[0].message.content, b.choices[0].message.content)
    assert.equal(a.usage.total_tokens, a.usage.prompt_tokens + a.usage.completion_tokens)
    // BOS + "<|im_start|>user\n" + the text + "<|im_end|>\n<|im_start|>assistant\n": more than the text alone.
    assert.ok(a.usage.prompt_tokens > 5)
  })

  it('ends with finish_reason length after exactly max_tokens tokens', async () => {
    for (const body of [chatBody({ max_tokens: 7 }), chatBody({ max_tokens: undefined, max_completion_tokens: 3 })]) {
      const res = await engine.chat(body)
      assert.equal(res.choices[0].finish_reason, 'length')
      assert.equal(res.usage.completion_tokens, body.max_tokens ?? body.max_completion_tokens)
    }
  })

  it('reproduces a sampled answer with the same seed and varies it without one', async () => {
    const body = chatBody({ temperature: 1, top_k: 0, min_p: 0, top_p: 1, max_tokens: 30 })
    const a = await engine.chat({ ...body, seed: 7 })
    const b = await engine.chat({ ...body, seed: 7 })
    assert.equal(a.choices[0].message.content, b.choices[0].message.content)
    const unseeded = await Promise.all([1, 2, 3].map(async () => (await engine.chat(body)).choices[0].message.content))
    assert.ok(new Set(unseeded).size > 1, 'three unseeded samples were identical')
  })

  it('stops at a stop sequence, leaving it out of the text', async () => {
    const full = (await engine.chat(chatBody({ max_tokens: 60 }))).choices[0].message.content ?? ''
    // A plain-ASCII stop string whose first occurrence is well inside the text.
    let at = -1
    for (let i = 3; i < full.length - 3; i++) {
      const candidate = full.slice(i, i + 3)
      if (/^[a-z ]{3}$/.test(candidate) && full.indexOf(candidate) === i) { at = i; break }
    }
    assert.ok(at > 0, `no usable stop string in ${JSON.stringify(full)}`)
    const stop = full.slice(at, at + 3)
    for (const stopParam of [stop, ['never-generated', stop]]) {
      const res = await engine.chat(chatBody({ max_tokens: 60, stop: stopParam }))
      assert.equal(res.choices[0].message.content, full.slice(0, at))
      assert.equal(res.choices[0].finish_reason, 'stop')
    }
  })

  it('streams chunks that assemble to the non-streamed answer', async () => {
    const whole = await engine.chat(chatBody())
    const chunks = await collect(engine.chatStream(chatBody()))
    for (const chunk of chunks) assertMatchesOpenAISchema('CreateChatCompletionStreamResponse', chunk)
    assert.equal(new Set(chunks.map(c => c.id)).size, 1)
    assert.match(chunks[0].id, /^chatcmpl-/)
    assert.equal(chunks[0].choices[0].delta.role, 'assistant')
    const last = chunks.at(-1) as ChatCompletionChunk
    assert.equal(last.choices[0].finish_reason, 'length')
    assert.ok(chunks.slice(0, -1).every(c => c.choices[0].finish_reason === null))
    assert.ok(chunks.every(c => !('usage' in c)), 'no usage without include_usage')
    assert.ok(chunks.length > 3)
    assert.equal(chunks.map(c => c.choices[0].delta.content ?? '').join(''), whole.choices[0].message.content)
  })

  it('adds a final usage chunk with stream_options.include_usage', async () => {
    const whole = await engine.chat(chatBody())
    const chunks = await collect(engine.chatStream(chatBody({ stream_options: { include_usage: true } })))
    for (const chunk of chunks) assertMatchesOpenAISchema('CreateChatCompletionStreamResponse', chunk)
    const last = chunks.at(-1) as ChatCompletionChunk
    assert.deepEqual(last.choices, [])
    assert.deepEqual(last.usage, whole.usage)
    assert.ok(chunks.slice(0, -1).every(c => c.usage === null))
    assert.equal((chunks.at(-2) as ChatCompletionChunk).choices[0].finish_reason, 'length')
  })

  it('serves text completions, streamed and not, with echo', async () => {
    const body = { model: 'tiny', prompt: 'the world', temperature: 0, max_tokens: 12 }
    const res = await engine.completion(body)
    assertMatchesOpenAISchema('CreateCompletionResponse', res)
    assert.match(res.id, /^cmpl-/)
    assert.equal(res.object, 'text_completion')
    assert.equal(res.choices[0].finish_reason, 'length')
    assert.equal(res.usage.completion_tokens, 12)
    const chunks = await collect(engine.completionStream(body))
    const last = chunks.at(-1) as TextCompletionChunk
    assertMatchesOpenAISchema('CreateCompletionResponse', { ...last, usage: res.usage })
    assert.equal(chunks.map(c => c.choices[0].text).join(''), res.choices[0].text)
    const echoed = await engine.completion({ ...body, echo: true })
    assert.equal(echoed.choices[0].text, 'the world' + res.choices[0].text)
    const defaulted = await engine.completion({ model: 'tiny', prompt: 'the world', temperature: 0 })
    assert.equal(defaulted.usage.completion_tokens, 16, 'legacy completions default to 16 tokens')
  })

  it('makes unit-length 64-dim embeddings, as floats or base64', async () => {
    const res = await engine.embeddings({ model: 'tiny', input: ['hello world', 'the cat'] })
    assertMatchesOpenAISchema('CreateEmbeddingResponse', res)
    assert.deepEqual(res.data.map(d => d.index), [0, 1])
    const [a, b] = res.data.map(d => d.embedding as number[])
    assert.equal(a.length, TINY_MODEL.defaultNEmbd)
    assert.ok(Math.abs(Math.hypot(...a) - 1) < 1e-5)
    assert.notDeepEqual(a, b)
    assert.ok(res.usage.prompt_tokens >= 4)
    assert.equal(res.usage.total_tokens, res.usage.prompt_tokens)

    const b64 = await engine.embeddings({ model: 'tiny', input: 'hello world', encoding_format: 'base64' })
    assert.equal(typeof b64.data[0].embedding, 'string')
    assert.deepEqual(decodeEmbedding(b64.data[0].embedding as string), a)
  })

  it('runs 4 concurrent requests side by side on the 4 sequences of one context', async () => {
    const { results, mostActive } = await watchLoad(engine, [1, 2, 3, 4].map(async i =>
      await engine.chat(chatBody({ max_tokens: 150, messages: [{ role: 'user', content: `side ${i}` }] }))))
    assert.equal(mostActive, 4)
    for (const r of results) {
      // Random weights sometimes sample the end-of-turn token before the budget runs out.
      if (r.choices[0].finish_reason === 'length') assert.equal(r.usage.completion_tokens, 150)
      else assert.ok(r.choices[0].finish_reason === 'stop' && r.usage.completion_tokens <= 150)
    }
  })

  it('queues requests beyond the sequences and serves them all', async () => {
    const e = makeEngine({ maxSequences: 2, keepAliveMs: Infinity })
    await e.load('tiny')
    const { results, mostActive, mostQueued } = await watchLoad(e, [1, 2, 3, 4].map(async i =>
      await e.chat(chatBody({ max_tokens: 100, messages: [{ role: 'user', content: `request ${i}` }] }))))
    assert.equal(mostActive, 2)
    assert.equal(mostQueued, 2)
    for (const r of results) assert.ok(r.usage.completion_tokens >= 1 && r.usage.completion_tokens <= 100)
    assert.equal((await e.health()).activeRequests, 0)
  })

  it('refuses requests past the queue bound with OverloadedError', async () => {
    const e = makeEngine({ maxSequences: 1, maxQueue: 1, keepAliveMs: Infinity })
    await e.load('tiny')
    const outcomes = await Promise.allSettled([1, 2, 3].map(async () => await e.chat(chatBody({ max_tokens: 20 }))))
    assert.deepEqual(outcomes.map(o => o.status), ['fulfilled', 'fulfilled', 'rejected'])
    assert.ok((outcomes[2] as PromiseRejectedResult).reason instanceof OverloadedError)
  })

  it('stops a stream promptly when its signal aborts, and frees the sequence', async () => {
    const controller = new AbortController()
    const stream = engine.chatStream(chatBody({ max_tokens: 400, messages: [{ role: 'user', content: 'x' }] }), { signal: controller.signal })
    let pieces = 0
    let abortedAt = 0
    await assert.rejects(async () => {
      for await (const chunk of stream) {
        if (chunk.choices[0]?.delta.content !== undefined) pieces++
        if (pieces === 5) {
          abortedAt = performance.now()
          controller.abort()
        }
      }
    }, (err: Error) => err.name === 'AbortError')
    assert.ok(performance.now() - abortedAt < 500)
    assert.ok(pieces < 50, `${pieces} pieces arrived after the abort`)
    const health = await engine.health()
    assert.equal(health.activeRequests, 0)
    assert.equal((await engine.chat(chatBody({ max_tokens: 3 }))).usage.completion_tokens, 3)
  })

  it('stops generating when the consumer leaves a stream early', async () => {
    for await (const chunk of engine.chatStream(chatBody({ max_tokens: 400 }))) {
      if (chunk.choices[0]?.delta.content !== undefined) break
    }
    assert.equal((await engine.health()).activeRequests, 0)
  })

  it('rejects a non-streamed request whose signal aborts', async () => {
    const controller = new AbortController()
    const pending = engine.chat(chatBody({ max_tokens: 400, messages: [{ role: 'user', content: 'x' }] }), { signal: controller.signal })
    setTimeout(() => { controller.abort() }, 20)
    await assert.rejects(pending, (err: Error) => err.name === 'AbortError')
    assert.equal((await engine.health()).activeRequests, 0)
  })

  it('unloads an idle model after keepAliveMs', async () => {
    const e = makeEngine({ keepAliveMs: 150 })
    const unloaded = waitForChange(e, 'tiny', 'on_disk', 30_000)
    await e.chat(chatBody({ max_tokens: 2 }))
    assert.equal(stateOf(e, 'tiny'), 'loaded')
    const started = performance.now()
    await unloaded
    assert.ok(performance.now() - started >= 100)
    assert.equal(stateOf(e, 'tiny'), 'on_disk')
  })

  it('honours a request keep_alive of 0 and of "-1"', async () => {
    const e = makeEngine({ keepAliveMs: 100 })
    const unloaded = waitForChange(e, 'tiny', 'on_disk', 30_000)
    await e.chat(chatBody({ max_tokens: 2, keep_alive: 0 }))
    await unloaded
    await e.chat(chatBody({ max_tokens: 2, keep_alive: '-1' }))
    await new Promise(resolve => setTimeout(resolve, 300))
    assert.equal(stateOf(e, 'tiny'), 'loaded')
  })

  it('unloads the least recently used idle model when the memory budget is short', async () => {
    const e = makeEngine({ maxLoadedBytes: 1, keepAliveMs: Infinity })
    await e.load('tiny')
    assert.equal(stateOf(e, 'tiny'), 'loaded')
    await e.chat(chatBody({ model: 'tiny-b', max_tokens: 2 }))
    assert.equal(stateOf(e, 'tiny'), 'on_disk')
    assert.equal(stateOf(e, 'tiny-b'), 'loaded')
  })

  it('with no budget set, unloads the least recently used idle model when available memory is short', async () => {
    const reserve = 256 * 1024 ** 2
    const need = statSync(join(dir, 'tiny.gguf')).size
    let availableBytes = 64 * 1024 ** 3
    const e = makeEngine({
      keepAliveMs: Infinity,
      memoryReserveBytes: reserve,
      availableMemoryBytes: () => availableBytes,
      // A third name for the tiny file, to see which of two idle models goes.
      listModelFiles: () => ['tiny', 'tiny-b'].map(name => ({ name, path: join(dir, `${name}.gguf`) }))
        .concat({ name: 'tiny-c', path: join(dir, 'tiny.gguf') })
    })
    await e.load('tiny')
    await e.load('tiny-b')
    assert.deepEqual(['tiny', 'tiny-b', 'tiny-c'].map(m => stateOf(e, m)), ['loaded', 'loaded', 'on_disk'], 'plenty of memory: both stay')
    await e.chat(chatBody({ model: 'tiny', max_tokens: 2 }))
    // One byte short of the reserve once tiny-c is in.
    availableBytes = reserve + need - 1
    const events = recordChanges(e)
    await e.load('tiny-c')
    assert.deepEqual(['tiny', 'tiny-b', 'tiny-c'].map(m => stateOf(e, m)), ['loaded', 'on_disk', 'loaded'])
    const gone = events.findIndex(ev => ev.model === 'tiny-b' && ev.state === 'on_disk')
    assert.ok(gone >= 0 && gone < events.findIndex(ev => ev.model === 'tiny-c' && ev.state === 'loaded'), 'peers hear of the unload before the load ends')
  })

  it('never unloads a busy model to make room', async () => {
    const reserve = 256 * 1024 ** 2
    let availableBytes = 64 * 1024 ** 3
    const e = makeEngine({ keepAliveMs: Infinity, memoryReserveBytes: reserve, availableMemoryBytes: () => availableBytes })
    await e.load('tiny')
    const held = await holdStream(e, 'tiny')
    try {
      availableBytes = 0
      // The load is tried anyway: only node-llama-cpp's own checks can refuse it.
      await e.load('tiny-b')
      assert.equal(stateOf(e, 'tiny'), 'loaded')
      assert.equal(stateOf(e, 'tiny-b'), 'loaded')
      assert.equal((await e.health()).activeRequests, 1)
    } finally {
      await held.release()
    }
  })

  it('unloads an idle model and retries when node-llama-cpp finds too little memory', async () => {
    const e = makeEngine({
      keepAliveMs: Infinity,
      availableMemoryBytes: () => 64 * 1024 ** 3,
      llama: refusingLlama(path => path.endsWith('tiny-b.gguf') && stateOf(e, 'tiny') !== 'on_disk')
    })
    await e.load('tiny')
    await e.load('tiny-b')
    assert.equal(stateOf(e, 'tiny'), 'on_disk')
    assert.equal(stateOf(e, 'tiny-b'), 'loaded')
  })

  it('fails with InsufficientMemoryError when no idle model is left to unload', async () => {
    const e = makeEngine({
      keepAliveMs: Infinity,
      availableMemoryBytes: () => 64 * 1024 ** 3,
      llama: refusingLlama(path => path.endsWith('tiny-b.gguf'))
    })
    await e.load('tiny')
    const held = await holdStream(e, 'tiny')
    try {
      await assert.rejects(e.load('tiny-b'), (err: ShepherdError) =>
        err instanceof InsufficientMemoryError && err.code === 'insufficient_memory' && err.status === 503)
      assert.equal(stateOf(e, 'tiny'), 'loaded', 'the busy model stays')
      assert.equal(stateOf(e, 'tiny-b'), 'on_disk')
    } finally {
      await held.release()
    }
  })

  it('aborts in-flight requests when their model is unloaded', async () => {
    const e = makeEngine({ keepAliveMs: Infinity })
    await e.load('tiny')
    const outcome = e.chat(chatBody({ max_tokens: 400, messages: [{ role: 'user', content: 'x' }] })).then(() => undefined, (err: unknown) => err)
    await new Promise(resolve => setTimeout(resolve, 20))
    assert.equal(await e.unload('tiny'), true)
    assert.equal((await outcome as ShepherdError | undefined)?.code, 'model_unloaded')
    assert.equal(stateOf(e, 'tiny'), 'on_disk')
    assert.equal(await e.unload('tiny'), false)
  })

  it('rejects an unknown model with ModelNotFoundError from every call', async () => {
    const body = chatBody({ model: 'no-such-model' })
    await assert.rejects(engine.chat(body), ModelNotFoundError)
    await assert.rejects(engine.load('no-such-model'), ModelNotFoundError)
    await assert.rejects(engine.embeddings({ model: 'no-such-model', input: 'x' }), ModelNotFoundError)
    await assert.rejects(engine.completion({ model: 'no-such-model', prompt: 'x' }), ModelNotFoundError)
    // Streams fail on the first next(), before any chunk, so the API can still answer 404.
    await assert.rejects(engine.chatStream(body)[Symbol.asyncIterator]().next(), ModelNotFoundError)
    assert.equal(stateOf(engine, 'no-such-model'), undefined)
  })

  it('rejects invalid parameters and over-long prompts with BadRequestError', async () => {
    const cases: Array<[ChatCompletionRequest, string | null, string]> = [
      [chatBody({ temperature: 5 }), 'temperature', 'invalid_request'],
      [chatBody({ max_tokens: 0 }), 'max_tokens', 'invalid_request'],
      [chatBody({ n: 9 }), 'n', 'integer_above_max_value'],
      [chatBody({ messages: [] }), 'messages', 'invalid_request'],
      [chatBody({ stop: [1 as unknown as string] }), 'stop', 'invalid_request'],
      [chatBody({ keep_alive: 'soon' }), 'keep_alive', 'invalid_request'],
      [chatBody({ messages: [{ role: 'user', content: 'the '.repeat(600) }] }), 'messages', 'context_length_exceeded']
    ]
    for (const [body, param, code] of cases) {
      await assert.rejects(engine.chat(body), (err: BadRequestError) =>
        err instanceof BadRequestError && err.param === param && err.code === code && err.status === 400)
    }
    // A stream refuses an over-long prompt before its first chunk, so the API can answer 400.
    const tooLong = chatBody({ messages: [{ role: 'user', content: 'the '.repeat(600) }] })
    await assert.rejects(engine.chatStream(tooLong)[Symbol.asyncIterator]().next(), (err: BadRequestError) => err.code === 'context_length_exceeded')
    await assert.rejects(engine.completionStream({ model: 'tiny', prompt: 'the '.repeat(600) })[Symbol.asyncIterator]().next(), (err: BadRequestError) => err.code === 'context_length_exceeded')
    assert.equal((await engine.health()).activeRequests, 0)
    await assert.rejects(engine.embeddings({ model: 'tiny', input: '' }), BadRequestError)
    await assert.rejects(engine.embeddings({ model: 'tiny', input: 'x', dimensions: 1000 }), BadRequestError)
  })

  it('reports health and refuses work once closed', async () => {
    const e = makeEngine()
    assert.equal((await e.health()).status, 'ok')
    await e.load('tiny')
    const events = recordChanges(e)
    await e.close()
    assert.deepEqual(events, [{ model: 'tiny', state: 'on_disk' }])
    assert.equal((await e.health()).status, 'down')
    await assert.rejects(e.chat(chatBody()), (err: ShepherdError) => err.code === 'engine_closed')
  })
})
