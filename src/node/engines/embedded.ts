/**
 * The embedded engine: GGUF models run in this process through node-llama-cpp.
 *
 * - Models load on demand: the first request for a model on disk loads it, and concurrent
 *   first requests share that one load.
 * - A loaded model has one LlamaContext with `maxSequences` sequences; each request takes a
 *   free sequence (node-llama-cpp batches the sequences together) and gives it back, and
 *   requests beyond that wait in a bounded FIFO queue.
 * - An idle model is unloaded after its keep-alive. When memory is short (the `maxLoadedBytes`
 *   budget, by default total memory less a reserve, or the memory available), loading a model
 *   first unloads the least recently used idle ones (see `victimsFor`), and node-llama-cpp
 *   finding too little memory for a load makes it unload one more and try again.
 * - Chat messages go through the model's own chat template (the GGUF's Jinja template,
 *   resolved by node-llama-cpp to its matching chat wrapper).
 */
import { EventEmitter } from 'node:events'
import type {
  Llama,
  LlamaContext,
  LlamaContextSequence,
  LlamaEmbeddingContext,
  Token
} from 'node-llama-cpp'
import { loadLib, loadedLib } from './node-llama-lib.js'
import { prepareChat, prepareText, type GenerationJob, type LoadedModel } from './embedded-jobs.js'
import { BadRequestError, InsufficientMemoryError, ModelNotFoundError, ShepherdError } from '../../errors.js'
import { createLogger } from '../../logger.js'
import { AsyncQueue } from './async-queue.js'
import { scanModelsDirs } from './model-dirs.js'
import { raceSignal } from './race-signal.js'
import { defaultThreads } from './constants.js'
import { probeGpu, type GpuProbeResult } from './gpu-probe.js'
import { EMBEDDED_DEFAULTS } from './constants.js'
import { modelFileBytes, type MemoryBudgetOptions } from './memory-budget.js'
import { Residency, type LoadPlan, type StartContext } from './residency.js'
import {
  parseChatRequest,
  parseCompletionRequest,
  parseEmbeddingRequest,
  type ParsedChatRequest,
  type ParsedCompletionRequest
} from './openai-request.js'
import {
  chatChunk,
  chatCompletion,
  chatUsageChunk,
  embeddingObject,
  embeddingSize,
  shapeEmbedding,
  legacyFunctionChunk,
  legacyFunctionCompletion,
  choiceSeed,
  mergeChoices,
  newResponseId,
  textChunk,
  textCompletion,
  textUsageChunk,
  unixNow,
  type GenerationResult,
  type ResponseHeader
} from './openai-response.js'
import type {
  ChatCompletion,
  ChatCompletionChunk,
  ChatCompletionChunkDelta,
  ChatCompletionRequest,
  CompletionRequest,
  EmbeddingRequest,
  EmbeddingResponse,
  TextCompletion,
  TextCompletionChunk
} from './openai-types.js'
import { SlotPool } from './slot-pool.js'
import type {
  Engine,
  EngineCallOptions,
  EngineEvents,
  EngineHealth,
  EngineLoadOptions,
  EngineModel,
  EngineModelState
} from './types.js'

const log = createLogger('engine:embedded')

export type EmbeddedGpu = 'auto' | 'cuda' | 'vulkan' | 'metal' | 'off'

/** A model file the engine can load. `ModelFile` from the resource scanner fits. */
export interface ModelEntry {
  /** The OpenAI `model` name. */
  name: string
  path: string
  sizeBytes?: number
  fingerprint?: string
  /** Trained context length, when known. */
  contextLength?: number | null
}

