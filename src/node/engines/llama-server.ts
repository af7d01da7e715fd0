/**
 * The llama-server engine: each loaded model runs in its own managed `llama-server` process
 * (llama.cpp's HTTP server), from the best llama.cpp build the node found, and requests are
 * proxied to it over loopback.
 *
 * - A model loads on demand: a child starts on a port the OS picked (another one if that port
 *   was taken meanwhile) and is ready when `/health` answers 200.
 * - llama-server refuses chat when started for embeddings (`--embeddings`), so a model used for
 *   both runs two children, the embedding one started on the first embeddings request.
 * - A child that crashes is restarted, a bounded number of times with backoff; requests
 *   arriving meanwhile wait for it, those it was serving fail with 503.
 * - An idle model is stopped after its keep-alive (SIGTERM, then SIGKILL after a grace period).
 * - When memory is short (the `maxLoadedBytes` budget, by default total memory less a reserve,
 *   or the memory available), starting a child first stops the least recently used idle ones
 *   (see `victimsFor`); each child counts as its model file's size.
 * - Each child's output is kept, the last lines of it, for `logs(model)`.
 * - Answers are rebuilt into exactly the OpenAI shapes the embedded engine returns (our model
 *   id, no llama.cpp extras), so a client cannot tell which engine served it.
 */
import type { ChildProcess } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { EventEmitter } from 'node:events'
import { createInterface } from 'node:readline'
import { BadRequestError, ModelNotFoundError, ShepherdError, TimeoutError } from '../../errors.js'
import { createLogger } from '../../logger.js'
import { readGgufHeader } from '../resources/gguf.js'
import type { LlamacppBackend, LlamacppBuild } from '../resources/types.js'
import type { ModelEntry } from './embedded.js'
import { OpenAIHttpClient } from './openai-http.js'
import { parseChatRequest, parseCompletionRequest, parseEmbeddingRequest } from './openai-request.js'
import { upstreamSchema, type ResponseFormat } from './response-format.js'
import { ChatStreamMapper, finishReason, int, toChatCompletion, upstreamChatFields, usageOf } from './llama-tools.js'
import { mergeLlamaServerArgs } from './llama-args.js'
import { spawnTied, type TiedChild } from './tied-child.js'
import { embeddingObject, embeddingSize, legacyFunctionChunk, legacyFunctionCompletion, newResponseId, shapeEmbedding, unixNow, usage, type ResponseHeader } from './openai-response.js'
import type {
  ChatCompletion,
  ChatCompletionChunk,
  ChatCompletionRequest,
  CompletionRequest,
  CompletionUsage,
  EmbeddingRequest,
  EmbeddingResponse,
  FinishReason,
  TextCompletion,
  TextCompletionChunk
} from './openai-types.js'
import { modelFileBytes, type MemoryBudgetOptions } from './memory-budget.js'
import { Residency, type LoadPlan, type StartContext } from './residency.js'
import { freePort, isAddressInUse, portInUse } from './ports.js'
import { SlotPool } from './slot-pool.js'
import { scanModelsDirs } from './model-dirs.js'
import { raceSignal } from './race-signal.js'
import { defaultThreads } from './constants.js'
import type { Engine, EngineCallOptions, EngineEvents, EngineHealth, EngineLoadOptions, EngineModel, EngineModelState } from './types.js'

const log = createLogger('engine:llama-server')

export const LLAMA_SERVER_DEFAULTS = {
  id: 'llama-server',
  /** Best first; a GPU build whose backend found no device ranks after `cpu`. */
  backendOrder: ['cuda', 'rocm', 'vulkan', 'metal', 'sycl', 'cpu'] as readonly LlamacppBackend[],
  host: '127.0.0.1',
  /** Tokens per request slot, capped by the model's trained length. */
  contextSize: 2048,
  /** Request slots per child (`--parallel`), decoded together; 8 as the embedded engine's sequences. */
  parallel: 8,
  /** Requests that may wait for a slot per model before new ones get `OverloadedError`. */
  maxQueue: 64,
  keepAliveMs: 5 * 60_000,
  /** Start to `/health` answering 200. */
  loadTimeoutMs: 120_000,
  /** Longest wait for an answer to start, and then between its pieces. */
  requestTimeoutMs: 10 * 60_000,
  healthPollMs: 100,
  /** Output lines kept per model. */
  logLines: 500,
  /** Crash restarts allowed within `restartWindowMs`; one more crash stops the model for good. */
  maxRestarts: 3,
  restartWindowMs: 5 * 60_000,
  /** First restart delay, doubled for each further crash in the window. */
  restartBackoffMs: 250,
  /** SIGTERM to SIGKILL. */
  stopGraceMs: 5_000,
  /** Ports tried when the one picked was taken before the child could bind it. */
  portAttempts: 3
} as const

