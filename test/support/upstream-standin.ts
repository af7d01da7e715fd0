/**
 * A stand-in for a third-party OpenAI-compatible server (Ollama, vLLM, LM Studio, a hosted
 * API) that a user runs beside shepherd-mesh and points an upstream engine at. It is not part
 * of shepherd-mesh and shares no code with it: a small node:http server on 127.0.0.1 that
 * answers in the OpenAI API's shapes, so tests can exercise the upstream engine end to end.
 *
 * - `GET /v1/models`, `POST /v1/chat/completions` and `/v1/completions` (streamed or not),
 *   `/v1/embeddings`, `/v1/audio/speech` (binary), `/v1/audio/transcriptions` (multipart in,
 *   a digest of the bytes received out), `/v1/images/generations`.
 * - Answers are deterministic: chat echoes the last user message word by word.
 * - Configurable latency before answering and between stream chunks; failure injection (HTTP
 *   errors, hanging, cutting the connection mid-stream); every request is counted and kept.
 */
import { createHash, randomUUID } from 'node:crypto'
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http'
import type { Socket } from 'node:net'

/** What the next matching requests get instead of an answer. */
export type StandinFailure =
  /** An OpenAI-shaped error with this status. */
  | { kind: 'status', status: number, message?: string }
  /** The request is read and never answered (until the stand-in closes). */
  | { kind: 'hang' }
  /** The connection is cut: streams after `afterChunks` events (default 2), other answers at once. */
  | { kind: 'drop', afterChunks?: number }

export interface UpstreamStandinOptions {
  /** Model ids listed and served. Default `['standin-chat', 'standin-embed']`. */
  models?: string[]
  /** When set, requests must carry `Authorization: Bearer <apiKey>`. */
  apiKey?: string
  /** Delay before each answer starts (ms). Default 0. */
  latencyMs?: number
  /** Delay between stream events (ms). Default 0. */
  chunkDelayMs?: number
  /** Width of the embeddings. Default 8. */
  embeddingDims?: number
}

export interface ReceivedRequest {
  method: string
  /** Path without the query, e.g. `/v1/chat/completions`. */
  path: string
  headers: IncomingMessage['headers']
  body: Buffer
}

interface PendingFailure {
  failure: StandinFailure
  times: number
  path?: string
}

const sleep = async (ms: number): Promise<void> => { if (ms > 0) await new Promise(resolve => setTimeout(resolve, ms)) }

function words (text: string): string[] {
  return text.split(/\s+/).filter(w => w !== '')
}

/** Deterministic unit vector for a text: its SHA-256 bytes, centred and normalized. */
function embedText (text: string, dims: number): number[] {
  const values: number[] = []
  let block = 0
  while (values.length < dims) {
    const digest = createHash('sha256').update(`${block++}:${text}`).digest()
    for (const byte of digest) {
      if (values.length === dims) break
      values.push(byte / 255 - 0.5)
    }
  }
  const norm = Math.sqrt(values.reduce((s, v) => s + v * v, 0))
  return values.map(v => Math.fround(v / norm))
}

/** Deterministic bytes standing in for audio: a counter pattern seeded by the input text. */
function speechBytes (input: string, length: number): Buffer {
  const seed = createHash('sha256').update(input).digest()
  const out = Buffer.alloc(length)
  for (let i = 0; i < length; i++) out[i] = (seed[i % seed.length] + i) & 0xff
  return out
}

export class UpstreamStandin {
  models: string[]
  latencyMs: number
  chunkDelayMs: number
  readonly apiKey: string | undefined
  readonly embeddingDims: number
  /** Every request received, in order. */
  readonly received: ReceivedRequest[] = []
  /** Answers whose connection closed before they were complete (the client went away, or a drop). */
  closedEarly = 0

  private readonly server: Server
  private readonly sockets = new Set<Socket>()
  private readonly failures: PendingFailure[] = []
  private port = 0