export interface EmbeddedEngineOptions extends MemoryBudgetOptions {
  /** Engine id. Default `'embedded'`. */
  id?: string
  /** Directories scanned (not recursively) for `*.gguf`; used when `listModelFiles` is not given. */
  modelsDirs?: string[]
  /** Lists the loadable models; wins over `modelsDirs`. Called on every `listModels()`, so keep it cheap. */
  listModelFiles?: () => ModelEntry[]
  /** Resolves a model name to a file path; falls back to the listing. */
  resolveModel?: (name: string) => string | undefined
  /**
   * Before a GPU backend serves, one test decode runs in a child process (see `probeGpu`); a
   * crash there means the CPU is used instead. `false` skips it; a function replaces it (tests).
   */
  gpuProbe?: boolean | ((gpu: string) => Promise<GpuProbeResult>)
  /** Backend passed to node-llama-cpp's `getLlama`. Default `'auto'`. */
  gpu?: EmbeddedGpu
  /** CPU threads for evaluation. Default: one core left free, at most 4 (1 on a 2-core machine). */
  threads?: number
  /** Tokens per sequence, capped by the model's trained length. Default 2048. */
  contextSize?: number
  /** Concurrent requests per loaded model (sequences decoded in one batch). Default 8. */
  maxSequences?: number
  /** Requests that may wait for a sequence per model. Default 64. */
  maxQueue?: number
  /** Idle time before a model is unloaded; `Infinity` keeps models loaded. Default 5 minutes. */
  keepAliveMs?: number
  /**
   * A node-llama-cpp instance to share instead of starting one (`gpu` and `threads` then
   * only shape contexts); the engine leaves it running on `close()`.
   */
  llama?: Llama
}

/** A sensible evaluation thread count: leave a core free for the node, cap at 4. */
/** A request's hold on a loaded model: keeps it from being unloaded for being idle. */
interface Lease {
  lm: LoadedModel
  /** The caller's signal joined with the model's (aborted on unload). */
  signal: AbortSignal
  release: (keepAliveMs: number | undefined) => void
}


/** One request per choice (`n`), each with its own seed (see `choiceSeed`). */
function chatRuns (req: ParsedChatRequest): ParsedChatRequest[] {
  return Array.from({ length: req.sampling.n }, (_, i) => i === 0 ? req : { ...req, sampling: { ...req.sampling, ...choiceSeed(req.sampling.seed, i) } })
}

/** One request per prompt and choice, in OpenAI's order (prompt by prompt, `n` each); `first` marks a prompt's first. */
function textRuns (req: ParsedCompletionRequest): Array<{ run: ParsedCompletionRequest, first: boolean }> {
  return req.prompts.flatMap(prompt => Array.from({ length: req.sampling.n }, (_, i) => ({
    run: { ...req, prompt, sampling: { ...req.sampling, ...choiceSeed(req.sampling.seed, i) } },
    first: i === 0
  })))
}

/** node-llama-cpp's error for a load its memory estimates say cannot fit. */
function isInsufficientMemory (err: unknown): boolean {
  // Its class leaves `name` as 'Error', so the class (or the constructor's name) is the test.
  const lib = loadedLib()
  if (lib !== undefined && err instanceof lib.InsufficientMemoryError) return true
  // Ours shares the name; it means the retrying is already over.
  if (err instanceof ShepherdError || !(err instanceof Error)) return false
  return err.name === 'InsufficientMemoryError' || err.constructor.name === 'InsufficientMemoryError'
}


/**
 * An `Engine` running GGUF models in-process with node-llama-cpp.
 *
 * @example
 * ```ts
 * const engine = new EmbeddedEngine({ modelsDirs: ['/models'], threads: 1 })
 * const res = await engine.chat({ model: 'qwen2.5-0.5b', messages: [{ role: 'user', content: 'hi' }] })
 * await engine.close()
 * ```
 */
export class EmbeddedEngine extends EventEmitter<EngineEvents> implements Engine {
  readonly id: string
  readonly kind = 'embedded' as const