export interface LlamaServerEngineOptions extends MemoryBudgetOptions {
  /** Engine id. Default `'llama-server'`. */
  id?: string
  /** llama.cpp builds the node found (`findLlamacppBuilds`); the best one is used. */
  builds: LlamacppBuild[]
  /** Backends best first. Default cuda, rocm, vulkan, metal, sycl, cpu. */
  backendOrder?: readonly LlamacppBackend[]
  /** Directories scanned (not recursively) for `*.gguf`; used when `listModelFiles` is not given. */
  modelsDirs?: string[]
  /** Lists the loadable models; wins over `modelsDirs`. Called on every `listModels()`, so keep it cheap. */
  listModelFiles?: () => ModelEntry[]
  /** Resolves a model name to a file path; falls back to the listing. */
  resolveModel?: (name: string) => string | undefined
  /** `--threads`. Default: one core left free, at most 4. */
  threads?: number
  /** Tokens per request slot, capped by the model's trained length. Default 2048. */
  contextSize?: number
  /** Request slots per child (`--parallel`). Default 8. */
  parallel?: number
  /** Requests that may wait for a slot per model. Default 64. */
  maxQueue?: number
  /** Idle time before a model's children stop; `Infinity` keeps them. Default 5 minutes. */
  keepAliveMs?: number
  /** Address the children listen on. Default 127.0.0.1: they have no authentication. */
  host?: string
  /** Default 2 minutes. */
  loadTimeoutMs?: number
  /** Default 10 minutes. */
  requestTimeoutMs?: number
  /** Output lines kept per model. Default 500. */
  logLines?: number
  /** Default 3. */
  maxRestarts?: number
  /** Default 250 ms. */
  restartBackoffMs?: number
  /** Default 5 s. */
  stopGraceMs?: number
  /** `--n-gpu-layers`; default `all` on GPU builds, nothing on CPU builds. */
  gpuLayers?: number | 'auto' | 'all'
  /** Picks each child's port. Default: one the OS says is free. */
  pickPort?: (host: string) => Promise<number>
  /**
   * Added to every child's command line, after the engine's own flags; a flag the engine sets
   * itself (model, host, port, threads, context, slots...) is dropped from these: the node's win.
   */
  extraArgs?: string[]
  /** Added to the children's environment. */
  env?: Record<string, string>
}

/** Chat and completions run in one child, embeddings in another (`--embeddings`). */
type Role = 'generate' | 'embed'

/** The last `capacity` lines of a model's children's output. */
class LineRing {
  private readonly items: string[] = []
  /** Lines ever pushed; marks where one child's output starts. */
  total = 0

  constructor (private readonly capacity: number) {}

  push (line: string): void {
    this.items.push(line)
    this.total++
    if (this.items.length > this.capacity) this.items.shift()
  }

  lines (): string[] {
    return [...this.items]
  }

  /** The lines pushed since `mark` (a past `total`) that are still kept. */
  since (mark: number): string[] {
    return this.items.slice(Math.max(0, this.items.length - (this.total - mark)))
  }
}

interface ExitInfo {
  code: number | null
  signal: NodeJS.Signals | null
}

interface RunningProcess {
  child: ChildProcess
  /** Tied to this node (dies with it, kill -9 included); `kill` signals its process group. */
  tied: TiedChild
  pid: number
  port: number
  client: OpenAIHttpClient
  exited: Promise<ExitInfo>
  exit?: ExitInfo
}

interface Instance {
  key: string
  name: string
  role: Role
  entry: ModelEntry
  phase: 'starting' | 'ready' | 'restarting' | 'stopping'
  /** Settles when the current start or restart does. */
  ready: Promise<void>
  /** Aborted by unload: cancels a start or restart under way. */
  stopSignal: AbortController
  proc?: RunningProcess
  pool: SlotPool<number>
  /** Per-slot context the child reported. */
  contextSize?: number
  /** When it crashed lately, for the restart budget. */
  crashes: number[]
}

interface Lease {
  inst: Instance
  client: OpenAIHttpClient
  signal: AbortSignal
  release: (keepAliveMs?: number) => void
}



const sleep = async (ms: number, signal?: AbortSignal): Promise<void> => {
  await new Promise<void>((resolve, reject) => {
    if (signal?.aborted === true) { reject(signal.reason); return }
    const timer = setTimeout(() => { signal?.removeEventListener('abort', onAbort); resolve() }, ms)
    const onAbort = (): void => { clearTimeout(timer); reject(signal?.reason) }
    signal?.addEventListener('abort', onAbort, { once: true })
  })
}

/** Rejects with the signal's reason if it aborts before `promise` settles. */



/**
 * The build to run: the first backend in `order` that has one, the newest build of it. A GPU
 * build that found no device ranks after `cpu` (Metal builds list none, so they keep their rank).
 */
export function selectLlamacppBuild (builds: readonly LlamacppBuild[], order: readonly LlamacppBackend[] = LLAMA_SERVER_DEFAULTS.backendOrder): LlamacppBuild | undefined {
  const usable = (b: LlamacppBuild): boolean => b.backend === 'cpu' || b.backend === 'metal' || b.devices.length > 0
  const rank = (b: LlamacppBuild): number => {
    const i = order.indexOf(b.backend)
    if (i < 0) return Infinity
    return usable(b) ? i : order.length + i
  }
  return [...builds]
    .filter(b => rank(b) !== Infinity)
    .sort((a, b) => rank(a) - rank(b) || (b.build ?? -1) - (a.build ?? -1))[0]
}

/** The identity of a response, its model replaced by ours. */
function headerOf (raw: Record<string, unknown>, prefix: 'chatcmpl' | 'cmpl', model: string): ResponseHeader {
  let id = typeof raw.id === 'string' && raw.id !== '' ? raw.id : newResponseId(prefix)
  // llama-server names text completions `chatcmpl-` too; OpenAI's are `cmpl-`.
  if (prefix === 'cmpl' && id.startsWith('chatcmpl-')) id = id.slice('chat'.length)
  return {
    id,
    created: typeof raw.created === 'number' ? raw.created : unixNow(),
    model
  }
}