  private constructor (options: UpstreamStandinOptions) {
    this.models = options.models ?? ['standin-chat', 'standin-embed']
    this.apiKey = options.apiKey
    this.latencyMs = options.latencyMs ?? 0
    this.chunkDelayMs = options.chunkDelayMs ?? 0
    this.embeddingDims = options.embeddingDims ?? 8
    this.server = createServer((req, res) => { this.handle(req, res).catch(() => { res.destroy() }) })
    this.server.on('connection', socket => {
      this.sockets.add(socket)
      socket.once('close', () => { this.sockets.delete(socket) })
    })
  }

  /** Starts a stand-in on a free loopback port. */
  static async start (options: UpstreamStandinOptions = {}): Promise<UpstreamStandin> {
    const standin = new UpstreamStandin(options)
    await new Promise<void>((resolve, reject) => {
      standin.server.once('error', reject)
      standin.server.listen(0, '127.0.0.1', () => { resolve() })
    })
    const address = standin.server.address()
    standin.port = typeof address === 'object' && address !== null ? address.port : 0
    return standin
  }

  /** The OpenAI base URL, e.g. `http://127.0.0.1:41234/v1`. */
  get url (): string {
    return `http://127.0.0.1:${this.port}/v1`
  }

  /** Requests received for `path` (e.g. `/v1/models`), or all of them. */
  count (path?: string): number {
    return path === undefined ? this.received.length : this.received.filter(r => r.path === path).length
  }

  /** The next `times` requests (for `path`, or any) fail with `failure`. */
  failNext (failure: StandinFailure, times = 1, path?: string): void {
    this.failures.push({ failure, times, ...(path !== undefined ? { path } : {}) })
  }

  /** Open connections, hung ones included. */
  get openConnections (): number {
    return this.sockets.size
  }

  async close (): Promise<void> {
    for (const socket of this.sockets) socket.destroy()
    await new Promise<void>(resolve => { this.server.close(() => { resolve() }) })
  }

  private takeFailure (path: string): StandinFailure | undefined {
    const i = this.failures.findIndex(f => f.path === undefined || f.path === path)
    if (i < 0) return undefined
    const pending = this.failures[i]
    if (--pending.times <= 0) this.failures.splice(i, 1)
    return pending.failure
  }

  private async handle (req: IncomingMessage, res: ServerResponse): Promise<void> {
    res.once('close', () => { if (!res.writableFinished) this.closedEarly++ })
    const chunks: Buffer[] = []
    for await (const chunk of req) chunks.push(chunk as Buffer)
    const path = (req.url ?? '/').split('?')[0]
    const received: ReceivedRequest = { method: req.method ?? 'GET', path, headers: req.headers, body: Buffer.concat(chunks) }
    this.received.push(received)

    await sleep(this.latencyMs)
    if (this.apiKey !== undefined && req.headers.authorization !== `Bearer ${this.apiKey}`) {
      this.error(res, 401, 'Incorrect API key provided', 'invalid_api_key'); return
    }
    const failure = this.takeFailure(path)
    if (failure?.kind === 'hang') return
    if (failure?.kind === 'status') {
      this.error(res, failure.status, failure.message ?? `injected failure ${failure.status}`, failure.status >= 500 ? 'server_error' : 'injected'); return
    }
    const dropAfter = failure?.kind === 'drop' ? failure.afterChunks ?? 2 : undefined

    const route = `${received.method} ${path}`
    if (route === 'GET /v1/models') {
      this.json(res, 200, { object: 'list', data: this.models.map(id => ({ id, object: 'model', created: 1700000000, owned_by: 'standin' })) }); return
    }
    if (route === 'POST /v1/audio/transcriptions') {
      if (dropAfter !== undefined) { res.destroy(); return }
      const digest = createHash('sha256').update(received.body).digest('hex')
      this.json(res, 200, { text: `received ${received.body.length} bytes sha256 ${digest}`, content_type: req.headers['content-type'] ?? null }); return
    }

    let body: Record<string, unknown>
    try {
      body = JSON.parse(received.body.toString('utf8')) as Record<string, unknown>
      if (body === null || typeof body !== 'object') throw new Error('not an object')
    } catch {
      this.error(res, 400, 'We could not parse the JSON body of your request.', 'invalid_json'); return
    }
    const model = body.model
    if (typeof model !== 'string') { this.error(res, 400, 'you must provide a model parameter', 'missing_model', 'model'); return }
    if (!this.models.includes(model)) { this.error(res, 404, `The model '${model}' does not exist`, 'model_not_found', 'model'); return }
    if (dropAfter !== undefined && body.stream !== true) { res.destroy(); return }

    switch (route) {
      case 'POST /v1/chat/completions': await this.chat(res, body, model, dropAfter); return
      case 'POST /v1/completions': await this.completion(res, body, model, dropAfter); return
      case 'POST /v1/embeddings': this.embeddings(res, body, model); return
      case 'POST /v1/audio/speech': await this.speech(res, body); return
      case 'POST /v1/images/generations':
        this.json(res, 200, { created: Math.floor(Date.now() / 1000), data: [{ b64_json: speechBytes(String(body.prompt), 64).toString('base64') }] }); return
      default: this.error(res, 404, `Unknown request URL: ${route}`, 'unknown_url')
    }
  }

