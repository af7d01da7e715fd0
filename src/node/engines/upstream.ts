/**
 * The upstream engine: any OpenAI-compatible server the user runs beside this node (Ollama,
 * vLLM, LM Studio, a llama-server they manage themselves, a hosted API), served as this node's.
 *
 * - Models are what the server's `GET /models` lists, re-read every `modelsRefreshMs`; they are
 *   all `loaded`, since the server decides what it loads.
 * - Health is a probe of the same endpoint every `healthIntervalMs`; unreachable means `down`.
 * - Requests are forwarded with their bodies untouched (unknown fields included), answers are
 *   relayed as the server gives them, streams chunk by chunk.
 * - Endpoints this project does not model (audio, images) pass through as raw bytes.
 */
import { EventEmitter } from 'node:events'
import { BadRequestError, ModelNotFoundError, NoHealthyHostError, ShepherdError } from '../../errors.js'
import { createLogger } from '../../logger.js'
import { OpenAIHttpClient, type PassthroughRequest, type PassthroughResponse } from './openai-http.js'
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
import type { Engine, EngineCallOptions, EngineEvents, EngineHealth, EngineLoadOptions, EngineModel } from './types.js'

const log = createLogger('engine:upstream')

export const UPSTREAM_DEFAULTS = {
  /** How often the model list is re-read. */
  modelsRefreshMs: 10_000,
  /** How often the server is probed. */
  healthIntervalMs: 5_000,
  /** Longest wait for an answer to start, and then between pieces of it. */
  requestTimeoutMs: 5 * 60_000,
  /** Longest wait for a probe of `GET /models`. */
  probeTimeoutMs: 5_000,
  /** A model missing from the list makes the engine re-read it, at most this often. */
  missRefreshMs: 1_000
} as const

export interface UpstreamEngineOptions {
  id: string
  /** The server's OpenAI base URL, e.g. `http://127.0.0.1:11434/v1`. */
  baseUrl: string
  /** Sent to the server as `Authorization: Bearer …`. */
  apiKey?: string
  /** Default 10 s. */
  modelsRefreshMs?: number
  /** Default 5 s. */
  healthIntervalMs?: number
  /** Default 5 minutes. */
  requestTimeoutMs?: number
  /** Default 5 s. */
  probeTimeoutMs?: number
}

interface ListedModel {
  id: string
  contextLength?: number
}

interface Probe {
  at: number
  error?: Error
}

/** Reads `GET /models`: OpenAI's `{ data: [{ id }] }`, with the context length servers add when they do. */
function parseModelList (payload: unknown): ListedModel[] {
  const data = (payload as { data?: unknown } | null)?.data
  if (!Array.isArray(data)) throw new ShepherdError('GET /models did not answer with a model list', { code: 'upstream_invalid_response', status: 502 })
  const out: ListedModel[] = []
  for (const item of data) {
    const m = item as Record<string, unknown> | null
    if (m === null || typeof m !== 'object' || typeof m.id !== 'string' || m.id === '') continue
    const model: ListedModel = { id: m.id }
    // OpenRouter and LM Studio say `context_length`, vLLM `max_model_len`, llama-server `meta.n_ctx_train`.
    const meta = m.meta as Record<string, unknown> | undefined
    const ctx = m.context_length ?? m.max_model_len ?? meta?.n_ctx_train
    if (typeof ctx === 'number' && Number.isInteger(ctx) && ctx > 0) model.contextLength = ctx
    out.push(model)
  }
  return out
}

/** An error's message, with the socket-level cause a connection failure hides behind it. */
function describeError (err: Error): string {
  const cause = err.cause as { message?: unknown, code?: unknown, cause?: { code?: unknown } } | undefined
  const code = cause?.code ?? cause?.cause?.code
  return typeof code === 'string' ? `${err.message} (${code})` : err.message
}

function requireBody (body: unknown): Record<string, unknown> & { model: string } {
  if (body === null || typeof body !== 'object' || Array.isArray(body)) throw new BadRequestError('The request body must be a JSON object')
  const model = (body as { model?: unknown }).model
  if (typeof model !== 'string' || model === '') throw new BadRequestError('model must be a non-empty string', 'model')
  return body as Record<string, unknown> & { model: string }
}

