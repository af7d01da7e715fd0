/**
 * Runs the real `llama-server`, built from the llama.cpp source node-llama-cpp ships by
 * scripts/build-llama-server.sh (minutes the first time on a machine, then cached), against the
 * tiny test model.
 */
import assert from 'node:assert/strict'
import { execFile } from 'node:child_process'
import { statSync } from 'node:fs'
import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import { createServer } from 'node:net'
import { tmpdir } from 'node:os'
import { dirname, join, resolve } from 'node:path'
import { after, before, describe, it } from 'node:test'
import { fileURLToPath } from 'node:url'
import { promisify } from 'node:util'
import { BadRequestError, ModelNotFoundError, ShepherdError } from '../../../src/errors.js'
import {
  decodeEmbedding,
  type ChatCompletionChunk,
  type ChatCompletionRequest,
  type EngineChangeEvent,
  type TextCompletionChunk
} from '../../../src/node/engines/index.js'
import { LlamaServerEngine, selectLlamacppBuild, type LlamaServerEngineOptions } from '../../../src/node/engines/llama-server.js'
import { freePort, isAddressInUse } from '../../../src/node/engines/ports.js'
import { parseLlamacppVersion, type LlamacppBuild } from '../../../src/node/resources/index.js'
import { assertMatchesOpenAISchema } from '../../support/openai-schema.js'
import { createTinyModel, TINY_MODEL } from '../../support/tiny-model.js'

const execFileAsync = promisify(execFile)
const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..', '..')
const BUNDLE = join(ROOT, 'node_modules', 'node-llama-cpp', 'llama', 'gitRelease.bundle')

let build: LlamacppBuild
let versionOutput: string
let dir: string
const engines: LlamaServerEngine[] = []

function makeEngine (opts: Partial<LlamaServerEngineOptions> = {}): LlamaServerEngine {
  const e = new LlamaServerEngine({
    builds: [build],
    modelsDirs: [dir],
    threads: 1,
    contextSize: 256,
    parallel: 2,
    keepAliveMs: Infinity,
    loadTimeoutMs: 30_000,
    restartBackoffMs: 20,
    stopGraceMs: 2_000,
    ...opts
  })
  engines.push(e)
  return e
}

/**
 * The tiny model's random weights often pick byte tokens whose bytes are not valid UTF-8, and
 * llama-server's output parser refuses such text (HTTP 500). Banning its 256 byte tokens (ids
 * 3-258, after <unk>, <s>, </s>) keeps the text valid; the bias is an ordinary OpenAI parameter
 * the engine forwards.
 */
const NO_BYTE_TOKENS = Object.fromEntries(Array.from({ length: 256 }, (_, b) => [String(3 + b), -100]))

function chatBody (over: Partial<ChatCompletionRequest> = {}): ChatCompletionRequest {
  return { model: 'tiny', messages: [{ role: 'user', content: 'hello there' }], temperature: 0, max_tokens: 24, logit_bias: NO_BYTE_TOKENS, ...over }
}

async function collect<T> (iterable: AsyncIterable<T>): Promise<T[]> {
  const out: T[] = []
  for await (const item of iterable) out.push(item)
  return out
}

async function waitForChange (e: LlamaServerEngine, model: string, state: string, timeoutMs = 20_000): Promise<void> {
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

async function waitUntil (what: string, check: () => boolean, timeoutMs = 20_000): Promise<void> {
  const deadline = Date.now() + timeoutMs
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await new Promise(resolve => setTimeout(resolve, 5))
  }
}

function assertClose (a: number[], b: number[], tolerance = 1e-5): void {
  assert.equal(a.length, b.length)
  const worst = Math.max(...a.map((x, i) => Math.abs(x - b[i])))
  assert.ok(worst < tolerance, `vectors differ by up to ${worst}`)
}

function alive (pid: number): boolean {
  try {
    process.kill(pid, 0)
    return true
  } catch {
    return false
  }
}

function stateOf (e: LlamaServerEngine, model: string): string | undefined {
  return e.listModels().find(m => m.id === model)?.state
}