  /** The answer to a prompt: "you said" and the prompt's words, cut at `max_tokens` words. */
  private answer (prompt: string, body: Record<string, unknown>): { pieces: string[], finish: 'stop' | 'length', promptTokens: number } {
    const all = ['You', 'said', ...words(prompt)]
    const max = typeof body.max_tokens === 'number' ? body.max_tokens : typeof body.max_completion_tokens === 'number' ? body.max_completion_tokens : Infinity
    const kept = all.slice(0, max)
    return { pieces: kept.map((w, i) => i === 0 ? w : ` ${w}`), finish: kept.length < all.length ? 'length' : 'stop', promptTokens: words(prompt).length + 1 }
  }

  private async chat (res: ServerResponse, body: Record<string, unknown>, model: string, dropAfter: number | undefined): Promise<void> {
    const messages = body.messages
    if (!Array.isArray(messages) || messages.length === 0) { this.error(res, 400, "'messages' must be a non-empty array", 'invalid_value', 'messages'); return }
    const lastUser = [...messages].reverse().find((m: { role?: unknown }) => m?.role === 'user') as { content?: unknown } | undefined
    const { pieces, finish, promptTokens } = this.answer(typeof lastUser?.content === 'string' ? lastUser.content : '', body)
    const usage = { prompt_tokens: promptTokens, completion_tokens: pieces.length, total_tokens: promptTokens + pieces.length }
    const head = { id: `chatcmpl-${randomUUID().replaceAll('-', '')}`, created: Math.floor(Date.now() / 1000), model, system_fingerprint: 'fp_standin' }
    if (body.stream !== true) {
      this.json(res, 200, {
        ...head,
        object: 'chat.completion',
        choices: [{ index: 0, message: { role: 'assistant', content: pieces.join(''), refusal: null }, logprobs: null, finish_reason: finish }],
        usage
      })
      return
    }
    const includeUsage = (body.stream_options as { include_usage?: unknown } | undefined)?.include_usage === true
    const chunk = (delta: Record<string, unknown>, finishReason: string | null): Record<string, unknown> => ({
      ...head, object: 'chat.completion.chunk', choices: [{ index: 0, delta, logprobs: null, finish_reason: finishReason }], ...(includeUsage ? { usage: null } : {})
    })
    const events = [
      chunk({ role: 'assistant', content: '' }, null),
      ...pieces.map(p => chunk({ content: p }, null)),
      chunk({}, finish),
      ...(includeUsage ? [{ ...head, object: 'chat.completion.chunk', choices: [], usage }] : [])
    ]
    await this.sse(res, events, dropAfter)
  }