function asRecord (value: unknown): Record<string, unknown> {
  if (value === null || typeof value !== 'object') {
    throw new ShepherdError('llama-server sent something that is not a JSON object', { code: 'upstream_invalid_response', status: 502 })
  }
  return value as Record<string, unknown>
}

function firstChoice (raw: Record<string, unknown>): Record<string, unknown> | undefined {
  const choices = raw.choices
  return Array.isArray(choices) && choices.length > 0 ? asRecord(choices[0]) : undefined
}

export { toChatCompletion, toChatChunks } from './llama-tools.js'

/** A llama-server text completion as an exact OpenAI one; `echo` is the prompt to put first. */
export function toTextCompletion (value: unknown, model: string, echo = ''): TextCompletion {
  const raw = asRecord(value)
  const header = headerOf(raw, 'cmpl', model)
  const choice = firstChoice(raw) ?? {}
  return {
    id: header.id,
    object: 'text_completion',
    created: header.created,
    model,
    choices: [{ text: echo + (typeof choice.text === 'string' ? choice.text : ''), index: 0, logprobs: null, finish_reason: finishReason(choice.finish_reason) }],
    usage: usageOf(raw.usage)
  }
}

/** A llama-server completion chunk as OpenAI ones (see `toChatChunks`). */
export function toTextChunks (value: unknown, model: string, includeUsage: boolean): TextCompletionChunk[] {
  const raw = asRecord(value)
  const header = headerOf(raw, 'cmpl', model)
  const out: TextCompletionChunk[] = []
  const base = { id: header.id, object: 'text_completion' as const, created: header.created, model }
  const choice = firstChoice(raw)
  if (choice !== undefined) {
    const finish = choice.finish_reason == null ? null : finishReason(choice.finish_reason)
    const text = typeof choice.text === 'string' ? choice.text : ''
    out.push({ ...base, choices: [{ text, index: 0, logprobs: null, finish_reason: finish }], ...(includeUsage ? { usage: null } : {}) })
  }
  if (includeUsage && raw.usage != null) out.push({ ...base, choices: [], usage: usageOf(raw.usage) })
  return out
}

/** Fields this engine handles itself, never sent to the child. */
/**
 * Structured output on llama-server's `/v1/completions`: it reads no `response_format` there,
 * only its own `json_schema` field.
 */
function completionFormat (format: ResponseFormat | undefined): Record<string, unknown> {
  return { response_format: undefined, json_schema: format === undefined ? undefined : upstreamSchema(format) }
}

function forwardable (body: object, model: string, extra: Record<string, unknown>): Record<string, unknown> {
  const { keep_alive: _keepAlive, echo: _echo, suffix: _suffix, best_of: _bestOf, ...rest } = body as Record<string, unknown>
  return { ...rest, ...extra, model }
}

/**
 * An `Engine` running each model in a managed `llama-server` child.
 *
 * @example
 * ```ts
 * const builds = await findLlamacppBuilds(['/opt/llama.cpp'])
 * const engine = new LlamaServerEngine({ builds, modelsDirs: ['/models'] })
 * const res = await engine.chat({ model: 'qwen2.5-0.5b', messages: [{ role: 'user', content: 'hi' }] })
 * await engine.close()
 * ```
 */
export class LlamaServerEngine extends EventEmitter<EngineEvents> implements Engine {
  readonly id: string
  readonly kind = 'llama-server' as const
  /** The build children run from; undefined when the node has none. */
  readonly build: LlamacppBuild | undefined

  private readonly opts: {
    threads: number
    contextSize: number
    parallel: number
    maxQueue: number
    keepAliveMs: number
    host: string
    loadTimeoutMs: number
    requestTimeoutMs: number
    logLines: number
    maxRestarts: number
    restartBackoffMs: number
    stopGraceMs: number
    gpuLayers: number | 'auto' | 'all' | undefined
    extraArgs: string[]
    env: Record<string, string>
  }

  private readonly listModelFiles: () => ModelEntry[]
  private readonly resolveModel: ((name: string) => string | undefined) | undefined
  private readonly pickPort: (host: string) => Promise<number>
  /**
   * Start-once, keep-alive, pins, memory budget and stop of the children, keyed by role and
   * model (see `key`). A child counts as its model file: llama.cpp maps the weights whole, and
   * its context is not known before it starts.
   */
  private readonly residency: Residency<Instance>
  private readonly logRings = new Map<string, LineRing>()
  private readonly states = new Map<string, EngineModelState>()
  private closed = false
  /** Per-model flags of a split replica's head (`--rpc`, `--tensor-split`, `--n-gpu-layers`): see {@link setModelArgs}. */
  private readonly modelArgs = new Map<string, string[]>()

