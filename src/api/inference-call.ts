/**
 * The one path from a foreign API (Ollama, Anthropic) to the mesh: an OpenAI-shaped body sent
 * through the same `Router.route` that `/v1/chat/completions` uses, so it reaches the local engine
 * or a host across the mesh alike, with the same client-gone abort and request time limit.
 */
import type { FastifyReply, FastifyRequest } from 'fastify'
import { ShepherdError, TimeoutError } from '../errors.js'
import { requestIdFrom, type InferenceCall, type InferenceReply } from '../node/index.js'
import type { ChatCompletionRequest, CompletionRequest, EmbeddingRequest } from '../node/engines/index.js'
import type { Router } from '../scheduler/index.js'

/** What the foreign API plugins need from the node: the router and the request limit. */
export interface ForeignApiOptions {
  router: Router
  /** Whole-request limit (read per request: it can change at run time). */
  requestTimeoutMs: () => number
}

/** A routed request: its reply, the host that answers it, and a way to stop it early. */
export interface RoutedCall {
  reply: InferenceReply
  /** Peer id of the node that answers (also sent as `x-shepherd-host`). */
  host: string
  signal: AbortSignal
  /** Stops generation wherever it runs (a stop sequence matched, the client left). */
  abort: (reason?: unknown) => void
  /** Clears the time limit; call once the answer is complete. */
  done: () => void
}

/** The operations whose request is an OpenAI JSON body. */
export type BodyOp = 'chat' | 'completion' | 'embeddings'

/**
 * The typed call for an OpenAI JSON body the route's schema accepted (a model, and messages,
 * a prompt or an input). The engines check every other field (400 `invalid_request`).
 */
export function bodyCall (op: BodyOp, body: Record<string, unknown>, requestId: string): InferenceCall {
  const model = String(body.model)
  switch (op) {
    case 'chat': return { op, requestId, model, stream: body.stream === true, body: body as unknown as ChatCompletionRequest }
    case 'completion': return { op, requestId, model, stream: body.stream === true, body: body as unknown as CompletionRequest }
    case 'embeddings': return { op, requestId, model, stream: false, body: body as unknown as EmbeddingRequest }
  }
}

/**
 * The request id of an HTTP request: the client's `x-request-id` when it is a plain token, else a
 * new one. It is sent back as `x-request-id` and crosses the mesh with the call.
 */
export function requestIdOf (req: FastifyRequest, reply: FastifyReply): string {
  const id = requestIdFrom(req.headers['x-request-id'])
  void reply.header('x-request-id', id)
  return id
}

/**
 * Routes one call with the client-gone abort and the request time limit: the abort fires when
 * the client closes the connection or the limit runs out (then `signal.reason` is a
 * `TimeoutError`). `x-shepherd-model-fingerprint` pins the file; `x-shepherd-host` names the host.
 */
export async function routeTyped (opts: ForeignApiOptions, req: FastifyRequest, reply: FastifyReply, call: InferenceCall): Promise<RoutedCall> {
  const ac = new AbortController()
  reply.raw.on('close', () => { if (!reply.raw.writableEnded) ac.abort(new ShepherdError('client closed the request', { code: 'client_closed', status: 499 })) })
  const limit = opts.requestTimeoutMs()
  const timer = setTimeout(() => { ac.abort(new TimeoutError(`The request took longer than ${limit} ms`)) }, limit)
  timer.unref()
  try {
    const pin = req.headers['x-shepherd-model-fingerprint']
    const result = await opts.router.route(call, ac.signal, typeof pin === 'string' && pin !== '' ? { fingerprint: pin } : {})
    void reply.header('x-shepherd-host', result.host.peerId)
    return { reply: result.reply, host: result.host.peerId, signal: ac.signal, abort: reason => { ac.abort(reason) }, done: () => { clearTimeout(timer) } }
  } catch (err) {
    clearTimeout(timer)
    if (ac.signal.aborted && ac.signal.reason instanceof TimeoutError) throw ac.signal.reason
    throw err
  }
}

/** Routes one OpenAI-shaped body (the foreign APIs' path): {@link routeTyped} of its {@link bodyCall}. */
export async function routeCall (opts: ForeignApiOptions, req: FastifyRequest, reply: FastifyReply, op: BodyOp, body: Record<string, unknown>): Promise<RoutedCall> {
  return await routeTyped(opts, req, reply, bodyCall(op, body, requestIdOf(req, reply)))
}

/** One piece of a chat generation as the foreign APIs need it. */
export type ChatEvent =
  | { kind: 'text', text: string }
  | { kind: 'end', finishReason: string, promptTokens: number | null, completionTokens: number | null }

