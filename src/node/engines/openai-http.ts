/**
 * The HTTP client both proxying engines use to talk to an OpenAI-compatible server: a managed
 * `llama-server` child or an upstream URL the user configured.
 *
 * - JSON requests, and streamed requests whose server-sent events are parsed into objects one
 *   event at a time, so a stream is relayed as it arrives, never buffered whole.
 * - Raw pass-through (audio, images): bodies go both ways untouched.
 * - Every failure is a typed `ShepherdError`: an HTTP error keeps the server's status and
 *   message, a connection failure is `NoHealthyHostError` (503), silence past the timeout is
 *   `TimeoutError` (504). Aborting the caller's signal cancels the request.
 * - Transport: `node:http(s)` with a keep-alive agent per client. A request whose kept-alive
 *   connection turns out closed by the server before any answer goes once more on a new
 *   connection: llama-server (cpp-httplib) closes a connection after a streamed answer although
 *   it advertised keep-alive, so the next request on it raced that close and failed as
 *   `no_healthy_host` under concurrency (issue 12). `node:http` also costs less per streamed
 *   piece than `fetch`'s web streams.
 */
import http, { type IncomingMessage } from 'node:http'
import https from 'node:https'
import {
  BadRequestError,
  ModelNotFoundError,
  NoHealthyHostError,
  NotFoundError,
  OverloadedError,
  PayloadTooLargeError,
  ShepherdError,
  TimeoutError,
  UnauthorizedError
} from '../../errors.js'

/** A raw request for an endpoint the engine does not model (`/audio/speech`, `/images/generations`). */
export interface PassthroughRequest {
  method: string
  /** Relative to the server's OpenAI base, e.g. `/audio/speech`. */
  path: string
  headers: Record<string, string>
  /** Sent byte for byte (multipart, binary); null for none. */
  body: Uint8Array | null
  signal?: AbortSignal
}

/** The server's answer, status and body as they came (error statuses included). */
export interface PassthroughResponse {
  status: number
  headers: Record<string, string>
  /** Relayed as it arrives; ending the iteration early cancels the request. */
  body: AsyncIterable<Uint8Array>
}

export interface OpenAIHttpClientOptions {
  /** Paths are appended to it: `http://127.0.0.1:11434/v1` + `/chat/completions`. */
  baseUrl: string
  /** Sent as `Authorization: Bearer …`. */
  apiKey?: string
  /** Longest wait for the response headers, and then for each piece of the body. */
  timeoutMs: number
  /** What answers, for error messages, e.g. `upstream 'ollama'`. */
  name?: string
  /** Largest JSON response read (bytes). Default 64 MiB. */
  maxJsonBytes?: number
}

export interface OpenAIRequestOptions {
  signal?: AbortSignal
  /** Overrides the client's `timeoutMs` for this request. */
  timeoutMs?: number
  /** The model the request is for, named in `NoHealthyHostError` and `ModelNotFoundError`. */
  model?: string
}

/** One server-sent event. `event` is `message` unless the server named it. */
export interface SseEvent {
  event: string
  data: string
}

const DEFAULT_MAX_JSON_BYTES = 64 * 1024 * 1024
/** Enough of an error body to hold any error message. */
const MAX_ERROR_BYTES = 64 * 1024

/** Headers that describe one hop, never forwarded either way. */
const HOP_BY_HOP = new Set([
  'connection', 'keep-alive', 'proxy-authenticate', 'proxy-authorization', 'te', 'trailer',
  'transfer-encoding', 'upgrade', 'host', 'content-length', 'expect'
])
/** Request headers that carry the caller's credentials for this node, not for the server. */
const CALLER_CREDENTIALS = new Set(['authorization', 'cookie', 'x-api-key'])

/**
 * Parses a server-sent event stream (`data: …` lines, events separated by blank lines, any line
 * ending). Also accepts llama-server's non-standard `error: {…}` field, reported as an event
 * named `error`. An event left unterminated at the end of the stream is still delivered.
 */