  private readonly opts: Required<Omit<EmbeddedEngineOptions, 'id' | 'modelsDirs' | 'listModelFiles' | 'resolveModel' | 'llama' | keyof MemoryBudgetOptions>>
  private readonly ownsLlama: boolean
  /** Load, keep-alive, pins, memory budget and unload of the loaded models (weights plus context state). */
  private readonly residency: Residency<LoadedModel>
  /** The state and pin last told to listeners, per model. */
  private readonly told = new Map<string, string>()
  private readonly listModelFiles: () => ModelEntry[]
  private readonly resolveModel: ((name: string) => string | undefined) | undefined
  private llamaPromise: Promise<Llama> | undefined
  private llamaError: unknown
  private closed = false
  /** The GPU self-test ran (once per engine). */
  private probed = false

  constructor (options: EmbeddedEngineOptions = {}) {
    super()
    this.id = options.id ?? EMBEDDED_DEFAULTS.id
    this.opts = {
      gpu: options.gpu ?? EMBEDDED_DEFAULTS.gpu,
      threads: options.threads ?? defaultThreads(),
      contextSize: options.contextSize ?? EMBEDDED_DEFAULTS.contextSize,
      maxSequences: options.maxSequences ?? EMBEDDED_DEFAULTS.maxSequences,
      maxQueue: options.maxQueue ?? EMBEDDED_DEFAULTS.maxQueue,
      keepAliveMs: options.keepAliveMs ?? EMBEDDED_DEFAULTS.keepAliveMs,
      gpuProbe: options.gpuProbe ?? true
    }
    for (const key of ['threads', 'contextSize', 'maxSequences'] as const) {
      if (!Number.isInteger(this.opts[key]) || this.opts[key] < 1) throw new RangeError(`${key} must be a positive integer`)
    }
    this.residency = new Residency<LoadedModel>({
      driver: {
        stop: async lm => { await this.disposeLoaded(lm) },
        sizeOf: lm => lm.sizeBytes,
        // Requests still queued for a sequence fail at once rather than wait for one.
        abandon: (lm, reason) => { lm.pool.close(reason) }
      },
      keepAliveMs: this.opts.keepAliveMs,
      maxLoadedBytes: options.maxLoadedBytes,
      memoryReserveBytes: options.memoryReserveBytes,
      availableMemoryBytes: options.availableMemoryBytes,
      onChange: (model, state, pinned) => {
        const now: EngineModelState = state === 'loading' || state === 'loaded' ? state : 'on_disk'
        // Unloading and gone both read on_disk: told once. A pin changing is told though the state stays.
        const told = `${now}:${String(pinned)}`
        if ((this.told.get(model) ?? 'on_disk:false') === told) return
        if (now === 'on_disk') this.told.delete(model)
        else this.told.set(model, told)
        this.emitChange(model, now)
      },
      log: (message, fields) => { log.info(message, fields) }
    })
    this.ownsLlama = options.llama === undefined
    if (options.llama !== undefined) this.llamaPromise = Promise.resolve(options.llama)
    const dirs = options.modelsDirs ?? []
    this.listModelFiles = options.listModelFiles ?? (() => scanModelsDirs(dirs))
    this.resolveModel = options.resolveModel
  }

  // ---- models -------------------------------------------------------------------------

  listModels (): EngineModel[] {
    const out = new Map<string, EngineModel>()
    for (const entry of this.listModelFiles()) {
      out.set(entry.name, this.describe(entry.name, entry))
    }
    // Loaded models stay listed even if their file was since removed from the listing.
    for (const name of this.residency.keys()) {
      if (!out.has(name)) out.set(name, this.describe(name, this.residency.get(name)?.resource?.entry ?? { name, path: '' }))
    }
    return [...out.values()]
  }

  private describe (name: string, entry: ModelEntry): EngineModel {
    const view = this.residency.get(name)
    const state: EngineModelState = view === undefined || view.state === 'unloading' ? 'on_disk' : view.state
    const model: EngineModel = { id: name, state }
    if (entry.fingerprint !== undefined) model.fingerprint = entry.fingerprint
    if (view?.state === 'loaded' && view.resource !== undefined) {
      const lm = view.resource
      model.sizeBytes = lm.sizeBytes
      model.contextLength = lm.context.contextSize
      model.activeRequests = lm.pool.busy
      model.queuedRequests = lm.pool.waiting
      if (view.pinned) model.pinned = true
    } else {
      if (entry.sizeBytes !== undefined) model.sizeBytes = entry.sizeBytes
      if (entry.contextLength != null) model.contextLength = entry.contextLength
    }
    return model
  }