  constructor (options: LlamaServerEngineOptions) {
    super()
    const d = LLAMA_SERVER_DEFAULTS
    this.id = options.id ?? d.id
    this.build = selectLlamacppBuild(options.builds, options.backendOrder ?? d.backendOrder)
    this.opts = {
      threads: options.threads ?? defaultThreads(),
      contextSize: options.contextSize ?? d.contextSize,
      parallel: options.parallel ?? d.parallel,
      maxQueue: options.maxQueue ?? d.maxQueue,
      keepAliveMs: options.keepAliveMs ?? d.keepAliveMs,
      host: options.host ?? d.host,
      loadTimeoutMs: options.loadTimeoutMs ?? d.loadTimeoutMs,
      requestTimeoutMs: options.requestTimeoutMs ?? d.requestTimeoutMs,
      logLines: options.logLines ?? d.logLines,
      maxRestarts: options.maxRestarts ?? d.maxRestarts,
      restartBackoffMs: options.restartBackoffMs ?? d.restartBackoffMs,
      stopGraceMs: options.stopGraceMs ?? d.stopGraceMs,
      gpuLayers: options.gpuLayers,
      extraArgs: options.extraArgs ?? [],
      env: options.env ?? {}
    }
    for (const key of ['threads', 'contextSize', 'parallel', 'logLines'] as const) {
      if (!Number.isInteger(this.opts[key]) || this.opts[key] < 1) throw new RangeError(`${key} must be a positive integer`)
    }
    const dirs = options.modelsDirs ?? []
    this.listModelFiles = options.listModelFiles ?? (() => scanModelsDirs(dirs))
    this.resolveModel = options.resolveModel
    this.pickPort = options.pickPort ?? freePort
    this.residency = new Residency<Instance>({
      driver: {
        stop: async inst => { await this.stopInstance(inst) },
        sizeOf: inst => modelFileBytes(inst.entry),
        abandon: (inst, reason) => {
          inst.phase = 'stopping'
          // Cancels a restart under way; requests queued for a slot fail at once.
          inst.stopSignal.abort(reason)
          inst.pool.close(reason)
        }
      },
      keepAliveMs: this.opts.keepAliveMs,
      maxLoadedBytes: options.maxLoadedBytes,
      memoryReserveBytes: options.memoryReserveBytes,
      availableMemoryBytes: options.availableMemoryBytes,
      // Pins are not a state: a change of one is told to peers all the same.
      onChange: key => { this.syncState(this.nameOf(key), true) },
      log: (message, fields) => { log.info(message, fields) }
    })
  }

  // ---- models -------------------------------------------------------------------------

  listModels (): EngineModel[] {
    const out = new Map<string, EngineModel>()
    for (const entry of this.listModelFiles()) out.set(entry.name, this.describe(entry.name, entry))
    // Running models stay listed even if their file was since removed from the listing.
    for (const key of this.residency.keys()) {
      const name = this.nameOf(key)
      if (!out.has(name)) out.set(name, this.describe(name, this.instance(key)?.entry ?? { name, path: '' }))
    }
    return [...out.values()]
  }

  private describe (name: string, entry: ModelEntry): EngineModel {
    const model: EngineModel = { id: name, state: this.stateOf(name) }
    if (entry.fingerprint !== undefined) model.fingerprint = entry.fingerprint
    if (entry.sizeBytes !== undefined) model.sizeBytes = entry.sizeBytes
    if (entry.contextLength != null) model.contextLength = entry.contextLength
    const inst = this.instance(this.key(name, 'generate')) ?? this.instance(this.key(name, 'embed'))
    // A deployment's replica: counted by the reconciler, never idle-unloaded or evicted.
    if (this.residency.get(this.key(name, 'generate'))?.pinned === true) model.pinned = true
    if (inst !== undefined && model.state === 'loaded') {
      if (inst.contextSize !== undefined) model.contextLength = inst.contextSize
      model.activeRequests = 0
      model.queuedRequests = 0
      for (const role of ['generate', 'embed'] as const) {
        const i = this.instance(this.key(name, role))
        if (i === undefined) continue
        model.activeRequests += i.pool.busy
        model.queuedRequests += i.pool.waiting
      }
    }
    return model
  }

  /** Raw pass-through (audio, images) has nothing to reach: llama-server serves none of those endpoints. */
  supportsPassthrough (_path: string): boolean {
    return false
  }

  /** The last lines the model's children printed (both, when it runs an embedding child too). */
  logs (model: string): string[] {
    return this.logRings.get(model)?.lines() ?? []
  }

  /** The pid of the model's running child, for the role asked; undefined when none runs. */
  pid (model: string, role: Role = 'generate'): number | undefined {
    const inst = this.instance(this.key(model, role))
    return inst?.proc?.exit === undefined ? inst?.proc?.pid : undefined
  }

  /**
   * Starts the model's child (or joins its start). A negative or infinite keep-alive pins it for
   * a deployment; a non-negative one unpins it (see `Residency.load`).
   */
  async load (model: string, options: EngineLoadOptions = {}): Promise<EngineModel> {
    const view = await this.residency.load(this.key(model, 'generate'), () => this.loadPlan(model, 'generate'), options)
    return this.describe(model, (view.resource as Instance).entry)
  }

  async unload (model: string): Promise<boolean> {
    const found = await Promise.all((['generate', 'embed'] as const).map(async role => await this.residency.unload(this.key(model, role))))
    return found.some(Boolean)
  }

  async health (): Promise<EngineHealth> {
    let loadedModels = 0
    let activeRequests = 0
    let queuedRequests = 0
    const names = new Set<string>()
    const running = this.residency.keys().flatMap(key => this.instance(key) ?? [])
    for (const inst of running) {
      if (inst.phase === 'ready') names.add(inst.name)
      activeRequests += inst.pool.busy
      queuedRequests += inst.pool.waiting
    }
    loadedModels = names.size
    const health: EngineHealth = { status: 'ok', loadedModels, activeRequests, queuedRequests }
    const restarting = running.filter(i => i.phase === 'restarting').map(i => i.name)
    if (this.closed) {
      health.status = 'down'
      health.detail = 'engine closed'
    } else if (this.build === undefined) {
      health.status = 'down'
      health.detail = 'no llama.cpp build (llama-server) was found'
    } else if (restarting.length > 0) {
      health.status = 'degraded'
      health.detail = `restarting after a crash: ${[...new Set(restarting)].join(', ')}`
    }
    return health
  }