before(async () => {
  // The script builds once per machine and llama.cpp version, then prints the cached binary at once.
  const built = await execFileAsync('bash', [join(ROOT, 'scripts', 'build-llama-server.sh')], { cwd: ROOT, maxBuffer: 256 * 1024 * 1024 })
  const binary = built.stdout.trim().split('\n').at(-1) ?? ''
  const version = await execFileAsync(binary, ['--version'])
  versionOutput = `${version.stdout}\n${version.stderr}`
  const parsed = parseLlamacppVersion(versionOutput, binary)
  assert.ok(parsed !== null, `llama-server --version printed no version:\n${versionOutput}`)
  build = parsed
  dir = await mkdtemp(join(tmpdir(), 'shepherd-llama-server-'))
  await createTinyModel(join(dir, 'tiny.gguf'))
  await createTinyModel(join(dir, 'tiny-b.gguf'), { seed: 2 })
})

after(async () => {
  await Promise.all(engines.map(async e => { await e.close() }))
  if (dir !== undefined) await rm(dir, { recursive: true, force: true })
})

describe('llama-server build', () => {
  it('reports the version of the bundled llama.cpp source', async () => {
    const heads = await execFileAsync('git', ['bundle', 'list-heads', BUNDLE])
    const head = heads.stdout.trim().split(/\s+/)[0]
    assert.match(head, /^[0-9a-f]{40}$/)
    assert.ok(build.commit !== null && head.startsWith(build.commit), `commit ${String(build.commit)} is not the bundle's ${head}`)
    assert.ok(build.version.length > 0)
    // The script builds without any GPU backend.
    assert.equal(build.backend, 'cpu')
    assert.ok(build.target !== null && build.compiler !== null, versionOutput)
  })
})

describe('selectLlamacppBuild', () => {
  const b = (backend: LlamacppBuild['backend'], build: number | null, devices = 0): LlamacppBuild => ({
    path: `/opt/${backend}-${String(build)}/llama-server`, version: String(build), build, commit: null, backend,
    devices: Array.from({ length: devices }, (_, i) => ({ name: `gpu${i}` })), compiler: null, target: null
  })

  it('prefers the best backend that found a device, then the newest build', () => {
    assert.equal(selectLlamacppBuild([]), undefined)
    assert.equal(selectLlamacppBuild([b('cpu', 1), b('vulkan', 2, 1), b('cuda', 3, 1)])?.backend, 'cuda')
    assert.equal(selectLlamacppBuild([b('cpu', 10), b('cpu', 12), b('cpu', null)])?.build, 12)
    // A CUDA build that found no GPU is worse than a CPU build; Metal builds list no devices.
    assert.equal(selectLlamacppBuild([b('cuda', 5), b('cpu', 1)])?.backend, 'cpu')
    assert.equal(selectLlamacppBuild([b('cuda', 5)])?.backend, 'cuda')
    assert.equal(selectLlamacppBuild([b('metal', 1), b('cpu', 2)])?.backend, 'metal')
    assert.equal(selectLlamacppBuild([b('cuda', 1, 1), b('vulkan', 1, 1)], ['vulkan', 'cuda'])?.backend, 'vulkan')
    assert.equal(selectLlamacppBuild([b('sycl', 1, 1)], ['cpu']), undefined)
  })
})

