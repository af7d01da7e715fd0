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
import { EventEmitter } from 'node:events'
import { ModelNotFoundError, ShepherdError } from '../../errors.js'
import { createLogger } from '../../logger.js'
import { readGgufHeader } from '../resources/gguf.js'
import type { LlamacppBackend, LlamacppBuild } from '../resources/types.js'
import type { ModelEntry } from './embedded.js'
import type { OpenAIHttpClient } from './openai-http.js'
import { asRecord, completionFormat, forwardable, toTextChunks, toTextCompletion } from './llama-server-mapping.js'
import { LineRing, sleep, spawnLlamaServer, stopChild, waitUntilServing, type ExitInfo, type RunningProcess } from './llama-server-child.js'
import { parseChatRequest, parseCompletionRequest, parseEmbeddingRequest } from './openai-request.js'
import { ChatStreamMapper, int, toChatCompletion, upstreamChatFields } from './llama-tools.js'
import { mergeLlamaServerArgs } from './llama-args.js'
import { embeddingObject, embeddingSize, legacyFunctionChunk, legacyFunctionCompletion, shapeEmbedding } from './openai-response.js'
import type {
  ChatCompletion,
  ChatCompletionChunk,
  ChatCompletionRequest,
  CompletionRequest,
  EmbeddingRequest,
  EmbeddingResponse,
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

export { toChatCompletion, toChatChunks } from './llama-tools.js'
export { toTextCompletion, toTextChunks } from './llama-server-mapping.js'

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
      // A key is `role NUL name`: clients are told the name only.
      modelOf: key => this.nameOf(key),
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
        await stopChild(proc, this.opts.stopGraceMs)
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
    const proc = spawnLlamaServer({
      binary: (this.build as LlamacppBuild).path,
      args,
      env: this.opts.env,
      host: this.opts.host,
      port,
      ring: this.ring(inst.name),
      prefix: inst.role === 'embed' ? '[embeddings] ' : '',
      name: inst.name,
      requestTimeoutMs: this.opts.requestTimeoutMs
    })
    void proc.exited.then(info => { this.onExit(inst, proc, info) })
    return proc
  }

  /** Waits until the child serves (see `waitUntilServing`) and keeps the context it reports. */
  private async waitReady (inst: Instance, proc: RunningProcess): Promise<void> {
    const contextSize = await waitUntilServing(proc, { name: inst.name, stop: inst.stopSignal.signal, loadTimeoutMs: this.opts.loadTimeoutMs, pollMs: LLAMA_SERVER_DEFAULTS.healthPollMs })
    if (contextSize !== undefined) inst.contextSize = contextSize
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
    if (inst.proc !== undefined) await stopChild(inst.proc, this.opts.stopGraceMs)
  }


}