  async close (): Promise<void> {
    if (this.closed) return
    this.closed = true
    await this.residency.close()
  }

  /**
   * Flags the node adds for one model from its next start on: a split replica's head points
   * `--rpc` at its loopback tunnels (src/node/split). They count as the node's own flags, so a
   * command's extra flags cannot override them. `undefined` clears them.
   */
  setModelArgs (model: string, args: string[] | undefined): void {
    if (args == null) this.modelArgs.delete(model)
    else this.modelArgs.set(model, [...args])
  }

  /** See `Engine.setKeepAlive`. An engine made to run until stopped (keep-alive `Infinity`: run_llamacpp's) keeps running. */
  setKeepAlive (ms: number): void {
    if (this.opts.keepAliveMs === Infinity) return
    this.opts.keepAliveMs = ms
    this.residency.setKeepAlive(ms)
  }

  // ---- OpenAI calls -------------------------------------------------------------------

  async chat (body: ChatCompletionRequest, options: EngineCallOptions = {}): Promise<ChatCompletion> {
    const req = parseChatRequest(body, { logprobs: true })
    const up = upstreamChatFields(req)
    return await this.withSlot(req.model, 'generate', req.keepAliveMs, options.signal, async (lease) => {
      const raw = await lease.client.postJson('/v1/chat/completions', forwardable(body, req.model, { ...up.fields, stream: false, stream_options: undefined }), { signal: lease.signal, model: req.model })
      const completion = toChatCompletion(raw, req.model, up.forced)
      return req.legacyFunctions === true ? legacyFunctionCompletion(completion) : completion
    })
  }

  async * chatStream (body: ChatCompletionRequest, options: EngineCallOptions = {}): AsyncGenerator<ChatCompletionChunk> {
    const req = parseChatRequest(body, { logprobs: true })
    const up = upstreamChatFields(req)
    const forward = forwardable(body, req.model, { ...up.fields, stream: true, stream_options: { include_usage: req.includeUsage } })
    const mapper = new ChatStreamMapper(req.model, req.includeUsage, up.forced)
    yield * this.streamFrom(req.model, req.keepAliveMs, options.signal, '/v1/chat/completions', forward, async function * (raw) {
      for (const chunk of mapper.map(raw)) yield req.legacyFunctions === true ? legacyFunctionChunk(chunk) : chunk
    })
  }

  async completion (body: CompletionRequest, options: EngineCallOptions = {}): Promise<TextCompletion> {
    const req = parseCompletionRequest(body)
    return await this.withSlot(req.model, 'generate', req.keepAliveMs, options.signal, async (lease) => {
      const echo = req.echo ? await this.promptText(lease, req.prompt) : ''
      const forward = forwardable(body, req.model, { prompt: req.prompt, max_tokens: req.sampling.maxTokens, stream: false, stream_options: undefined, ...completionFormat(req.responseFormat) })
      return toTextCompletion(await lease.client.postJson('/v1/completions', forward, { signal: lease.signal, model: req.model }), req.model, echo)
    })
  }

  async * completionStream (body: CompletionRequest, options: EngineCallOptions = {}): AsyncGenerator<TextCompletionChunk> {
    const req = parseCompletionRequest(body)
    const forward = forwardable(body, req.model, { prompt: req.prompt, max_tokens: req.sampling.maxTokens, stream: true, stream_options: { include_usage: req.includeUsage }, ...completionFormat(req.responseFormat) })
    let echo: string | undefined = req.echo ? '' : undefined
    const self = this
    yield * this.streamFrom(req.model, req.keepAliveMs, options.signal, '/v1/completions', forward, async function * (raw, lease) {
      const chunks = toTextChunks(raw, req.model, req.includeUsage)
      // The echoed prompt leads the first piece of text, as the embedded engine sends it.
      if (echo === '' && chunks[0]?.choices.length === 1) {
        echo = await self.promptText(lease, req.prompt)
        chunks[0].choices[0].text = echo + chunks[0].choices[0].text
      }
      yield * chunks
    })
  }

  async embeddings (body: EmbeddingRequest, options: EngineCallOptions = {}): Promise<EmbeddingResponse> {
    const req = parseEmbeddingRequest(body)
    return await this.withSlot(req.model, 'embed', req.keepAliveMs, options.signal, async (lease) => {
      const raw = asRecord(await lease.client.postJson('/v1/embeddings', { model: req.model, input: req.inputs, encoding_format: 'float' }, { signal: lease.signal, model: req.model }))
      const items = Array.isArray(raw.data) ? raw.data.map(asRecord) : []
      if (items.length !== req.inputs.length || items.some(i => !Array.isArray(i.embedding))) {
        throw new ShepherdError(`llama-server answered ${req.inputs.length} inputs with ${items.length} embeddings`, { code: 'upstream_invalid_response', status: 502 })
      }
      items.sort((a, b) => int(a.index) - int(b.index))
      const size = embeddingSize(req.model, (items[0].embedding as number[]).length, req.dimensions)
      const data = items.map((item, index) => embeddingObject(index, shapeEmbedding(item.embedding as number[], size), req.encoding))
      const promptTokens = int((raw.usage as { prompt_tokens?: unknown } | undefined)?.prompt_tokens)
      return { object: 'list', data, model: req.model, usage: { prompt_tokens: promptTokens, total_tokens: promptTokens } }
    })
  }