export async function * parseSse (chunks: AsyncIterable<Uint8Array>): AsyncGenerator<SseEvent> {
  const decoder = new TextDecoder()
  let buffer = ''
  let data: string[] = []
  let event = ''

  function * takeLine (line: string): Generator<SseEvent> {
    if (line === '') {
      if (data.length > 0) yield { event: event === '' ? 'message' : event, data: data.join('\n') }
      data = []
      event = ''
      return
    }
    if (line.startsWith(':')) return
    const colon = line.indexOf(':')
    const field = colon < 0 ? line : line.slice(0, colon)
    let value = colon < 0 ? '' : line.slice(colon + 1)
    if (value.startsWith(' ')) value = value.slice(1)
    if (field === 'data') data.push(value)
    else if (field === 'event') event = value
    else if (field === 'error') {
      event = 'error'
      data.push(value)
    }
  }

  function * takeLines (final: boolean): Generator<SseEvent> {
    let start = 0
    for (let i = 0; i < buffer.length; i++) {
      const c = buffer.charCodeAt(i)
      if (c !== 10 && c !== 13) continue
      // A CR at the end of what has arrived may be the first half of a CRLF.
      if (c === 13 && i + 1 === buffer.length && !final) break
      yield * takeLine(buffer.slice(start, i))
      if (c === 13 && buffer.charCodeAt(i + 1) === 10) i++
      start = i + 1
    }
    buffer = buffer.slice(start)
  }

  for await (const chunk of chunks) {
    buffer += decoder.decode(chunk, { stream: true })
    yield * takeLines(false)
  }
  buffer += decoder.decode()
  yield * takeLines(true)
  if (buffer !== '') yield * takeLine(buffer)
  yield * takeLine('')
}

interface ErrorPayload {
  message: string
  code: string | null
  type: string | null
  param: string | null
  /** llama-server puts the HTTP status in `error.code`. */
  status: number | null
}

/** Reads an error body in any of the shapes servers use: OpenAI's, llama-server's, Ollama's, plain text. */
function readErrorPayload (payload: unknown, fallback: string): ErrorPayload {
  const out: ErrorPayload = { message: fallback, code: null, type: null, param: null, status: null }
  if (typeof payload === 'string') {
    if (payload.trim() !== '') out.message = payload.trim().slice(0, 1000)
    return out
  }
  if (payload === null || typeof payload !== 'object') return out
  const body = payload as Record<string, unknown>
  const error = body.error ?? body
  if (typeof error === 'string') {
    out.message = error
    return out
  }
  if (error === null || typeof error !== 'object') return out
  const e = error as Record<string, unknown>
  if (typeof e.message === 'string' && e.message !== '') out.message = e.message
  if (typeof e.code === 'string' && e.code !== '') out.code = e.code
  if (typeof e.code === 'number' && Number.isInteger(e.code)) out.status = e.code
  if (typeof e.type === 'string' && e.type !== '') out.type = e.type
  if (typeof e.param === 'string' && e.param !== '') out.param = e.param
  return out
}

/**
 * The typed error for an HTTP error from an OpenAI-compatible server: its status and message
 * kept, mapped onto this project's error classes where one fits.
 * @param payload the error body, parsed JSON or text
 * @param model the request's model, for `ModelNotFoundError`
 */
export function errorFromResponse (status: number, payload: unknown, model?: string): ShepherdError {
  const e = readErrorPayload(payload, `The server answered HTTP ${status}`)
  switch (status) {
    case 400:
      // llama-server's name for a prompt longer than the context.
      return new BadRequestError(e.message, e.param, e.type === 'exceed_context_size_error' ? 'context_length_exceeded' : e.code ?? 'invalid_request')
    case 401:
      return new UnauthorizedError(e.message)
    case 404:
      if (model !== undefined && (e.code === 'model_not_found' || /\bmodel\b/i.test(e.message))) {
        const err = new ModelNotFoundError(model)
        err.cause = e.message
        return err
      }
      return new NotFoundError(e.message, e.code ?? 'not_found')
    case 408:
    case 504:
      return new TimeoutError(e.message)
    case 413:
      return new PayloadTooLargeError(e.message)
    case 429:
      return new OverloadedError(e.message)
    default:
      return new ShepherdError(e.message, {
        code: e.code ?? (status === 503 ? 'upstream_unavailable' : 'upstream_error'),
        status: status >= 400 && status <= 599 ? status : 502,
        ...(e.type !== null ? { type: e.type } : {}),
        param: e.param
      })
  }
}

/** The error an event stream reported in-band (`error:` event, or a `data:` object holding only `error`). */
function streamError (event: SseEvent, parsed: unknown, model: string | undefined): ShepherdError | undefined {
  const isErrorObject = parsed !== null && typeof parsed === 'object' && 'error' in parsed && !('choices' in parsed)
  if (event.event !== 'error' && !isErrorObject) return undefined
  const status = readErrorPayload(parsed, '').status
  return errorFromResponse(status !== null && status >= 400 && status <= 599 ? status : 500, parsed ?? event.data, model)
}