  private findEntry (name: string): ModelEntry {
    const listed = this.listModelFiles().find(e => e.name === name)
    if (listed !== undefined) return listed
    const resolved = this.resolveModel?.(name)
    if (resolved !== undefined) return { name, path: resolved }
    throw new ModelNotFoundError(name)
  }

  /**
   * Loads a model (or joins its load). A negative or infinite keep-alive pins it (a deployment's
   * replica: no idle unload, never evicted, reported to peers); a non-negative one unpins it, so
   * it unloads once idle that long (0: as soon as its running requests end), which is how a
   * replica is retired without cutting requests. See `Residency.load`.
   */
  async load (model: string, options: EngineLoadOptions = {}): Promise<EngineModel> {
    const view = await this.residency.load(model, () => this.loadPlan(model), options)
    return this.describe(model, (view.resource as LoadedModel).entry)
  }

  async unload (model: string): Promise<boolean> {
    return await this.residency.unload(model)
  }

  async health (): Promise<EngineHealth> {
    let loadedModels = 0
    let activeRequests = 0
    let queuedRequests = 0
    for (const name of this.residency.keys()) {
      const lm = this.residency.get(name)
      if (lm?.state !== 'loaded' || lm.resource === undefined) continue
      loadedModels++
      activeRequests += lm.resource.pool.busy
      queuedRequests += lm.resource.pool.waiting
    }
    const health: EngineHealth = { status: 'ok', loadedModels, activeRequests, queuedRequests }
    if (this.closed) {
      health.status = 'down'
      health.detail = 'engine closed'
    } else if (this.llamaError !== undefined) {
      health.status = 'down'
      health.detail = `node-llama-cpp failed to start: ${(this.llamaError as Error).message}`
    }
    return health
  }

  /** See `Engine.setKeepAlive`. */
  setKeepAlive (ms: number): void {
    this.opts.keepAliveMs = ms
    this.residency.setKeepAlive(ms)
  }

  async close (): Promise<void> {
    if (this.closed) return
    this.closed = true
    await this.residency.close()
    if (!this.ownsLlama) return
    const llama = await this.llamaPromise?.catch(() => undefined)
    await llama?.dispose()
  }

  // ---- OpenAI calls -------------------------------------------------------------------

  async chat (body: ChatCompletionRequest, options: EngineCallOptions = {}): Promise<ChatCompletion> {
    const req = parseChatRequest(body, { choices: true })
    const header = this.header('chatcmpl', req.model)
    // `n` choices are whole generations of the same prompt, one after another.
    const parts: ChatCompletion[] = []
    for (const run of chatRuns(req)) {
      parts.push(chatCompletion(header, await this.generate(run, options.signal, lm => prepareChat(lm, run))))
    }
    const completion = parts.length === 1 ? parts[0] : mergeChoices(parts, parts[0].usage?.prompt_tokens ?? 0)
    return req.legacyFunctions === true ? legacyFunctionCompletion(completion) : completion
  }

  async * chatStream (body: ChatCompletionRequest, options: EngineCallOptions = {}): AsyncGenerator<ChatCompletionChunk> {
    const req = parseChatRequest(body, { choices: true })
    const chunks = this.chatChunks(req, options.signal)
    if (req.legacyFunctions !== true) yield * chunks
    else for await (const chunk of chunks) yield legacyFunctionChunk(chunk)
  }