  /** The text of a prompt to echo: itself, or its tokens detokenized by the child. */
  private async promptText (lease: Lease, prompt: string | number[]): Promise<string> {
    if (typeof prompt === 'string') return prompt
    const res = asRecord(await lease.client.postJson('/detokenize', { tokens: prompt }, { signal: lease.signal }))
    return typeof res.content === 'string' ? res.content : ''
  }

  /** Runs `fn` holding one of the model's request slots. */
  private async withSlot<T> (model: string, role: Role, keepAliveMs: number | undefined, signal: AbortSignal | undefined, fn: (lease: Lease) => Promise<T>): Promise<T> {
    const lease = await this.use(model, role, signal)
    try {
      const slot = await lease.inst.pool.acquire(lease.signal)
      try {
        // The child may have been restarted while this request waited for a slot.
        return await fn({ ...lease, client: lease.inst.proc?.client ?? lease.client })
      } finally {
        lease.inst.pool.release(slot)
      }
    } finally {
      lease.release(keepAliveMs)
    }
  }

  /**
   * The streaming skeleton: everything that can fail before the first chunk (load, queue
   * full, the child refusing the request) fails on the first `next()`.
   */
  private async * streamFrom<Chunk> (
    model: string,
    keepAliveMs: number | undefined,
    signal: AbortSignal | undefined,
    path: string,
    body: Record<string, unknown>,
    map: (raw: unknown, lease: Lease) => AsyncGenerator<Chunk>
  ): AsyncGenerator<Chunk> {
    const lease = await this.use(model, 'generate', signal)
    try {
      const slot = await lease.inst.pool.acquire(lease.signal)
      try {
        const current = { ...lease, client: lease.inst.proc?.client ?? lease.client }
        for await (const raw of current.client.postStream(path, body, { signal: lease.signal, model })) {
          yield * map(raw, current)
        }
      } finally {
        lease.inst.pool.release(slot)
      }
    } finally {
      lease.release(keepAliveMs)
    }
  }

  // ---- lifecycle ----------------------------------------------------------------------

  private key (name: string, role: Role): string {
    return `${role}\u0000${name}`
  }

  private stateOf (name: string): EngineModelState {
    let state: EngineModelState = 'on_disk'
    for (const role of ['generate', 'embed'] as const) {
      const view = this.residency.get(this.key(name, role))
      const phase = view?.state === 'loaded' ? view.resource?.phase : view?.state === 'loading' ? 'starting' : undefined
      if (phase === 'ready') return 'loaded'
      if (phase === 'starting' || phase === 'restarting') state = 'loading'
    }
    return state
  }

  /** Emits `change` when the model's state differs from the last one emitted (or when `force`d). */
  private syncState (name: string, force = false): void {
    const state = this.stateOf(name)
    if ((this.states.get(name) ?? 'on_disk') === state && !force) return
    if (state === 'on_disk') this.states.delete(name)
    else this.states.set(name, state)
    this.emit('change', { model: name, state })
  }

  private findEntry (name: string): ModelEntry {
    const listed = this.listModelFiles().find(e => e.name === name)
    if (listed !== undefined) return listed
    const resolved = this.resolveModel?.(name)
    if (resolved !== undefined) return { name, path: resolved }
    throw new ModelNotFoundError(name)
  }

  private ring (name: string): LineRing {
    let ring = this.logRings.get(name)
    if (ring === undefined) {
      ring = new LineRing(this.opts.logLines)
      this.logRings.set(name, ring)
    }
    return ring
  }

  /** The model's name in a residency key. */
  private nameOf (key: string): string {
    return key.slice(key.indexOf('\u0000') + 1)
  }

  /** The child of a key once started (restarting or stopping included). */
  private instance (key: string): Instance | undefined {
    return this.residency.get(key)?.resource
  }

  /** A hold on a running child; waits out a restart after a crash, holding the copy meanwhile. */
  private async use (name: string, role: Role, signal?: AbortSignal): Promise<Lease> {
    while (true) {
      const lease = await this.residency.use(this.key(name, role), () => this.loadPlan(name, role), signal)
      const inst = lease.resource
      if (inst.phase === 'ready' && inst.proc !== undefined) return { inst, client: inst.proc.client, signal: lease.signal, release: lease.release }
      try {
        await raceSignal(inst.ready, lease.signal)
      } catch (err) {
        lease.release()
        throw err
      }
      if (inst.phase === 'ready' && inst.proc !== undefined) return { inst, client: inst.proc.client, signal: lease.signal, release: lease.release }
      lease.release()
    }
  }

  /** How a model's child starts; asked only when none runs, so an unknown name fails before anything starts. */
  private loadPlan (name: string, role: Role): LoadPlan<Instance> {
    const entry = this.findEntry(name)
    if (this.build === undefined) {
      throw new ShepherdError('No llama.cpp build (llama-server) was found on this node', { code: 'engine_unavailable', status: 503 })
    }
    return { estimateBytes: modelFileBytes(entry), start: async ctx => await this.start(name, role, entry, ctx) }
  }