function connectionError (name: string, model: string | undefined, cause: unknown): ShepherdError {
  const err = new NoHealthyHostError(model ?? name)
  const c = cause as { code?: unknown, message?: unknown } | undefined
  const why = typeof c?.code === 'string' ? c.code : typeof c?.message === 'string' ? c.message : undefined
  if (model === undefined) err.message = `${name} cannot be reached${why !== undefined ? ` (${why})` : ''}`
  err.cause = cause
  return err
}

/**
 * One request's cancellation: the caller's signal, the consumer ending early, and the idle
 * timer all abort the same request, and `translate` says which one did it.
 */
class RequestGuard {
  readonly controller = new AbortController()
  private timer: NodeJS.Timeout | undefined
  private timedOut = false
  private readonly onCallerAbort = (): void => { this.controller.abort(this.signal?.reason) }

  constructor (private readonly signal: AbortSignal | undefined, private readonly timeoutMs: number) {
    signal?.addEventListener('abort', this.onCallerAbort, { once: true })
    this.arm()
  }

  /** (Re)starts the idle timer. */
  arm (): void {
    clearTimeout(this.timer)
    if (!Number.isFinite(this.timeoutMs)) return
    this.timer = setTimeout(() => {
      this.timedOut = true
      this.controller.abort(new TimeoutError(`No answer within ${this.timeoutMs} ms`))
    }, this.timeoutMs)
    this.timer.unref()
  }

  /** The request is over, one way or another; aborting a finished request is harmless. */
  finish (): void {
    clearTimeout(this.timer)
    this.signal?.removeEventListener('abort', this.onCallerAbort)
    if (!this.controller.signal.aborted) this.controller.abort()
  }

  translate (err: unknown, name: string, model: string | undefined, phase: 'connect' | 'body'): unknown {
    if (this.signal?.aborted === true) return this.signal.reason
    if (this.timedOut) return new TimeoutError(`${name} sent nothing for ${this.timeoutMs} ms`)
    if (err instanceof ShepherdError) return err
    if (phase === 'connect') return connectionError(name, model, err)
    const lost = new ShepherdError(`${name} closed the connection mid-response`, { code: 'upstream_disconnected', status: 502, cause: err })
    return lost
  }
}

/** Longest wait for the rest of a body after `[DONE]` before the connection is cut. */
const DRAIN_MS = 1000

/** Reads the events left after `[DONE]` (ignored), then ends the request; cuts it after `DRAIN_MS`. */
async function drainAfterDone (events: AsyncGenerator<SseEvent>, response: IncomingMessage, guard: RequestGuard): Promise<void> {
  const timer = setTimeout(() => { response.destroy() }, DRAIN_MS)
  timer.unref()
  try {
    while ((await events.next()).done !== true) {}
  } catch {
    // A connection that broke after the answer was complete changes nothing for the caller.
  } finally {
    clearTimeout(timer)
    guard.finish()
  }
}

function ok (response: IncomingMessage): boolean {
  const status = response.statusCode ?? 0
  return status >= 200 && status < 300
}

/**
 * A client for one OpenAI-compatible server.
 *
 * @example
 * ```ts
 * const client = new OpenAIHttpClient({ baseUrl: 'http://127.0.0.1:11434/v1', timeoutMs: 60_000 })
 * for await (const chunk of client.postStream('/chat/completions', { model: 'qwen', messages, stream: true })) console.log(chunk)
 * ```
 */
export class OpenAIHttpClient {
  readonly baseUrl: string
  /** `baseUrl` with a trailing slash, parsed once. */
  private readonly url: URL
  /** Kept-alive connections to this server, for this client alone. */
  private readonly agent: http.Agent
  private readonly apiKey: string | undefined
  private readonly timeoutMs: number
  private readonly name: string
  private readonly maxJsonBytes: number

  constructor (options: OpenAIHttpClientOptions) {
    this.baseUrl = options.baseUrl.replace(/\/+$/, '')
    // Fail at construction, not on the first request.
    this.url = new URL(this.baseUrl + '/')
    if (this.url.protocol !== 'http:' && this.url.protocol !== 'https:') throw new TypeError(`not an http(s) URL: ${this.baseUrl}`)
    // Nagle off: a streamed piece leaves at once.
    this.agent = new (this.url.protocol === 'https:' ? https.Agent : http.Agent)({ keepAlive: true, noDelay: true })
    this.apiKey = options.apiKey
    this.timeoutMs = options.timeoutMs
    this.name = options.name ?? this.baseUrl
    this.maxJsonBytes = options.maxJsonBytes ?? DEFAULT_MAX_JSON_BYTES
  }