describe('LlamaServerEngine', () => {
  let engine: LlamaServerEngine

  before(() => {
    engine = makeEngine()
  })

  it('loads a model by starting a child that answers /health', async t => {
    const changes: EngineChangeEvent[] = []
    engine.on('change', ev => { changes.push(ev) })
    assert.equal(stateOf(engine, 'tiny'), 'on_disk')
    const started = performance.now()
    const loaded = await engine.load('tiny')
    t.diagnostic(`llama-server load: ${Math.round(performance.now() - started)} ms`)
    assert.equal(loaded.state, 'loaded')
    // The per-request context asked for, reported back by the child.
    assert.equal(loaded.contextLength, 256)
    assert.deepEqual(changes, [{ model: 'tiny', state: 'loading' }, { model: 'tiny', state: 'loaded' }])
    const pid = engine.pid('tiny')
    assert.ok(pid !== undefined && alive(pid))
    assert.deepEqual(await engine.health(), { status: 'ok', loadedModels: 1, activeRequests: 0, queuedRequests: 0 })
    // Loading again joins what is running.
    await engine.load('tiny')
    assert.equal(engine.pid('tiny'), pid)
    const logs = engine.logs('tiny')
    assert.match(logs[0], /\[shepherd\] starting .*llama-server --model .*tiny\.gguf/)
    assert.ok(logs.some(l => /listening on http:\/\/127\.0\.0\.1:\d+/.test(l)), logs.join('\n'))
  })

  it('chats in exact OpenAI shapes, deterministically at temperature 0', async t => {
    const first = await engine.chat(chatBody())
    assertMatchesOpenAISchema('CreateChatCompletionResponse', first)
    assert.equal(first.model, 'tiny')
    assert.deepEqual(Object.keys(first).sort(), ['choices', 'created', 'id', 'model', 'object', 'usage'])
    const text = first.choices[0].message.content ?? ''
    assert.ok(text.length > 0)
    assert.equal(first.choices[0].finish_reason, 'length')
    assert.equal(first.usage.completion_tokens, 24)
    const second = await engine.chat(chatBody())
    assert.equal(second.choices[0].message.content, text)
    assert.notEqual(second.id, first.id)

    const chunks: ChatCompletionChunk[] = await collect(engine.chatStream(chatBody({ stream_options: { include_usage: true } })))
    for (const c of chunks) assertMatchesOpenAISchema('CreateChatCompletionStreamResponse', c)
    assert.ok(chunks.every(c => c.model === 'tiny' && c.id === chunks[0].id))
    assert.deepEqual(chunks[0].choices[0].delta, { role: 'assistant', content: '' })
    assert.equal(chunks.map(c => c.choices[0]?.delta.content ?? '').join(''), text)
    assert.equal(chunks.at(-2)?.choices[0].finish_reason, 'length')
    assert.deepEqual(chunks.at(-1)?.choices, [])
    assert.deepEqual(chunks.at(-1)?.usage, first.usage)
    assert.ok(chunks.slice(0, -1).every(c => c.usage === null))
    // Without include_usage there is no usage anywhere.
    const plain = await collect(engine.chatStream(chatBody()))
    assert.ok(plain.every(c => !('usage' in c) && c.choices.length === 1))

    const started = performance.now()
    const long = await engine.completion({ model: 'tiny', prompt: 'the', max_tokens: 200, temperature: 0, logit_bias: NO_BYTE_TOKENS, ignore_eos: true })
    const seconds = (performance.now() - started) / 1000
    t.diagnostic(`tiny model through llama-server: ${long.usage.completion_tokens} tokens in ${Math.round(seconds * 1000)} ms, ${Math.round(long.usage.completion_tokens / seconds)} tok/s (HTTP round trip included)`)
    assert.equal(long.usage.completion_tokens, 200)
  })

  it('completes text, streamed or not, with echo', async () => {
    const body = { model: 'tiny', prompt: 'the old man', max_tokens: 10, temperature: 0, logit_bias: NO_BYTE_TOKENS }
    const res = await engine.completion(body)
    assertMatchesOpenAISchema('CreateCompletionResponse', res)
    assert.match(res.id, /^cmpl-/)
    assert.equal(res.model, 'tiny')
    const echoed = await engine.completion({ ...body, echo: true })
    assert.equal(echoed.choices[0].text, 'the old man' + res.choices[0].text)
    const chunks: TextCompletionChunk[] = await collect(engine.completionStream({ ...body, echo: true }))
    // OpenAI's schema describes whole completions; the last chunk is one, with the usage of the non-streamed answer.
    assertMatchesOpenAISchema('CreateCompletionResponse', { ...chunks.at(-1), usage: echoed.usage })
    assert.ok(chunks.every(c => c.id === chunks[0].id && c.object === 'text_completion' && c.model === 'tiny'))
    assert.equal(chunks.map(c => c.choices[0].text).join(''), echoed.choices[0].text)
    // The legacy API's default of 16 tokens holds.
    const short = await engine.completion({ model: 'tiny', prompt: 'the', temperature: 0, logit_bias: NO_BYTE_TOKENS, ignore_eos: true })
    assert.equal(short.usage.completion_tokens, 16)
    await assert.rejects(engine.completion({ ...body, suffix: 'x' }), BadRequestError)
  })

  it('embeds in a second child started for embeddings', async () => {
    const res = await engine.embeddings({ model: 'tiny', input: ['hello world', 'the cat', 'hello world'] })
    assertMatchesOpenAISchema('CreateEmbeddingResponse', res)
    assert.equal(res.model, 'tiny')
    assert.equal(res.data.length, 3)
    const vectors = res.data.map(d => d.embedding as number[])
    for (const v of vectors) {
      assert.equal(v.length, TINY_MODEL.defaultNEmbd)
      assert.ok(Math.abs(Math.hypot(...v) - 1) < 1e-4)
    }
    // The same text embeds alike in any slot and batch, to float rounding.
    assertClose(vectors[0], vectors[2])
    assert.ok(Math.abs(vectors[0].reduce((s, x, i) => s + x * vectors[1][i], 0)) < 0.999, 'different texts, different vectors')
    assert.ok(res.usage.prompt_tokens > 0)
    const b64 = await engine.embeddings({ model: 'tiny', input: 'hello world', encoding_format: 'base64' })
    assertClose(decodeEmbedding(b64.data[0].embedding as string), vectors[0])
    await assert.rejects(engine.embeddings({ model: 'tiny', input: 'x', dimensions: 1000 }), BadRequestError)

    const generate = engine.pid('tiny')
    const embed = engine.pid('tiny', 'embed')
    assert.ok(generate !== undefined && embed !== undefined && generate !== embed && alive(embed))
    assert.ok(engine.logs('tiny').some(l => l.startsWith('[embeddings] [shepherd] starting') && l.includes('--embeddings')))
  })

  it('restarts a child killed with SIGKILL; the next request succeeds', async () => {
    const before = engine.pid('tiny')
    assert.ok(before !== undefined)
    process.kill(before, 'SIGKILL')
    await waitUntil('the crash to be noticed', () => engine.pid('tiny') !== before)
    assert.equal(stateOf(engine, 'tiny'), 'loaded', 'the embedding child still serves')
    // Waits for the restart under way, then answers as before.
    const res = await engine.chat(chatBody())
    assert.equal(res.choices[0].message.content, (await engine.chat(chatBody())).choices[0].message.content)
    const after = engine.pid('tiny')
    assert.ok(after !== undefined && after !== before && alive(after))
    assert.equal(alive(before), false)
    assert.ok(engine.logs('tiny').some(l => l === '[shepherd] exited (SIGKILL)'))
    assert.equal((await engine.health()).status, 'ok')
  })

  it('gives up on a child that keeps crashing', async () => {
    const e = makeEngine({ maxRestarts: 1 })
    await e.load('tiny-b')
    const first = e.pid('tiny-b') as number
    const restarted = waitForChange(e, 'tiny-b', 'loaded')
    process.kill(first, 'SIGKILL')
    await restarted
    const second = e.pid('tiny-b') as number
    assert.notEqual(second, first)
    const gone = waitForChange(e, 'tiny-b', 'on_disk')
    process.kill(second, 'SIGKILL')
    await gone
    assert.equal(e.pid('tiny-b'), undefined)
    assert.equal(stateOf(e, 'tiny-b'), 'on_disk')
    // A new request starts it afresh.
    assert.equal((await e.chat(chatBody({ model: 'tiny-b', max_tokens: 4 }))).model, 'tiny-b')
  })

  it('unloads by stopping the children', async () => {
    const generate = engine.pid('tiny') as number
    const embed = engine.pid('tiny', 'embed') as number
    const gone = waitForChange(engine, 'tiny', 'on_disk')
    assert.equal(await engine.unload('tiny'), true)
    await gone
    assert.equal(alive(generate), false)
    assert.equal(alive(embed), false)
    assert.equal(engine.pid('tiny'), undefined)
    assert.equal(stateOf(engine, 'tiny'), 'on_disk')
    assert.equal(await engine.unload('tiny'), false)
    assert.ok(engine.logs('tiny').some(l => l === '[shepherd] exited (code 0)'), 'SIGTERM let it exit cleanly')
  })

  it('stops an idle child after its keep-alive', async () => {
    const e = makeEngine({ keepAliveMs: Infinity })
    await e.chat(chatBody({ max_tokens: 2, keep_alive: '300ms' }))
    const pid = e.pid('tiny') as number
    assert.ok(alive(pid))
    await waitForChange(e, 'tiny', 'on_disk', 5_000)
    await waitUntil('the child to exit', () => !alive(pid), 5_000)
    assert.equal(e.pid('tiny'), undefined)
  })

  it('a deployment\'s copy (keep-alive -1) is pinned: reported, kept past a short keep-alive, never evicted; 0 retires it', async () => {
    const reserve = 256 * 1024 ** 2
    const need = statSync(join(dir, 'tiny.gguf')).size
    // Room for one child only: starting tiny-b would evict an unpinned tiny.
    const e = makeEngine({ keepAliveMs: 200, memoryReserveBytes: reserve, availableMemoryBytes: () => reserve + need + 1000 })
    const events: EngineChangeEvent[] = []
    e.on('change', ev => { events.push(ev) })
    await e.load('tiny', { keepAliveMs: -1 })
    assert.equal(e.listModels().find(m => m.id === 'tiny')?.pinned, true)
    assert.ok(events.length >= 2, 'peers hear of the pin')
    const pid = e.pid('tiny') as number
    await e.chat(chatBody({ model: 'tiny-b', max_tokens: 2 }))
    await new Promise(resolve => setTimeout(resolve, 600))
    assert.equal(e.pid('tiny'), pid, 'still the same child: neither idle-stopped nor evicted')
    assert.equal(stateOf(e, 'tiny'), 'loaded')
    await e.load('tiny', { keepAliveMs: 0 })
    assert.notEqual(e.listModels().find(m => m.id === 'tiny')?.pinned, true)
    await waitUntil('the retired child to exit', () => !alive(pid), 10_000)
  })

  it('with little memory available, stops the least recently used idle child before starting another', async () => {
    const reserve = 256 * 1024 ** 2
    const need = statSync(join(dir, 'tiny.gguf')).size
    let availableBytes = 64 * 1024 ** 3
    const e = makeEngine({
      memoryReserveBytes: reserve,
      availableMemoryBytes: () => availableBytes,
      // A third name for the tiny file, to see which of two idle children goes.
      listModelFiles: () => ['tiny', 'tiny-b'].map(name => ({ name, path: join(dir, `${name}.gguf`) }))
        .concat({ name: 'tiny-c', path: join(dir, 'tiny.gguf') })
    })
    const states = (): Array<string | undefined> => ['tiny', 'tiny-b', 'tiny-c'].map(m => stateOf(e, m))
    await e.load('tiny')
    await e.load('tiny-b')
    assert.deepEqual(states(), ['loaded', 'loaded', 'on_disk'], 'plenty of memory: both stay')
    await e.chat(chatBody({ model: 'tiny', max_tokens: 2 }))
    const pidB = e.pid('tiny-b') as number
    // One byte short of the reserve once tiny-c is in.
    availableBytes = reserve + need - 1
    const changes: EngineChangeEvent[] = []
    e.on('change', ev => { changes.push(ev) })
    await e.load('tiny-c')
    assert.deepEqual(states(), ['loaded', 'on_disk', 'loaded'])
    assert.equal(alive(pidB), false, 'the child was stopped before the new one started')
    const gone = changes.findIndex(ev => ev.model === 'tiny-b' && ev.state === 'on_disk')
    assert.ok(gone >= 0 && gone < changes.findIndex(ev => ev.model === 'tiny-c' && ev.state === 'loading'), JSON.stringify(changes))

    // A stream held open keeps tiny-c busy; should it be stopped all the same, the stream lets go.
    const stream = e.chatStream(chatBody({ model: 'tiny-c', max_tokens: 200 }))[Symbol.asyncIterator]()
    await stream.next()
    const release = async (): Promise<void> => { await stream.return(undefined) }
    e.on('change', ev => { if (ev.model === 'tiny-c' && ev.state === 'on_disk') void release() })
    try {
      availableBytes = 0
      // Every idle child goes; the busy one stays, and the load is tried anyway.
      await e.load('tiny-b')
      assert.deepEqual(states(), ['on_disk', 'loaded', 'loaded'])
      assert.equal((await e.health()).activeRequests, 1)
    } finally {
      await release()
    }
  })

  it('frees the slot when a stream is abandoned or the caller aborts', async () => {
    const e = makeEngine()
    for await (const chunk of e.chatStream(chatBody({ max_tokens: 100 }))) {
      assert.equal(chunk.object, 'chat.completion.chunk')
      break
    }
    assert.equal((await e.health()).activeRequests, 0)
    const reason = new Error('caller gone')
    await assert.rejects(e.chat(chatBody(), { signal: AbortSignal.abort(reason) }), err => err === reason)
    assert.equal((await e.chat(chatBody({ max_tokens: 3 }))).usage.completion_tokens, 3)
  })

  it('fails a load with the reason llama-server gives', async () => {
    await writeFile(join(dir, 'broken.gguf'), 'this is not a GGUF file')
    const e = makeEngine()
    await assert.rejects(e.load('broken'), (err: ShepherdError) => err.code === 'model_load_failed' && /failed to start/.test(err.message))
    assert.equal(stateOf(e, 'broken'), 'on_disk')
    assert.ok(e.logs('broken').some(l => /exited \(code \d+\)/.test(l)))
    await rm(join(dir, 'broken.gguf'))

    const noBinary = makeEngine({ builds: [{ ...build, path: join(dir, 'no-such-llama-server') }] })
    await assert.rejects(noBinary.load('tiny'), (err: ShepherdError) => err.code === 'model_load_failed')
    await assert.rejects(engine.load('missing'), ModelNotFoundError)
  })

  it('starts a child again on another port when its port was taken first', async () => {
    // Holds the port; what connects to it (the engine polling /health) is hung up on.
    const blocker = createServer(socket => { socket.destroy() })
    await new Promise<void>(resolve => { blocker.listen(0, '127.0.0.1', resolve) })
    const taken = (blocker.address() as { port: number }).port
    const picked: number[] = []
    try {
      // The first pick loses the race to another process, as a port the OS named free can.
      const e = makeEngine({ pickPort: async host => { picked.push(picked.length === 0 ? taken : await freePort(host)); return picked.at(-1) as number } })
      assert.equal((await e.load('tiny-b')).state, 'loaded')
      assert.equal(picked.length, 2)
      const starts = e.logs('tiny-b').filter(l => l.startsWith('[shepherd] starting'))
      assert.equal(starts.length, 2)
      assert.ok(starts[0].includes(`--port ${taken} `) && starts[1].includes(`--port ${picked[1]} `))
      assert.ok(isAddressInUse("start: couldn't bind HTTP server socket, hostname: 127.0.0.1, port: 8080"))
    } finally {
      blocker.close()
    }
  })

  it('is down without a build', async () => {
    const e = makeEngine({ builds: [] })
    assert.equal((await e.health()).status, 'down')
    assert.equal(stateOf(e, 'tiny'), 'on_disk')
    await assert.rejects(e.load('tiny'), (err: ShepherdError) => err.code === 'engine_unavailable' && err.status === 503)
    await e.close()
    await assert.rejects(e.chat(chatBody()), (err: ShepherdError) => err.code === 'engine_closed')
  })
})