  private async start (name: string, role: Role, entry: ModelEntry, ctx: StartContext): Promise<Instance> {
    const inst: Instance = {
      key: this.key(name, role),
      name,
      role,
      entry,
      phase: 'starting',
      ready: Promise.resolve(),
      stopSignal: new AbortController(),
      pool: new SlotPool(Array.from({ length: this.opts.parallel }, (_, i) => i), this.opts.maxQueue),
      crashes: []
    }
    // Unloading the model while its child starts cancels the start (the child is killed).
    const cancel = (): void => { inst.stopSignal.abort(ctx.signal.reason) }
    if (ctx.signal.aborted) cancel()
    else ctx.signal.addEventListener('abort', cancel, { once: true })
    const started = performance.now()
    try {
      inst.proc = await this.launch(inst)
    } catch (err) {
      if (err instanceof ShepherdError || inst.stopSignal.signal.aborted) throw err
      throw new ShepherdError(`Failed to start llama-server for '${name}': ${(err as Error).message}`, { code: 'model_load_failed', status: 500, cause: err })
    } finally {
      ctx.signal.removeEventListener('abort', cancel)
    }
    inst.phase = 'ready'
    log.info('model loaded', { model: name, role, pid: inst.proc.pid, port: inst.proc.port, ms: Math.round(performance.now() - started), contextSize: inst.contextSize })
    return inst
  }

  /** The command line of a child. */
  private async argsFor (inst: Instance, port: number): Promise<string[]> {
    let trained = inst.entry.contextLength ?? null
    let pooling: unknown
    try {
      const header = await readGgufHeader(inst.entry.path)
      trained ??= header.contextLength
      pooling = header.metadata.get(`${header.architecture ?? ''}.pooling_type`)
    } catch (err) {
      // llama-server reads the file itself and says what is wrong with it.
      log.debug('could not read the GGUF header', { model: inst.name, err })
    }
    const perSlot = trained !== null && trained > 0 ? Math.min(this.opts.contextSize, trained) : this.opts.contextSize
    const args = [
      '--model', inst.entry.path,
      '--alias', inst.name,
      '--host', this.opts.host,
      '--port', String(port),
      '--threads', String(this.opts.threads),
      // Slots split the context evenly: each gets `perSlot` tokens.
      '--ctx-size', String(perSlot * this.opts.parallel),
      '--parallel', String(this.opts.parallel),
      // The model's own chat template (Jinja): tool calling and its call parser need it.
      '--jinja'
    ]
    const split = inst.role === 'generate' ? this.modelArgs.get(inst.name) : undefined
    const gpuLayers = this.opts.gpuLayers ?? (this.build?.backend === 'cpu' ? undefined : 'all')
    // A split replica's flags say how many layers leave this node; they replace the default.
    if (split != null) args.push(...split)
    else if (gpuLayers !== undefined) args.push('--n-gpu-layers', String(gpuLayers === 'all' ? 999 : gpuLayers))
    if (inst.role === 'embed') {
      args.push('--embeddings')
      // A generative model declares no pooling; its last token embeds the input, as the embedded engine does it.
      if (typeof pooling !== 'number' || pooling <= 0) args.push('--pooling', 'last')
    }
    return mergeLlamaServerArgs(args, this.opts.extraArgs)
  }

  /** Starts a child and waits until it serves; a port taken meanwhile means another try. */
  private async launch (inst: Instance): Promise<RunningProcess> {
    inst.stopSignal.signal.throwIfAborted()
    const attempts = LLAMA_SERVER_DEFAULTS.portAttempts
    for (let attempt = 1; ; attempt++) {
      const port = await this.pickPort(this.opts.host)
      const ring = this.ring(inst.name)
      const mark = ring.total
      const proc = this.spawnChild(inst, port, await this.argsFor(inst, port))
      try {
        await this.waitReady(inst, proc)
        return proc
      } catch (err) {
        await this.kill(proc)
        const lostPort = proc.exit !== undefined && (isAddressInUse(ring.since(mark).join('\n')) || await portInUse(port, this.opts.host))
        if (attempt < attempts && lostPort && !inst.stopSignal.signal.aborted) {
          log.debug('port taken before llama-server bound it; retrying', { model: inst.name, port })
          continue
        }
        if (err instanceof ShepherdError || inst.stopSignal.signal.aborted) throw err
        const tail = ring.since(mark).slice(-15).join('\n')
        throw new ShepherdError(`llama-server for '${inst.name}' failed to start: ${(err as Error).message}\n${tail}`, { code: 'model_load_failed', status: 500, cause: err })
      }
    }
  }