  /** The chunks of every choice, one choice after another (each numbered), then the usage of all. */
  private async * chatChunks (req: ParsedChatRequest, signal: AbortSignal | undefined): AsyncGenerator<ChatCompletionChunk> {
    const header = this.header('chatcmpl', req.model)
    const usage = req.includeUsage
    let promptTokens = 0
    let completionTokens = 0
    for (const [index, run] of chatRuns(req).entries()) {
      yield * this.stream<ChatCompletionChunkDelta, ChatCompletionChunk>(run, signal, {
        first: () => chatChunk(header, { role: 'assistant', content: '' }, null, usage, index),
        piece: delta => chatChunk(header, delta, null, usage, index),
        last: result => {
          promptTokens = result.promptTokens
          completionTokens += result.completionTokens
          return [chatChunk(header, {}, result.finishReason, usage, index)]
        },
        prepare: lm => prepareChat(lm, run)
      })
    }
    if (usage) yield chatUsageChunk(header, promptTokens, completionTokens)
  }

  async completion (body: CompletionRequest, options: EngineCallOptions = {}): Promise<TextCompletion> {
    const req = parseCompletionRequest(body, { choices: true })
    const header = this.header('cmpl', req.model)
    const parts: TextCompletion[] = []
    let promptTokens = 0
    for (const { run, first } of textRuns(req)) {
      const result = await this.generate(run, options.signal, lm => prepareText(lm, run))
      // Each prompt counts once, whatever its `n`.
      if (first) promptTokens += result.promptTokens
      parts.push(textCompletion(header, result))
    }
    return parts.length === 1 ? parts[0] : mergeChoices(parts, promptTokens)
  }

  async * completionStream (body: CompletionRequest, options: EngineCallOptions = {}): AsyncGenerator<TextCompletionChunk> {
    const req = parseCompletionRequest(body, { choices: true })
    const header = this.header('cmpl', req.model)
    const usage = req.includeUsage
    let promptTokens = 0
    let completionTokens = 0
    for (const [index, { run, first }] of textRuns(req).entries()) {
      yield * this.stream<string, TextCompletionChunk>(run, options.signal, {
        first: () => undefined,
        piece: text => textChunk(header, text, null, usage, index),
        last: result => {
          if (first) promptTokens += result.promptTokens
          completionTokens += result.completionTokens
          return [textChunk(header, '', result.finishReason, usage, index)]
        },
        prepare: lm => prepareText(lm, run)
      })
    }
    if (usage) yield textUsageChunk(header, promptTokens, completionTokens)
  }

  async embeddings (body: EmbeddingRequest, options: EngineCallOptions = {}): Promise<EmbeddingResponse> {
    const req = parseEmbeddingRequest(body)
    const lease = await this.use(req.model, options.signal)
    try {
      const { context, contextSize } = await raceSignal(this.embeddingContext(lease.lm), lease.signal)
      const size = embeddingSize(req.model, lease.lm.model.embeddingVectorSize, req.dimensions)
      const inputs = req.inputs.map(input => typeof input === 'string' ? input : input as Token[])
      const lengths = inputs.map(input => context.calculateInputLength(input))
      const tooLong = lengths.findIndex(n => n >= contextSize)
      if (tooLong >= 0) {
        throw new BadRequestError(`input[${tooLong}] has ${lengths[tooLong]} tokens; this model embeds at most ${contextSize - 1}`, 'input', 'context_length_exceeded')
      }
      const data = []
      for (const [index, input] of inputs.entries()) {
        lease.signal.throwIfAborted()
        const { vector } = await context.getEmbeddingFor(input)
        data.push(embeddingObject(index, shapeEmbedding(vector, size), req.encoding))
      }
      const promptTokens = lengths.reduce((a, b) => a + b, 0)
      return { object: 'list', data, model: req.model, usage: { prompt_tokens: promptTokens, total_tokens: promptTokens } }
    } finally {
      lease.release(req.keepAliveMs)
    }
  }

  // ---- generation ---------------------------------------------------------------------

  private header (prefix: 'chatcmpl' | 'cmpl', model: string): ResponseHeader {
    return { id: newResponseId(prefix), created: unixNow(), model }
  }