/** The body as a non-streaming request: OpenAI refuses `stream_options` without `stream`. */
function unstreamed (body: Record<string, unknown> & { model: string }): Record<string, unknown> & { model: string } {
  const { stream_options: _streamOptions, ...rest } = body
  return { ...rest, model: body.model, stream: false }
}

function requireObject<T> (value: unknown, what: string): T {
  if (value === null || typeof value !== 'object') {
    throw new ShepherdError(`The upstream's ${what} is not an object`, { code: 'upstream_invalid_response', status: 502 })
  }
  return value as T
}

/**
 * An `Engine` forwarding to an OpenAI-compatible server.
 *
 * @example
 * ```ts
 * const engine = new UpstreamEngine({ id: 'ollama', baseUrl: 'http://127.0.0.1:11434/v1' })
 * for await (const chunk of engine.chatStream({ model: 'llama3.2', messages })) process.stdout.write(chunk.choices[0]?.delta.content ?? '')
 * ```
 */
export class UpstreamEngine extends EventEmitter<EngineEvents> implements Engine {
  readonly id: string
  readonly kind = 'upstream' as const
  readonly baseUrl: string

  private readonly opts: Required<Omit<UpstreamEngineOptions, 'id' | 'baseUrl' | 'apiKey'>>
  private readonly client: OpenAIHttpClient
  private readonly models = new Map<string, ListedModel>()
  private readonly active = new Map<string, number>()
  /** Every request in flight, aborted on close. */
  private readonly requests = new Set<AbortController>()
  private lastList: Probe | undefined
  private listing: Promise<void> | undefined
  private healthTimer: NodeJS.Timeout | undefined
  private modelsTimer: NodeJS.Timeout | undefined
  private closed = false

  constructor (options: UpstreamEngineOptions) {
    super()
    this.id = options.id
    this.opts = {
      modelsRefreshMs: options.modelsRefreshMs ?? UPSTREAM_DEFAULTS.modelsRefreshMs,
      healthIntervalMs: options.healthIntervalMs ?? UPSTREAM_DEFAULTS.healthIntervalMs,
      requestTimeoutMs: options.requestTimeoutMs ?? UPSTREAM_DEFAULTS.requestTimeoutMs,
      probeTimeoutMs: options.probeTimeoutMs ?? UPSTREAM_DEFAULTS.probeTimeoutMs
    }
    for (const key of Object.keys(this.opts) as Array<keyof typeof this.opts>) {
      if (!(this.opts[key] > 0)) throw new RangeError(`${key} must be a positive number`)
    }
    this.client = new OpenAIHttpClient({
      baseUrl: options.baseUrl,
      apiKey: options.apiKey,
      timeoutMs: this.opts.requestTimeoutMs,
      name: `upstream '${this.id}'`
    })
    this.baseUrl = this.client.baseUrl
    this.schedule('models')
    this.schedule('health')
    this.refresh().catch(() => {})
  }

  // ---- models and health --------------------------------------------------------------

  listModels (): EngineModel[] {
    return [...this.models.values()].map(m => this.describe(m))
  }

  private describe (m: ListedModel): EngineModel {
    const model: EngineModel = { id: m.id, state: 'loaded', activeRequests: this.active.get(m.id) ?? 0, queuedRequests: 0 }
    if (m.contextLength !== undefined) model.contextLength = m.contextLength
    return model
  }

  /** The server decides what it has loaded; loading here only checks that it lists the model. */
  async load (model: string, options: EngineLoadOptions = {}): Promise<EngineModel> {
    this.assertOpen()
    await this.requireModel(model, options.signal)
    const listed = this.models.get(model)
    return listed !== undefined ? this.describe(listed) : { id: model, state: 'loaded' }
  }

  /** Nothing to unload: the server manages its own memory. */
  async unload (_model: string): Promise<boolean> {
    return false
  }