  async getJson<T = unknown> (path: string, options: OpenAIRequestOptions = {}): Promise<T> {
    return await this.json<T>('GET', path, undefined, options)
  }

  async postJson<T = unknown> (path: string, body: unknown, options: OpenAIRequestOptions = {}): Promise<T> {
    return await this.json<T>('POST', path, body, options)
  }

  /**
   * POSTs a streaming request and yields each event's JSON object until `data: [DONE]`. The
   * first `next()` rejects when the server answers with an error; an error the server reports
   * mid-stream is thrown where it arrives. Ending the iteration early cancels the request.
   */
  async * postStream<T = unknown> (path: string, body: unknown, options: OpenAIRequestOptions = {}): AsyncGenerator<T> {
    const { response, guard } = await this.send('POST', path, JSON.stringify(body), { 'content-type': 'application/json', accept: 'text/event-stream' }, options)
    let drained: Promise<void> | undefined
    let events: AsyncGenerator<SseEvent> | undefined
    try {
      if (!ok(response)) throw await this.httpError(response, guard, options.model)
      const type = response.headers['content-type'] ?? ''
      if (!type.includes('text/event-stream')) {
        throw new ShepherdError(`${this.name} answered a streaming request with '${type}', not an event stream`, { code: 'upstream_invalid_response', status: 502 })
      }
      events = parseSse(this.readBody(response, guard, options.model))
      // Iterated by hand: a `for await` would close `events` on the early return at `[DONE]`.
      for (;;) {
        const next = await events.next()
        if (next.done === true) return
        const event = next.value
        if (event.data === '[DONE]') {
          // The answer is complete; what is left of the body (the chunked terminator) is read in
          // the background so the connection goes back to the pool (a TLS upstream's handshake
          // is not paid per stream) instead of being cut.
          drained = drainAfterDone(events, response, guard)
          return
        }
        let parsed: unknown
        try {
          parsed = JSON.parse(event.data)
        } catch (err) {
          throw new ShepherdError(`${this.name} sent an event that is not JSON`, { code: 'upstream_invalid_response', status: 502, cause: err })
        }
        const failed = streamError(event, parsed, options.model)
        if (failed !== undefined) throw failed
        yield parsed as T
      }
    } finally {
      if (drained === undefined) {
        // Ended early (an error, or the consumer stopped): the body is cut, not read on.
        await events?.return(undefined)
        guard.finish()
      }
    }
  }

  /** Forwards a raw request; the caller's credentials and hop-by-hop headers are not forwarded. */
  async passthrough (req: PassthroughRequest): Promise<PassthroughResponse> {
    if (!/^\/[A-Za-z0-9._~\-/]*$/.test(req.path) || req.path.includes('//') || req.path.split('/').includes('..')) {
      throw new BadRequestError(`Cannot forward the path '${req.path}'`, null, 'invalid_path')
    }
    const headers: Record<string, string> = {}
    for (const [key, value] of Object.entries(req.headers)) {
      const k = key.toLowerCase()
      if (!HOP_BY_HOP.has(k) && !CALLER_CREDENTIALS.has(k)) headers[k] = value
    }
    // Identity bodies only: the relay and the API pass bytes on without their encoding header.
    delete headers['accept-encoding']
    const method = req.method.toUpperCase()
    const body = method === 'GET' || method === 'HEAD' ? undefined : req.body ?? undefined
    const { response, guard } = await this.send(method, req.path, body, headers, { signal: req.signal })
    const out: Record<string, string> = {}
    for (const [key, value] of Object.entries(response.headers)) {
      if (value === undefined || (HOP_BY_HOP.has(key) && key !== 'content-length')) continue
      out[key] = Array.isArray(value) ? value.join(', ') : value
    }
    const self = this
    async function * relay (): AsyncGenerator<Uint8Array> {
      try {
        yield * self.readBody(response, guard, undefined)
      } finally {
        guard.finish()
      }
    }
    return { status: response.statusCode ?? 502, headers: out, body: relay() }
  }