  /**
   * Runs one generation: takes the model (loading it if needed), checks the prompt against it,
   * waits for a free sequence, generates.
   */
  private async generate<Piece> (
    req: { model: string, keepAliveMs?: number },
    signal: AbortSignal | undefined,
    prepare: (lm: LoadedModel) => Promise<GenerationJob<Piece>>
  ): Promise<GenerationResult> {
    const lease = await this.use(req.model, signal)
    try {
      const job = await prepare(lease.lm)
      const seq = await lease.lm.pool.acquire(lease.signal)
      try {
        return await job.run(seq, lease.signal)
      } finally {
        lease.lm.pool.release(seq)
      }
    } finally {
      lease.release(req.keepAliveMs)
    }
  }

  /**
   * The streaming skeleton shared by chat and text completions. Everything that can fail
   * before generation (load, prompt too long, queue full) fails before the first chunk.
   */
  private async * stream<Piece, Chunk> (
    req: { model: string, keepAliveMs?: number },
    signal: AbortSignal | undefined,
    shape: {
      first: () => Chunk | undefined
      piece: (piece: Piece) => Chunk
      last: (result: GenerationResult) => Chunk[]
      prepare: (lm: LoadedModel) => Promise<GenerationJob<Piece>>
    }
  ): AsyncGenerator<Chunk> {
    // Aborted when the consumer stops iterating early, which must stop generation too.
    const consumerGone = new AbortController()
    const lease = await this.use(req.model, signal === undefined ? consumerGone.signal : AbortSignal.any([signal, consumerGone.signal]))
    let seq: LlamaContextSequence | undefined
    let generation: Promise<GenerationResult> | undefined
    try {
      const job = await shape.prepare(lease.lm)
      seq = await lease.lm.pool.acquire(lease.signal)
      const queue = new AsyncQueue<Piece>()
      generation = job.run(seq, lease.signal, piece => { queue.push(piece) })
      generation.then(() => { queue.end() }, (err: unknown) => { queue.fail(err) })
      const first = shape.first()
      if (first !== undefined) yield first
      for await (const piece of queue) yield shape.piece(piece)
      const result = await generation
      for (const chunk of shape.last(result)) yield chunk
    } finally {
      consumerGone.abort()
      // The sequence goes back only once generation has really stopped using it.
      await generation?.catch(() => {})
      if (seq !== undefined) lease.lm.pool.release(seq)
      lease.release(req.keepAliveMs)
    }
  }

  // ---- model lifecycle ----------------------------------------------------------------

  private emitChange (model: string, state: EngineModelState): void {
    this.emit('change', { model, state })
  }

  /** Takes a lease on a loaded model, loading it first if needed (see `Residency.use`). */
  private async use (name: string, signal?: AbortSignal): Promise<Lease> {
    const lease = await this.residency.use(name, () => this.loadPlan(name), signal)
    return { lm: lease.resource, signal: lease.signal, release: lease.release }
  }

  /** How `name` loads; asked only when it is not loaded, so an unknown name fails before anything starts. */
  private loadPlan (name: string): LoadPlan<LoadedModel> {
    const entry = this.findEntry(name)
    return {
      estimateBytes: modelFileBytes(entry),
      start: async ctx => {
        try {
          return await this.loadModel(entry, ctx)
        } catch (err) {
          if (err instanceof ShepherdError) throw err
          throw new ShepherdError(`Failed to load model '${name}': ${(err as Error).message}`, { code: 'model_load_failed', status: 500, cause: err })
        }
      }
    }
  }