/** A piece of a generation: text, a tool call opened (id and name), a piece of its argument JSON, the end. */
export type GenerationEvent =
  | ChatEvent
  | { kind: 'tool_start', call: number, id: string, name: string }
  | { kind: 'tool_args', call: number, json: string }

/**
 * Reads OpenAI chat or completion chunks (or a whole result) as text pieces, tool calls (opened with
 * id and name, then argument JSON in pieces) and one final `end`: what the Anthropic, Responses and
 * Ollama answers are built from. Usage comes from the `include_usage` chunk when the engine sends
 * one; without it the completion count falls back to the number of deltas (one per token on the
 * local engines).
 */
export async function * generationEvents (reply: InferenceReply, signal: AbortSignal): AsyncGenerator<GenerationEvent> {
  if (reply.kind === 'passthrough') throw new ShepherdError('The engine answered with raw HTTP where a chat result was expected', { code: 'bad_engine_reply', status: 502 })
  if (reply.kind === 'result') {
    // A payload from a peer is unverified JSON: every field is read through `field`/`list`.
    const d = reply.data.value
    const choice = field(list(d.choices)[0])
    const message = field(choice.message)
    const content = message.content ?? choice.text
    const text = typeof content === 'string' ? content : ''
    if (text !== '') yield { kind: 'text', text }
    for (const [i, item] of list(message.tool_calls).entries()) {
      const c = field(item)
      const fn = field(c.function)
      yield { kind: 'tool_start', call: i, id: String(c.id ?? `call_${i}`), name: String(fn.name ?? '') }
      const json = fn.arguments
      if (typeof json === 'string' && json !== '') yield { kind: 'tool_args', call: i, json }
    }
    const usage = field(d.usage)
    yield { kind: 'end', finishReason: String(choice.finish_reason ?? 'stop'), promptTokens: numberOrNull(usage.prompt_tokens), completionTokens: numberOrNull(usage.completion_tokens) }
    return
  }
  let finish: string | null = null
  let promptTokens: number | null = null
  let completionTokens: number | null = null
  let deltas = 0
  // Chat call index → whether its start was already yielded (the first delta carries id and name).
  const started = new Set<number>()
  for await (const chunk of reply.chunks) {
    if (signal.aborted) break
    const c = chunk.value
    if (c.usage != null) {
      const usage = field(c.usage)
      promptTokens = numberOrNull(usage.prompt_tokens)
      completionTokens = numberOrNull(usage.completion_tokens)
    }
    const first = list(c.choices)[0]
    if (first == null) continue
    const choice = field(first)
    const delta = field(choice.delta)
    // Chat chunks carry `delta.content`; completion chunks (raw prompts) carry `text`.
    const text = delta.content ?? choice.text
    if (typeof text === 'string' && text !== '') {
      deltas++
      yield { kind: 'text', text }
    }
    for (const item of list(delta.tool_calls)) {
      const tc = field(item)
      const fn = field(tc.function)
      const call = typeof tc.index === 'number' ? tc.index : 0
      if (!started.has(call)) {
        started.add(call)
        yield { kind: 'tool_start', call, id: String(tc.id ?? `call_${call}`), name: String(fn.name ?? '') }
      }
      const json = fn.arguments
      if (typeof json === 'string' && json !== '') {
        deltas++
        yield { kind: 'tool_args', call, json }
      }
    }
    if (typeof choice.finish_reason === 'string') finish = choice.finish_reason
  }
  if (signal.aborted) {
    if (signal.reason instanceof ShepherdError) throw signal.reason
    return
  }
  yield { kind: 'end', finishReason: finish ?? 'stop', promptTokens, completionTokens: completionTokens ?? deltas }
}

/** `v` as an object whose fields may be read (anything else reads as an empty one). */
function field (v: unknown): Record<string, unknown> {
  return v != null && typeof v === 'object' && !Array.isArray(v) ? v as Record<string, unknown> : {}
}

/** `v` as an array (anything else reads as an empty one). */
function list (v: unknown): unknown[] {
  return Array.isArray(v) ? v : []
}

/** {@link generationEvents} without tool calls: text pieces and the end (requests that offer no tools). */
export async function * chatEvents (reply: InferenceReply, signal: AbortSignal): AsyncGenerator<ChatEvent> {
  for await (const ev of generationEvents(reply, signal)) {
    if (ev.kind === 'text' || ev.kind === 'end') yield ev
  }
}

function numberOrNull (v: unknown): number | null {
  return typeof v === 'number' && Number.isFinite(v) ? v : null
}

/** The typed error for anything thrown while a stream is relayed. */
export function streamError (err: unknown): ShepherdError {
  return err instanceof ShepherdError ? err : new ShepherdError('The stream failed', { code: 'stream_failed', status: 502 })
}