  async health (): Promise<EngineHealth> {
    if (this.lastList === undefined && !this.closed) await this.refresh().catch(() => {})
    let activeRequests = 0
    for (const n of this.active.values()) activeRequests += n
    const health: EngineHealth = { status: 'ok', loadedModels: this.models.size, activeRequests, queuedRequests: 0 }
    if (this.closed) {
      health.status = 'down'
      health.detail = 'engine closed'
    } else if (this.lastList?.error !== undefined) {
      health.status = 'down'
      health.detail = `GET ${this.baseUrl}/models failed: ${describeError(this.lastList.error)}`
    }
    return health
  }

  async close (): Promise<void> {
    if (this.closed) return
    this.closed = true
    clearTimeout(this.healthTimer)
    clearTimeout(this.modelsTimer)
    const reason = new ShepherdError('The engine is closed', { code: 'engine_closed', status: 503 })
    for (const controller of this.requests) controller.abort(reason)
    await this.listing?.catch(() => {})
  }

  /** Re-reads the model list now; concurrent calls share one request. Rejects when the server is unreachable. */
  async refresh (): Promise<void> {
    this.listing ??= (async () => {
      try {
        const models = parseModelList(await this.client.getJson('/models', { timeoutMs: this.opts.probeTimeoutMs }))
        this.applyModels(models)
        if (this.lastList?.error !== undefined) log.info('upstream reachable again', { id: this.id })
        this.lastList = { at: Date.now() }
      } catch (err) {
        if (this.lastList?.error === undefined) log.warn('upstream unreachable', { id: this.id, baseUrl: this.baseUrl, err })
        this.lastList = { at: Date.now(), error: err as Error }
        throw err
      } finally {
        this.listing = undefined
      }
    })()
    await this.listing
  }

  private applyModels (models: ListedModel[]): void {
    if (this.closed) return
    const seen = new Set<string>()
    for (const m of models) {
      seen.add(m.id)
      const known = this.models.has(m.id)
      this.models.set(m.id, m)
      if (!known) this.emit('change', { model: m.id, state: 'loaded' })
    }
    for (const id of [...this.models.keys()]) {
      if (seen.has(id)) continue
      this.models.delete(id)
      // Gone from the server: the nearest state there is to "not here".
      this.emit('change', { model: id, state: 'on_disk' })
    }
  }

  private schedule (what: 'models' | 'health'): void {
    if (this.closed) return
    const every = what === 'models' ? this.opts.modelsRefreshMs : this.opts.healthIntervalMs
    const timer = setTimeout(() => {
      // Both read GET /models, so a read that just happened for one counts for the other.
      const fresh = this.lastList !== undefined && Date.now() - this.lastList.at < every / 2
      const run = fresh ? Promise.resolve() : this.refresh()
      run.catch(() => {}).finally(() => { this.schedule(what) })
    }, Math.min(every, 2 ** 31 - 1))
    timer.unref()
    if (what === 'models') this.modelsTimer = timer
    else this.healthTimer = timer
  }

  /**
   * Resolves when the server lists `model`; an unlisted model makes the engine re-read the list
   * once (at most every second) in case it was just added.
   */
  private async requireModel (model: string, signal?: AbortSignal): Promise<void> {
    if (this.models.has(model)) return
    signal?.throwIfAborted()
    const stale = this.lastList === undefined || Date.now() - this.lastList.at >= UPSTREAM_DEFAULTS.missRefreshMs
    let failure = this.lastList?.error
    if (stale || this.listing !== undefined) {
      failure = undefined
      await this.refresh().catch((err: Error) => { failure = err })
    }
    // Without a list, the model's absence says nothing.
    if (failure !== undefined) {
      const down = new NoHealthyHostError(model)
      down.cause = failure
      throw down
    }
    if (!this.models.has(model)) throw new ModelNotFoundError(model)
  }

  private assertOpen (): void {
    if (this.closed) throw new ShepherdError('The engine is closed', { code: 'engine_closed', status: 503 })
  }

  // ---- OpenAI calls -------------------------------------------------------------------