  private async loadModel (entry: ModelEntry, ctx: StartContext): Promise<LoadedModel> {
    await loadLib()
    const llama = await this.llama()
    const started = performance.now()
    const model = await this.retryLowOnMemory(entry.name, ctx, async () => await llama.loadModel({ modelPath: entry.path }))
    try {
      const context = await this.retryLowOnMemory(entry.name, ctx, async () => await model.createContext({
        contextSize: Math.min(this.opts.contextSize, model.trainContextSize),
        sequences: this.opts.maxSequences,
        threads: this.opts.threads
      }))
      const sequences = Array.from({ length: this.opts.maxSequences }, () => context.getSequence())
      log.info('model loaded', { model: entry.name, ms: Math.round(performance.now() - started), contextSize: context.contextSize })
      return {
        name: entry.name,
        entry,
        model,
        context,
        pool: new SlotPool(sequences, this.opts.maxQueue),
        sizeBytes: model.size + context.stateSize
      }
    } catch (err) {
      await model.dispose()
      throw err
    }
  }

  /**
   * Runs a step of a load; when node-llama-cpp finds too little memory for it (its estimates see
   * what ours cannot, VRAM included), unloads the least recently used idle model and tries again,
   * until none is left to unload.
   */
  private async retryLowOnMemory<T> (name: string, ctx: StartContext, step: () => Promise<T>): Promise<T> {
    while (true) {
      try {
        return await step()
      } catch (err) {
        if (!isInsufficientMemory(err)) throw err
        log.info('node-llama-cpp found too little memory; unloading an idle model', { for: name, reason: (err as Error).message })
        if (!await ctx.evictOne()) {
          throw new InsufficientMemoryError(`Not enough memory to load the model '${name}', even with every idle model unloaded`).withCause(err)
        }
      }
    }
  }

  private async disposeLoaded (lm: LoadedModel): Promise<void> {
    const embedding = await lm.embedding?.catch(() => undefined)
    await embedding?.context.dispose()
    await lm.context.dispose()
    await lm.model.dispose()
  }

  private async embeddingContext (lm: LoadedModel): Promise<{ context: LlamaEmbeddingContext, contextSize: number }> {
    if (lm.embedding === undefined) {
      const creating = (async () => {
        const contextSize = Math.min(this.opts.contextSize, lm.model.trainContextSize)
        const context = await lm.model.createEmbeddingContext({ contextSize, threads: this.opts.threads })
        return { context, contextSize }
      })()
      // A failed creation is retried by the next request rather than cached.
      creating.catch(() => { if (lm.embedding === creating) lm.embedding = undefined })
      lm.embedding = creating
    }
    return await lm.embedding
  }

  private async llama (): Promise<Llama> {
    this.llamaPromise ??= loadLib().then(async ({ getLlama, LlamaLogLevel }) => await getLlama({
      gpu: this.opts.gpu === 'off' ? false : this.opts.gpu,
      maxThreads: this.opts.threads,
      // Never compile llama.cpp at run time: use the prebuilt binaries or fail fast.
      build: 'never',
      progressLogs: false,
      logLevel: LlamaLogLevel.warn,
      logger: (level, message) => {
        const text = message.trim()
        if (text.length === 0) return
        if (level === LlamaLogLevel.error || level === LlamaLogLevel.fatal) log.error(text)
        else if (level === LlamaLogLevel.warn) log.warn(text)
        else log.debug(text)
      }
    })).catch((err: unknown) => {
      this.llamaError = err
      this.llamaPromise = undefined
      throw new ShepherdError(`node-llama-cpp is unavailable: ${(err as Error).message}`, { code: 'engine_unavailable', status: 503, cause: err })
    })
    let llama = await this.llamaPromise
    if (llama.gpu !== false && this.ownsLlama && this.opts.gpuProbe !== false && !this.probed) {
      this.probed = true
      const probe = typeof this.opts.gpuProbe === 'function' ? this.opts.gpuProbe : probeGpu
      const result = await probe(String(llama.gpu))
      if (!result.ok) {
        log.warn('the GPU build failed a test decode; serving on the CPU', { gpu: llama.gpu, detail: result.detail })
        await llama.dispose().catch(() => {})
        this.opts.gpu = 'off'
        this.llamaPromise = undefined
        llama = await this.llama()
      }
    }
    this.llamaError = undefined
    return llama
  }
}