  private spawnChild (inst: Instance, port: number, args: string[]): RunningProcess {
    const build = this.build as LlamacppBuild
    const ring = this.ring(inst.name)
    const prefix = inst.role === 'embed' ? '[embeddings] ' : ''
    ring.push(`${prefix}[shepherd] starting ${build.path} ${args.join(' ')}`)
    // A key per child keeps other local processes (and web pages, llama-server allowing any
    // CORS origin) from using it; in the environment, not on the command line, which anyone sees.
    const apiKey = randomBytes(24).toString('hex')
    // Tied to this node: a node killed with -9 takes its children with it.
    const tied = spawnTied(build.path, args, { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...this.opts.env, LLAMA_API_KEY: apiKey } })
    const child = tied.child
    for (const stream of [child.stdout, child.stderr]) {
      if (stream === null) continue
      createInterface({ input: stream, crlfDelay: Infinity }).on('line', line => { ring.push(prefix + line) })
    }
    const proc: RunningProcess = {
      child,
      tied,
      pid: child.pid ?? -1,
      port,
      client: new OpenAIHttpClient({
        baseUrl: `http://${this.opts.host.includes(':') ? `[${this.opts.host}]` : this.opts.host}:${port}`,
        apiKey,
        timeoutMs: this.opts.requestTimeoutMs,
        name: `llama-server for '${inst.name}'`
      }),
      exited: new Promise<ExitInfo>(resolve => {
        const done = (info: ExitInfo): void => {
          if (proc.exit !== undefined) return
          proc.exit = info
          ring.push(`${prefix}[shepherd] exited (${info.signal ?? `code ${String(info.code)}`})`)
          resolve(info)
        }
        // `close`, not `exit`: by then its output is read to the end, last words included.
        child.once('close', (code: number | null, signal: NodeJS.Signals | null) => { done({ code, signal }) })
        // A binary that cannot be run at all emits `error` and never `exit`.
        child.once('error', err => {
          ring.push(`${prefix}[shepherd] ${err.message}`)
          done({ code: null, signal: null })
        })
      })
    }
    void proc.exited.then(info => { this.onExit(inst, proc, info) })
    return proc
  }

  /** Polls `/health` until 200, the child exits, the load times out or the start is cancelled. */
  private async waitReady (inst: Instance, proc: RunningProcess): Promise<void> {
    const deadline = Date.now() + this.opts.loadTimeoutMs
    const stop = inst.stopSignal.signal
    const exited = proc.exited.then(info => { throw new Error(`llama-server exited (${info.signal ?? `code ${String(info.code)}`}) before it was ready`) })
    exited.catch(() => {})
    while (true) {
      stop.throwIfAborted()
      if (proc.exit !== undefined) await exited
      if (Date.now() > deadline) throw new TimeoutError(`llama-server for '${inst.name}' was not ready within ${this.opts.loadTimeoutMs} ms`)
      const ok = await fetch(`${proc.client.baseUrl}/health`, { signal: AbortSignal.any([stop, AbortSignal.timeout(1000)]) })
        .then(async res => { await res.body?.cancel(); return res.status === 200 })
        .catch(() => false)
      if (ok) break
      await Promise.race([sleep(LLAMA_SERVER_DEFAULTS.healthPollMs, stop), exited])
    }
    try {
      const props = asRecord(await proc.client.getJson('/props', { signal: stop, timeoutMs: 5000 }))
      const n = (props.default_generation_settings as { n_ctx?: unknown } | undefined)?.n_ctx
      if (typeof n === 'number' && n > 0) inst.contextSize = n
    } catch (err) {
      if (stop.aborted) throw err
    }
    // Dying after /health said yes is dying before ready: nothing would notice it otherwise.
    if (proc.exit !== undefined) await exited
  }

  /** A child ended: expected when stopping; a crash when it was serving. */
  private onExit (inst: Instance, proc: RunningProcess, info: ExitInfo): void {
    if (inst.proc !== proc || inst.phase !== 'ready' || this.instance(inst.key) !== inst) return
    const now = Date.now()
    inst.crashes = inst.crashes.filter(t => now - t < LLAMA_SERVER_DEFAULTS.restartWindowMs)
    inst.crashes.push(now)
    const tail = this.ring(inst.name).lines().slice(-10)
    if (inst.crashes.length > this.opts.maxRestarts) {
      log.error('llama-server keeps crashing; giving up', { model: inst.name, role: inst.role, crashes: inst.crashes.length, code: info.code, signal: info.signal, tail })
      this.giveUp(inst, new ShepherdError(`llama-server for '${inst.name}' crashed ${inst.crashes.length} times and was stopped`, { code: 'engine_crashed', status: 503 }))
      return
    }
    const delay = this.opts.restartBackoffMs * 2 ** (inst.crashes.length - 1)
    log.warn('llama-server crashed; restarting', { model: inst.name, role: inst.role, code: info.code, signal: info.signal, delayMs: delay, tail })
    inst.phase = 'restarting'
    this.syncState(inst.name)
    inst.ready = (async () => {
      try {
        await sleep(delay, inst.stopSignal.signal)
        inst.proc = await this.launch(inst)
      } catch (err) {
        if (inst.phase === 'stopping') throw err
        log.error('restarting llama-server failed', { model: inst.name, err })
        const failed = new ShepherdError(`llama-server for '${inst.name}' crashed and could not be restarted: ${(err as Error).message}`, { code: 'engine_crashed', status: 503, cause: err })
        this.giveUp(inst, failed)
        throw failed
      }
      inst.phase = 'ready'
      this.syncState(inst.name)
      this.residency.touch(inst.key)
    })()
    inst.ready.catch(() => {})
  }

  /** Drops a child that keeps crashing: requests on it fail with `reason`. */
  private giveUp (inst: Instance, reason: ShepherdError): void {
    if (this.instance(inst.key) !== inst) return
    this.residency.unload(inst.key, reason).catch(err => { log.warn('dropping a crashed llama-server failed', { model: inst.name, err }) })
  }

  /** The driver's stop: every request on the child has ended (the residency saw to that). */
  private async stopInstance (inst: Instance): Promise<void> {
    inst.phase = 'stopping'
    // A start or restart under way kills its own child once cancelled.
    await inst.ready.catch(() => {})
    if (inst.proc !== undefined) await this.kill(inst.proc)
  }

  /** SIGTERM, then SIGKILL after the grace period; resolves once the child is gone. */
  private async kill (proc: RunningProcess): Promise<void> {
    if (proc.exit !== undefined) return
    proc.tied.kill('SIGTERM')
    const timer = setTimeout(() => { if (proc.exit === undefined) proc.tied.kill('SIGKILL') }, this.opts.stopGraceMs)
    try {
      await proc.exited
    } finally {
      clearTimeout(timer)
    }
  }
}
