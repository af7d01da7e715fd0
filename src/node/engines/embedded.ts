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
import { randomInt } from 'node:crypto'
import { EventEmitter } from 'node:events'
import type {
  ChatHistoryItem,
  ChatWrapper,
  Llama,
  LlamaChat,
  LlamaChatResponseChunk,
  LlamaContext,
  LlamaContextSequence,
  LlamaEmbeddingContext,
  LlamaModel,
  Token
} from 'node-llama-cpp'

type NodeLlamaCpp = typeof import('node-llama-cpp')
/**
 * node-llama-cpp is imported when a model is first loaded, not at start: it costs ~35 MB of RSS
 * and ~0.5 s, and a node that never serves a local model never needs it.
 */
let lib: NodeLlamaCpp | undefined
async function loadLib (): Promise<NodeLlamaCpp> {
  lib ??= await import('node-llama-cpp')
  return lib
}
/** The loaded library (every caller runs after a model load, which loaded it). */
function nlc (): NodeLlamaCpp {
  if (lib === undefined) throw new Error('node-llama-cpp is not loaded yet')
  return lib
}
import { BadRequestError, InsufficientMemoryError, ModelNotFoundError, ShepherdError } from '../../errors.js'
import { createLogger } from '../../logger.js'
import { AsyncQueue } from './async-queue.js'
import { holdRequest } from './request-hold.js'
import { grammarFor } from './json-grammar.js'
import { chatHistory, chatModelFunctions, forcedCallInstructions, forcedCallSchema, forcedIsArray, ToolCallCollector, type ParamsChunk } from './tool-calls.js'
import { tokenBiasOption } from './logit-bias.js'
import { scanModelsDirs } from './model-dirs.js'
import { raceSignal } from './race-signal.js'
import { defaultThreads } from './constants.js'
import { probeGpu, type GpuProbeResult } from './gpu-probe.js'
import { EMBEDDED_DEFAULTS } from './constants.js'
import {
  checkMemoryBudgetOptions,
  defaultMemoryLimits,
  modelFileBytes,
  victimsFor,
  type LoadedModelUsage,
  type MemoryBudgetOptions
} from './memory-budget.js'
import {
  parseChatRequest,
  parseCompletionRequest,
  parseEmbeddingRequest,
  type ParsedChatRequest,
  type ParsedCompletionRequest,
  type SamplingParams
} from './openai-request.js'
import {
  chatChunk,
  chatCompletion,
  chatUsageChunk,
  embeddingObject,
  legacyFunctionChunk,
  legacyFunctionCompletion,
  newResponseId,
  normalizeVector,
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
  ChatCompletionChunkToolCall,
  ChatCompletionRequest,
  CompletionRequest,
  EmbeddingRequest,
  EmbeddingResponse,
  FinishReason,
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
  /** Concurrent requests per loaded model. Default 4. */
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

interface LoadedModel {
  name: string
  entry: ModelEntry
  model: LlamaModel
  context: LlamaContext
  /** Resolved on the first chat request: matching a Jinja template to a wrapper takes 0.3 s or more. */
  chatWrapper?: ChatWrapper
  pool: SlotPool<LlamaContextSequence>
  embedding?: Promise<{ context: LlamaEmbeddingContext, contextSize: number }>
  /** One controller per request using the model (queued or generating). */
  requests: Set<AbortController>
  onDrained: Array<() => void>
  lastUsed: number
  /** Loaded for a deployment: never unloaded for idleness. */
  pinned?: boolean
  idleTimer?: NodeJS.Timeout
  /** Weights plus context state. */
  sizeBytes: number
}

type ModelSlotState =
  | { state: 'loading', entry: ModelEntry, promise: Promise<LoadedModel> }
  | { state: 'loaded', loaded: LoadedModel }
  | { state: 'unloading', entry: ModelEntry, promise: Promise<void> }

/**
 * A request checked against its model (prompt tokenized, token budget known) and ready to run
 * on a sequence; `push` receives the pieces of a streamed answer.
 */
interface GenerationJob<Piece> {
  run: (seq: LlamaContextSequence, signal: AbortSignal, push?: (piece: Piece) => void) => Promise<GenerationResult>
}

/** A request's hold on a loaded model: keeps it from being unloaded for being idle. */
interface Lease {
  lm: LoadedModel
  /** The caller's signal joined with the model's (aborted on unload). */
  signal: AbortSignal
  release: (keepAliveMs: number | undefined) => void
}


/** node-llama-cpp's error for a load its memory estimates say cannot fit. */
function isInsufficientMemory (err: unknown): boolean {
  // Its class leaves `name` as 'Error', so the class (or the constructor's name) is the test.
  if (lib !== undefined && err instanceof lib.InsufficientMemoryError) return true
  // Ours shares the name; it means the retrying is already over.
  if (err instanceof ShepherdError || !(err instanceof Error)) return false
  return err.name === 'InsufficientMemoryError' || err.constructor.name === 'InsufficientMemoryError'
}

/** Rejects with the signal's reason if it aborts before `promise` settles. */

function finishReasonOf (stopReason: string): FinishReason {
  return stopReason === 'maxTokens' ? 'length' : 'stop'
}

/** The token node-llama-cpp puts before an input, mirroring its tokenizer rules. */
function beginningToken (model: LlamaModel): Token | null {
  const type = model.vocabularyType
  if (type === nlc().LlamaVocabularyType.rwkv || type === nlc().LlamaVocabularyType.ugm) return null
  if (type === nlc().LlamaVocabularyType.wpm) return model.tokens.bos
  return model.tokens.shouldPrependBosToken ? model.tokens.bos : null
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
  /** Loaded models are weights plus context state, counted against these. */
  private readonly memory: MemoryBudgetOptions
  private readonly listModelFiles: () => ModelEntry[]
  private readonly resolveModel: ((name: string) => string | undefined) | undefined
  private readonly models = new Map<string, ModelSlotState>()
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
    checkMemoryBudgetOptions(options)
    this.memory = {
      maxLoadedBytes: options.maxLoadedBytes,
      memoryReserveBytes: options.memoryReserveBytes,
      availableMemoryBytes: options.availableMemoryBytes
    }
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
    for (const [name, slot] of this.models) {
      if (!out.has(name)) out.set(name, this.describe(name, slot.state === 'loaded' ? slot.loaded.entry : slot.entry))
    }
    return [...out.values()]
  }

  private describe (name: string, entry: ModelEntry): EngineModel {
    const slot = this.models.get(name)
    const state: EngineModelState = slot === undefined || slot.state === 'unloading' ? 'on_disk' : slot.state
    const model: EngineModel = { id: name, state }
    if (entry.fingerprint !== undefined) model.fingerprint = entry.fingerprint
    if (slot?.state === 'loaded') {
      const lm = slot.loaded
      model.sizeBytes = lm.sizeBytes
      model.contextLength = lm.context.contextSize
      model.activeRequests = lm.pool.busy
      model.queuedRequests = lm.pool.waiting
      if (lm.pinned === true) model.pinned = true
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

  async load (model: string, options: EngineLoadOptions = {}): Promise<EngineModel> {
    const lease = await this.use(model, options.signal)
    // A negative or infinite keep-alive pins the model (a deployment's replica): requests with
    // their own keep_alive no longer shorten its life; only unload() ends it.
    // A non-negative keep-alive unpins it: it then unloads once idle for that long (0: as soon
    // as its running requests end), which is how a replica is retired without cutting requests.
    const before = lease.lm.pinned === true
    if (options.keepAliveMs !== undefined) lease.lm.pinned = options.keepAliveMs < 0 || options.keepAliveMs === Infinity
    const pinned = lease.lm.pinned === true
    // Peers see pinning in the snapshot: it is what makes a loaded copy count as a replica.
    if (pinned !== before) this.emitChange(model, 'loaded')
    lease.release(pinned ? Infinity : options.keepAliveMs)
    return this.describe(model, lease.lm.entry)
  }

  async unload (model: string): Promise<boolean> {
    const slot = this.models.get(model)
    if (slot === undefined) return false
    if (slot.state === 'unloading') {
      await slot.promise
      return true
    }
    if (slot.state === 'loading') {
      const loaded = await slot.promise.catch(() => undefined)
      if (loaded === undefined) return false
      return await this.unload(model)
    }
    await this.unloadLoaded(slot.loaded)
    return true
  }

  async health (): Promise<EngineHealth> {
    let loadedModels = 0
    let activeRequests = 0
    let queuedRequests = 0
    for (const slot of this.models.values()) {
      if (slot.state !== 'loaded') continue
      loadedModels++
      activeRequests += slot.loaded.pool.busy
      queuedRequests += slot.loaded.pool.waiting
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
  }

  async close (): Promise<void> {
    if (this.closed) return
    this.closed = true
    await Promise.allSettled([...this.models.keys()].map(async name => await this.unload(name)))
    if (!this.ownsLlama) return
    const llama = await this.llamaPromise?.catch(() => undefined)
    await llama?.dispose()
  }

  // ---- OpenAI calls -------------------------------------------------------------------

  async chat (body: ChatCompletionRequest, options: EngineCallOptions = {}): Promise<ChatCompletion> {
    const req = parseChatRequest(body)
    const header = this.header('chatcmpl', req.model)
    const result = await this.generate(req, options.signal, lm => this.prepareChat(lm, req))
    const completion = chatCompletion(header, result)
    return req.legacyFunctions === true ? legacyFunctionCompletion(completion) : completion
  }

  async * chatStream (body: ChatCompletionRequest, options: EngineCallOptions = {}): AsyncGenerator<ChatCompletionChunk> {
    const req = parseChatRequest(body)
    const chunks = this.chatChunks(req, options.signal)
    if (req.legacyFunctions !== true) yield * chunks
    else for await (const chunk of chunks) yield legacyFunctionChunk(chunk)
  }

  private async * chatChunks (req: ParsedChatRequest, signal: AbortSignal | undefined): AsyncGenerator<ChatCompletionChunk> {
    const header = this.header('chatcmpl', req.model)
    const usage = req.includeUsage
    yield * this.stream<ChatCompletionChunkDelta, ChatCompletionChunk>(req, signal, {
      first: () => chatChunk(header, { role: 'assistant', content: '' }, null, usage),
      piece: delta => chatChunk(header, delta, null, usage),
      last: result => [
        chatChunk(header, {}, result.finishReason, usage),
        ...(usage ? [chatUsageChunk(header, result.promptTokens, result.completionTokens)] : [])
      ],
      prepare: lm => this.prepareChat(lm, req)
    })
  }

  async completion (body: CompletionRequest, options: EngineCallOptions = {}): Promise<TextCompletion> {
    const req = parseCompletionRequest(body)
    const header = this.header('cmpl', req.model)
    const result = await this.generate(req, options.signal, lm => this.prepareText(lm, req))
    return textCompletion(header, result)
  }

  async * completionStream (body: CompletionRequest, options: EngineCallOptions = {}): AsyncGenerator<TextCompletionChunk> {
    const req = parseCompletionRequest(body)
    const header = this.header('cmpl', req.model)
    const usage = req.includeUsage
    yield * this.stream<string, TextCompletionChunk>(req, options.signal, {
      first: () => undefined,
      piece: text => textChunk(header, text, null, usage),
      last: result => [
        textChunk(header, '', result.finishReason, usage),
        ...(usage ? [textUsageChunk(header, result.promptTokens, result.completionTokens)] : [])
      ],
      prepare: lm => this.prepareText(lm, req)
    })
  }

  async embeddings (body: EmbeddingRequest, options: EngineCallOptions = {}): Promise<EmbeddingResponse> {
    const req = parseEmbeddingRequest(body)
    const lease = await this.use(req.model, options.signal)
    try {
      const { context, contextSize } = await raceSignal(this.embeddingContext(lease.lm), lease.signal)
      const dims = lease.lm.model.embeddingVectorSize
      if (req.dimensions !== undefined && req.dimensions !== dims) {
        throw new BadRequestError(`Model '${req.model}' makes ${dims}-dimensional embeddings; dimensions=${req.dimensions} is not supported`, 'dimensions', 'unsupported_parameter')
      }
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
        data.push(embeddingObject(index, normalizeVector(vector), req.encoding))
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

  /** Tokens the request may generate: what it asked for, capped by the context left. */
  private tokenBudget (lm: LoadedModel, promptTokens: number, requested: number | undefined, param: string): number {
    const contextSize = lm.context.contextSize
    const room = contextSize - promptTokens - 1
    if (room < 1) {
      throw new BadRequestError(`The prompt has ${promptTokens} tokens; this model's context holds ${contextSize}`, param, 'context_length_exceeded')
    }
    return Math.min(requested ?? room, room)
  }

  private samplingOptions (s: SamplingParams, maxTokens: number): {
    temperature: number
    topP: number
    topK: number
    minP: number
    seed: number
    maxTokens: number
    customStopTriggers?: string[]
    repeatPenalty: false | { penalty: number, frequencyPenalty: number, presencePenalty: number }
  } {
    const penalize = s.frequencyPenalty !== 0 || s.presencePenalty !== 0 || s.repeatPenalty !== 1
    return {
      temperature: s.temperature,
      topP: s.topP,
      topK: s.topK,
      minP: s.minP,
      // Without a seed node-llama-cpp samples with a fixed one; the OpenAI API varies per request.
      seed: s.seed ?? randomInt(2 ** 32),
      maxTokens,
      ...(s.stop.length > 0 ? { customStopTriggers: s.stop } : {}),
      // node-llama-cpp penalizes repeats by default; the OpenAI API does not unless asked.
      repeatPenalty: penalize ? { penalty: s.repeatPenalty, frequencyPenalty: s.frequencyPenalty, presencePenalty: s.presencePenalty } : false
    }
  }

  private async prepareChat (lm: LoadedModel, req: ParsedChatRequest): Promise<GenerationJob<ChatCompletionChunkDelta>> {
    // `tool_choice: "none"` offers no tools; "required" or a named function forces a call by grammar.
    const tools = req.toolChoice?.type === 'none' ? undefined : req.tools
    const choice = req.toolChoice
    const forced = tools !== undefined && choice !== undefined && (choice.type === 'required' || choice.type === 'function') ? choice : undefined
    const parallel = req.parallelToolCalls ?? true
    let history = chatHistory(req.messages)
    if (forced !== undefined && tools !== undefined) {
      const instructions = forcedCallInstructions(tools, forced, parallel)
      const first = history[0]
      history = first?.type === 'system'
        ? [{ type: 'system', text: `${first.text}\n\n${instructions}` }, ...history.slice(1)]
        : [{ type: 'system', text: instructions }, ...history]
    }
    // Offered through the model's own template (node-llama-cpp's function calling) when not forced.
    const functions = tools !== undefined && forced === undefined ? chatModelFunctions(tools) : undefined
    // A trailing assistant message (or tool results) is a prefix the model continues; otherwise a new turn opens.
    const rendered: ChatHistoryItem[] = history.at(-1)?.type === 'model' ? history : [...history, { type: 'model', response: [] }]
    lm.chatWrapper ??= nlc().resolveChatWrapper(lm.model)
    const chatWrapper = lm.chatWrapper
    const promptTokens = chatWrapper.generateContextState({ chatHistory: rendered, availableFunctions: functions, documentFunctionParams: true })
      .contextText.tokenize(lm.model.tokenizer).length
    const { customStopTriggers, ...baseSampling } = this.samplingOptions(req.sampling, this.tokenBudget(lm, promptTokens, req.sampling.maxTokens, 'messages'))
    const sampling = {
      ...baseSampling,
      // A stop sequence would cut a forced call's JSON short.
      ...(customStopTriggers !== undefined && forced === undefined ? { customStopTriggers } : {}),
      ...tokenBiasOption(nlc().TokenBias, lm.model, req.sampling.logitBias)
    }
    // Structured output or a forced call: the grammar only lets through text that parses (and fits the schema).
    const grammar = forced !== undefined && tools !== undefined
      ? await grammarFor(lm.model.llama, { type: 'json_schema', name: 'tool_calls', schema: {}, strict: true, grammarSchema: forcedCallSchema(tools, forced, parallel) }, 'chat')
        .catch((err: unknown) => { throw err instanceof BadRequestError ? new BadRequestError(err.message.replace(/^response_format/, 'tools'), 'tools', err.code) : err })
      : req.responseFormat === undefined ? undefined : await grammarFor(lm.model.llama, req.responseFormat, 'chat')
    return {
      run: async (seq, signal, push) => {
        const chat = new (nlc().LlamaChat)({ contextSequence: seq, chatWrapper, autoDisposeSequence: false })
        const before = seq.tokenMeter.getState()
        const collector = new ToolCallCollector(forced === undefined ? undefined : { array: forcedIsArray(forced, parallel) })
        const pushCalls = (deltas: ChatCompletionChunkToolCall[]): void => { if (deltas.length > 0) push?.({ tool_calls: deltas }) }
        // node-llama-cpp takes either a grammar or functions, never both.
        const constraint = functions !== undefined
          ? {
              functions,
              documentFunctionParams: true,
              ...(parallel ? {} : { maxParallelFunctionCalls: 1 }),
              onFunctionCallParamsChunk: (chunk: ParamsChunk) => { pushCalls(collector.params(chunk)) }
            }
          : grammar !== undefined ? { grammar } : {}
        try {
          const res = await chat.generateResponse(history, {
            ...sampling,
            ...constraint,
            signal,
            onResponseChunk: (chunk: LlamaChatResponseChunk) => {
              if (chunk.type === undefined) {
                if (collector.forced) pushCalls(collector.text(chunk.text))
                else push?.({ content: chunk.text })
              } else if (chunk.segmentType === 'thought') push?.({ reasoning_content: chunk.text })
            }
          } as Parameters<LlamaChat['generateResponse']>[1])
          const reasoning = res.fullResponse
            .map(item => typeof item !== 'string' && item.segmentType === 'thought' ? item.text : '')
            .join('')
          const { calls, deltas } = collector.finish(res.functionCalls as Array<{ functionName: string, params: unknown }> | undefined)
          pushCalls(deltas)
          const finishReason = finishReasonOf(res.metadata.stopReason)
          return {
            text: collector.forced ? '' : res.response,
            reasoning,
            finishReason: calls.length > 0 && finishReason !== 'length' ? 'tool_calls' : finishReason,
            promptTokens,
            completionTokens: seq.tokenMeter.diff(before).usedOutputTokens,
            ...(calls.length > 0 ? { toolCalls: calls } : {})
          }
        } finally {
          chat.dispose()
        }
      }
    }
  }

  private async prepareText (lm: LoadedModel, req: ParsedCompletionRequest): Promise<GenerationJob<string>> {
    const bos = beginningToken(lm.model)
    let tokens: Token[]
    if (typeof req.prompt === 'string') {
      tokens = lm.model.tokenize(req.prompt, false, bos !== null ? 'trimLeadingSpace' : undefined)
    } else {
      tokens = req.prompt as Token[]
      // node-llama-cpp adds the BOS itself; a client that already did would get two.
      if (bos !== null && tokens[0] === bos) tokens = tokens.slice(1)
    }
    const promptTokens = tokens.length + (bos !== null ? 1 : 0)
    const sampling = {
      ...this.samplingOptions(req.sampling, this.tokenBudget(lm, promptTokens, req.sampling.maxTokens, 'prompt')),
      ...tokenBiasOption(nlc().TokenBias, lm.model, req.sampling.logitBias)
    }
    const echo = req.echo ? (typeof req.prompt === 'string' ? req.prompt : lm.model.detokenize(tokens)) : ''
    const grammar = req.responseFormat === undefined ? undefined : await grammarFor(lm.model.llama, req.responseFormat, 'completion')
    return {
      run: async (seq, signal, push) => {
        if (echo.length > 0) push?.(echo)
        const completion = new (nlc().LlamaCompletion)({ contextSequence: seq })
        const before = seq.tokenMeter.getState()
        try {
          const res = await completion.generateCompletionWithMeta(tokens, {
            ...sampling,
            ...(grammar !== undefined ? { grammar } : {}),
            signal,
            // The budget already keeps generation inside the context; no shifting, and the
            // whole prompt is kept (the default would cut one longer than 90% of the context).
            disableContextShift: true,
            contextShiftSize: 1,
            onTextChunk: text => { push?.(text) }
          })
          return {
            text: echo + res.response,
            reasoning: '',
            finishReason: finishReasonOf(res.metadata.stopReason),
            promptTokens,
            completionTokens: seq.tokenMeter.diff(before).usedOutputTokens
          }
        } finally {
          completion.dispose()
        }
      }
    }
  }

  // ---- model lifecycle ----------------------------------------------------------------

  private emitChange (model: string, state: EngineModelState): void {
    this.emit('change', { model, state })
  }

  /**
   * Takes a lease on a loaded model, loading it first if needed. Loops because a model can
   * be unloading when asked for (wait, then load again).
   */
  private async use (name: string, signal?: AbortSignal): Promise<Lease> {
    while (true) {
      if (this.closed) throw new ShepherdError('The engine is closed', { code: 'engine_closed', status: 503 })
      signal?.throwIfAborted()
      const slot = this.models.get(name)
      if (slot?.state === 'loaded') return this.lease(slot.loaded, signal)
      if (slot?.state === 'unloading') {
        await raceSignal(slot.promise.catch(() => {}), signal)
        continue
      }
      // Only a load under way or started here; its failure is every waiter's failure.
      await raceSignal(slot?.state === 'loading' ? slot.promise : this.startLoad(name), signal)
    }
  }

  private lease (lm: LoadedModel, signal: AbortSignal | undefined): Lease {
    const hold = holdRequest(lm, signal, keepAliveMs => { this.scheduleIdleUnload(lm, keepAliveMs ?? this.opts.keepAliveMs) })
    return { lm, ...hold }
  }

  private scheduleIdleUnload (lm: LoadedModel, keepAliveMs: number): void {
    clearTimeout(lm.idleTimer)
    lm.idleTimer = undefined
    if (keepAliveMs === Infinity || lm.pinned === true) return
    lm.idleTimer = setTimeout(() => {
      const slot = this.models.get(lm.name)
      if (lm.requests.size > 0 || slot?.state !== 'loaded' || slot.loaded !== lm) return
      log.debug('idle model unloaded', { model: lm.name, keepAliveMs })
      this.unloadLoaded(lm).catch(err => { log.warn('unloading an idle model failed', { model: lm.name, err }) })
    }, Math.min(keepAliveMs, 2 ** 31 - 1))
    lm.idleTimer.unref()
  }

  private startLoad (name: string): Promise<LoadedModel> {
    const entry = this.findEntry(name)
    const promise = (async () => {
      let lm: LoadedModel
      try {
        lm = await this.loadModel(entry)
      } catch (err) {
        this.models.delete(name)
        this.emitChange(name, 'on_disk')
        if (err instanceof ShepherdError) throw err
        throw new ShepherdError(`Failed to load model '${name}': ${(err as Error).message}`, { code: 'model_load_failed', status: 500, cause: err })
      }
      if (this.closed) {
        this.models.delete(name)
        await this.disposeLoaded(lm)
        this.emitChange(name, 'on_disk')
        throw new ShepherdError('The engine is closed', { code: 'engine_closed', status: 503 })
      }
      this.models.set(name, { state: 'loaded', loaded: lm })
      this.emitChange(name, 'loaded')
      return lm
    })()
    // Set before the load's first await resumes, so every later request joins this load.
    this.models.set(name, { state: 'loading', entry, promise })
    this.emitChange(name, 'loading')
    return promise
  }

  private async loadModel (entry: ModelEntry): Promise<LoadedModel> {
    await this.makeRoomFor(entry)
    await loadLib()
    const llama = await this.llama()
    const started = performance.now()
    const model = await this.retryLowOnMemory(entry.name, async () => await llama.loadModel({ modelPath: entry.path }))
    try {
      const context = await this.retryLowOnMemory(entry.name, async () => await model.createContext({
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
        requests: new Set(),
        onDrained: [],
        lastUsed: Date.now(),
        sizeBytes: model.size + context.stateSize
      }
    } catch (err) {
      await model.dispose()
      throw err
    }
  }

  /**
   * Unloads least recently used idle models until `entry` fits the memory limits (see
   * `victimsFor`). Its size is the file's: the context's state is not known before loading.
   */
  private async makeRoomFor (entry: ModelEntry): Promise<void> {
    const usage: LoadedModelUsage[] = []
    const loaded = new Map<string, LoadedModel>()
    for (const [name, slot] of this.models) {
      if (name === entry.name) continue
      if (slot.state === 'loaded') {
        const lm = slot.loaded
        loaded.set(name, lm)
        usage.push({ name, sizeBytes: lm.sizeBytes, lastUsed: lm.lastUsed, busy: !this.evictable(lm) })
      } else if (slot.state === 'loading') {
        // Another load under way will hold its memory soon; it can only count, not give room.
        usage.push({ name, sizeBytes: modelFileBytes(slot.entry), lastUsed: Infinity, busy: true })
      }
    }
    for (const name of victimsFor(usage, modelFileBytes(entry), defaultMemoryLimits(this.memory))) {
      const lm = loaded.get(name) as LoadedModel
      const slot = this.models.get(name)
      // A request may have taken it while an earlier one was unloading: unloading it now would cut that request.
      if (slot?.state !== 'loaded' || slot.loaded !== lm || !this.evictable(lm)) continue
      log.info('unloading least recently used model to make room', { model: name, for: entry.name })
      await this.unloadLoaded(lm)
    }
  }

  /**
   * Idle and not pinned. A pinned model is a deployment's replica: unloading it for room would
   * only have the scheduler place it again, pushing out something else.
   */
  private evictable (lm: LoadedModel): boolean {
    return lm.requests.size === 0 && lm.pinned !== true
  }

  /**
   * Runs a step of a load; when node-llama-cpp finds too little memory for it (its estimates see
   * what ours cannot, VRAM included), unloads the least recently used idle model and tries again,
   * until none is left to unload.
   */
  private async retryLowOnMemory<T> (name: string, step: () => Promise<T>): Promise<T> {
    while (true) {
      try {
        return await step()
      } catch (err) {
        if (!isInsufficientMemory(err)) throw err
        const victim = [...this.models.values()]
          .flatMap(s => s.state === 'loaded' && s.loaded.name !== name && this.evictable(s.loaded) ? [s.loaded] : [])
          .sort((a, b) => a.lastUsed - b.lastUsed)[0]
        if (victim === undefined) {
          throw new InsufficientMemoryError(`Not enough memory to load the model '${name}', even with every idle model unloaded`).withCause(err)
        }
        log.info('unloading least recently used model to make room', { model: victim.name, for: name, reason: (err as Error).message })
        await this.unloadLoaded(victim)
      }
    }
  }

  private async unloadLoaded (lm: LoadedModel): Promise<void> {
    const current = this.models.get(lm.name)
    if (current?.state === 'unloading') return await current.promise
    if (current?.state !== 'loaded' || current.loaded !== lm) return
    clearTimeout(lm.idleTimer)
    const reason = new ShepherdError(`The model '${lm.name}' was unloaded`, { code: 'model_unloaded', status: 503 })
    lm.pool.close(reason)
    for (const controller of lm.requests) controller.abort(reason)
    const promise = (async () => {
      if (lm.requests.size > 0) await new Promise<void>(resolve => { lm.onDrained.push(resolve) })
      await this.disposeLoaded(lm)
    })()
    this.models.set(lm.name, { state: 'unloading', entry: lm.entry, promise })
    this.emitChange(lm.name, 'on_disk')
    try {
      await promise
    } finally {
      const slot = this.models.get(lm.name)
      if (slot?.state === 'unloading' && slot.promise === promise) this.models.delete(lm.name)
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