  /**
   * Starts one forwarded request: checks its model, counts it, and joins the caller's signal
   * with the engine's (aborted on close). `end` takes the request's outcome, and a failure to
   * reach the server makes the engine probe it at once so its health follows.
   */
  private async begin (model: string, signal: AbortSignal | undefined): Promise<{ signal: AbortSignal, end: (err?: unknown) => void }> {
    this.assertOpen()
    await this.requireModel(model, signal)
    const controller = new AbortController()
    this.requests.add(controller)
    this.active.set(model, (this.active.get(model) ?? 0) + 1)
    let ended = false
    return {
      signal: signal === undefined ? controller.signal : AbortSignal.any([signal, controller.signal]),
      end: err => {
        if (ended) return
        ended = true
        if (err instanceof NoHealthyHostError) this.refresh().catch(() => {})
        this.requests.delete(controller)
        const n = (this.active.get(model) ?? 1) - 1
        if (n > 0) this.active.set(model, n)
        else this.active.delete(model)
      }
    }
  }

  private async forward<T> (path: string, body: Record<string, unknown> & { model: string }, what: string, signal: AbortSignal | undefined): Promise<T> {
    const req = await this.begin(body.model, signal)
    try {
      const result = requireObject<T>(await this.client.postJson(path, body, { signal: req.signal, model: body.model }), what)
      req.end()
      return result
    } catch (err) {
      req.end(err)
      throw err
    }
  }

  async chat (body: ChatCompletionRequest, options: EngineCallOptions = {}): Promise<ChatCompletion> {
    return await this.forward('/chat/completions', unstreamed(requireBody(body)), 'chat completion', options.signal)
  }

  chatStream (body: ChatCompletionRequest, options: EngineCallOptions = {}): AsyncGenerator<ChatCompletionChunk> {
    return this.forwardStream<ChatCompletionChunk>('/chat/completions', body, options.signal)
  }

  async completion (body: CompletionRequest, options: EngineCallOptions = {}): Promise<TextCompletion> {
    return await this.forward('/completions', unstreamed(requireBody(body)), 'completion', options.signal)
  }

  completionStream (body: CompletionRequest, options: EngineCallOptions = {}): AsyncGenerator<TextCompletionChunk> {
    return this.forwardStream<TextCompletionChunk>('/completions', body, options.signal)
  }

  async embeddings (body: EmbeddingRequest, options: EngineCallOptions = {}): Promise<EmbeddingResponse> {
    return await this.forward('/embeddings', requireBody(body), 'embedding response', options.signal)
  }

  private async * forwardStream<Chunk> (path: string, raw: unknown, signal: AbortSignal | undefined): AsyncGenerator<Chunk> {
    const body = requireBody(raw)
    const req = await this.begin(body.model, signal)
    try {
      for await (const chunk of this.client.postStream<unknown>(path, { ...body, stream: true }, { signal: req.signal, model: body.model })) {
        yield requireObject<Chunk>(chunk, 'stream chunk')
      }
      req.end()
    } catch (err) {
      req.end(err)
      throw err
    } finally {
      // Reached without either above when the consumer stops early.
      req.end()
    }
  }

  // ---- pass-through -------------------------------------------------------------------

  /** Any endpoint may exist on the server; it answers 404 for those it lacks. */
  supportsPassthrough (_path: string): boolean {
    return !this.closed
  }

  /**
   * Forwards a raw request (`/audio/speech`, `/audio/transcriptions`, `/images/generations`)
   * with its body untouched, and relays the server's answer, error statuses included.
   */
  async passthrough (req: PassthroughRequest): Promise<PassthroughResponse> {
    this.assertOpen()
    const controller = new AbortController()
    const signal = req.signal === undefined ? controller.signal : AbortSignal.any([req.signal, controller.signal])
    this.requests.add(controller)
    let res: PassthroughResponse
    try {
      res = await this.client.passthrough({ ...req, signal })
    } catch (err) {
      this.requests.delete(controller)
      if (err instanceof NoHealthyHostError) this.refresh().catch(() => {})
      throw err
    }
    const requests = this.requests
    async function * body (): AsyncGenerator<Uint8Array> {
      try {
        yield * res.body
      } finally {
        requests.delete(controller)
      }
    }
    return { ...res, body: body() }
  }
}