  private async completion (res: ServerResponse, body: Record<string, unknown>, model: string, dropAfter: number | undefined): Promise<void> {
    const prompt = Array.isArray(body.prompt) ? String(body.prompt[0] ?? '') : String(body.prompt ?? '')
    const { pieces, finish, promptTokens } = this.answer(prompt, body)
    const usage = { prompt_tokens: promptTokens, completion_tokens: pieces.length, total_tokens: promptTokens + pieces.length }
    const head = { id: `cmpl-${randomUUID().replaceAll('-', '')}`, object: 'text_completion', created: Math.floor(Date.now() / 1000), model }
    if (body.stream !== true) {
      this.json(res, 200, { ...head, choices: [{ text: pieces.join(''), index: 0, logprobs: null, finish_reason: finish }], usage })
      return
    }
    const events = [
      ...pieces.map(p => ({ ...head, choices: [{ text: p, index: 0, logprobs: null, finish_reason: null }] })),
      { ...head, choices: [{ text: '', index: 0, logprobs: null, finish_reason: finish }] }
    ]
    await this.sse(res, events, dropAfter)
  }

  private embeddings (res: ServerResponse, body: Record<string, unknown>, model: string): void {
    const inputs = typeof body.input === 'string' ? [body.input] : body.input
    if (!Array.isArray(inputs) || inputs.length === 0) { this.error(res, 400, "'input' must be a string or a non-empty array", 'invalid_value', 'input'); return }
    const base64 = body.encoding_format === 'base64'
    const data = inputs.map((input, index) => {
      const vector = embedText(JSON.stringify(input), this.embeddingDims)
      let embedding: number[] | string = vector
      if (base64) {
        const bytes = Buffer.alloc(vector.length * 4)
        vector.forEach((v, i) => bytes.writeFloatLE(v, i * 4))
        embedding = bytes.toString('base64')
      }
      return { object: 'embedding', index, embedding }
    })
    const tokens = inputs.reduce((n: number, i: unknown) => n + (typeof i === 'string' ? words(i).length : Array.isArray(i) ? i.length : 1), 0)
    this.json(res, 200, { object: 'list', data, model, usage: { prompt_tokens: tokens, total_tokens: tokens } })
  }

  private async speech (res: ServerResponse, body: Record<string, unknown>): Promise<void> {
    if (typeof body.input !== 'string') { this.error(res, 400, "'input' is required", 'invalid_value', 'input'); return }
    const bytes = speechBytes(body.input, 16 * 1024)
    res.writeHead(200, { 'content-type': 'audio/mpeg', 'x-standin-sha256': createHash('sha256').update(bytes).digest('hex') })
    // In pieces, as a real server streams audio while it synthesizes.
    for (let i = 0; i < bytes.length; i += 4096) {
      res.write(bytes.subarray(i, i + 4096))
      await sleep(this.chunkDelayMs)
    }
    res.end()
  }

  private async sse (res: ServerResponse, events: unknown[], dropAfter: number | undefined): Promise<void> {
    res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache' })
    for (const [i, event] of events.entries()) {
      if (dropAfter !== undefined && i >= dropAfter) {
        res.destroy()
        return
      }
      if (res.destroyed) return
      res.write(`data: ${JSON.stringify(event)}\n\n`)
      await sleep(this.chunkDelayMs)
    }
    res.end('data: [DONE]\n\n')
  }

  private json (res: ServerResponse, status: number, value: unknown): void {
    const text = JSON.stringify(value)
    res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) })
    res.end(text)
  }

  private error (res: ServerResponse, status: number, message: string, code: string, param: string | null = null): void {
    this.json(res, status, { error: { message, type: status >= 500 ? 'server_error' : 'invalid_request_error', param, code } })
  }
}