  private async json<T> (method: string, path: string, body: unknown, options: OpenAIRequestOptions): Promise<T> {
    const headers: Record<string, string> = { accept: 'application/json' }
    if (body !== undefined) headers['content-type'] = 'application/json'
    const { response, guard } = await this.send(method, path, body === undefined ? undefined : JSON.stringify(body), headers, options)
    try {
      if (!ok(response)) throw await this.httpError(response, guard, options.model)
      const text = await this.readText(response, guard, options.model, this.maxJsonBytes)
      try {
        return JSON.parse(text) as T
      } catch (err) {
        throw new ShepherdError(`${this.name} sent a response that is not JSON`, { code: 'upstream_invalid_response', status: 502, cause: err })
      }
    } finally {
      guard.finish()
    }
  }

  private async send (
    method: string,
    path: string,
    body: string | Uint8Array | undefined,
    headers: Record<string, string>,
    options: OpenAIRequestOptions
  ): Promise<{ response: IncomingMessage, guard: RequestGuard }> {
    options.signal?.throwIfAborted()
    const guard = new RequestGuard(options.signal, options.timeoutMs ?? this.timeoutMs)
    if (this.apiKey !== undefined && this.apiKey !== '') headers.authorization = `Bearer ${this.apiKey}`
    const payload = body === undefined ? undefined : typeof body === 'string' ? Buffer.from(body) : body
    if (payload !== undefined) headers['content-length'] = String(payload.byteLength)
    try {
      try {
        return { response: await this.request(method, path, payload, headers, guard, this.agent), guard }
      } catch (err) {
        // The server closed a kept-alive connection as this request went out on it: nothing was
        // answered (nor, for llama-server, started), so it goes again on a connection of its own.
        if (!(err as { staleSocket?: boolean }).staleSocket || guard.controller.signal.aborted) throw err
        return { response: await this.request(method, path, payload, headers, guard, false), guard }
      }
    } catch (err) {
      guard.finish()
      throw guard.translate(err, this.name, options.model, 'connect')
    }
  }

  /** One HTTP exchange up to the response head; a failure on a reused socket is marked `staleSocket`. */
  private async request (method: string, path: string, payload: Uint8Array | undefined, headers: Record<string, string>, guard: RequestGuard, agent: http.Agent | false): Promise<IncomingMessage> {
    return await new Promise<IncomingMessage>((resolve, reject) => {
      const req = (this.url.protocol === 'https:' ? https : http).request(this.url.href + path.slice(1), { method, headers, agent, signal: guard.controller.signal }, resolve)
      // `on`, not `once`: an error after the head (reported through the body) must not go unhandled.
      req.on('error', err => {
        const code = (err as { code?: unknown }).code
        if (req.reusedSocket && (code === 'ECONNRESET' || code === 'EPIPE')) Object.assign(err, { staleSocket: true })
        reject(err)
      })
      req.end(payload)
    })
  }

  /** The body piece by piece, the idle timer restarted for each; ending early destroys the response. */
  private async * readBody (response: IncomingMessage, guard: RequestGuard, model: string | undefined): AsyncGenerator<Uint8Array> {
    const it = response[Symbol.asyncIterator]() as AsyncIterator<Buffer>
    let done = false
    try {
      while (true) {
        guard.arm()
        let result: IteratorResult<Buffer>
        try {
          result = await it.next()
        } catch (err) {
          throw guard.translate(err, this.name, model, 'body')
        }
        if (result.done === true) {
          // A body cut short by the server ends the iteration too; only `complete` says it is whole.
          if (!response.complete) throw guard.translate(new Error('the response ended early'), this.name, model, 'body')
          done = true
          return
        }
        yield result.value
      }
    } finally {
      if (!done) response.destroy()
    }
  }

  private async readText (response: IncomingMessage, guard: RequestGuard, model: string | undefined, limit: number): Promise<string> {
    const parts: Uint8Array[] = []
    let size = 0
    for await (const part of this.readBody(response, guard, model)) {
      size += part.byteLength
      if (size > limit) {
        throw new ShepherdError(`${this.name} sent a response larger than ${limit} bytes`, { code: 'upstream_invalid_response', status: 502 })
      }
      parts.push(part)
    }
    return Buffer.concat(parts).toString('utf8')
  }

  private async httpError (response: IncomingMessage, guard: RequestGuard, model: string | undefined): Promise<ShepherdError> {
    let payload: unknown = ''
    try {
      const text = await this.readText(response, guard, model, MAX_ERROR_BYTES)
      try {
        payload = JSON.parse(text)
      } catch {
        payload = text
      }
    } catch {}
    return errorFromResponse(response.statusCode ?? 502, payload, model)
  }
}
