/**
 * The one path from a foreign API (Ollama, Anthropic) to the mesh: an OpenAI-shaped body sent
 * through the same `Router.route` that `/v1/chat/completions` uses, so it reaches the local engine
 * or a host across the mesh alike, with the same client-gone abort and request time limit.
 */
import type { FastifyReply, FastifyRequest } from 'fastify'
import { ShepherdError, TimeoutError } from '../errors.js'
import type { InferenceOp, InferenceReply, InferenceRequestFrame } from '../p2p/index.js'
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

/**
 * Routes one OpenAI-shaped request. The abort fires when the client closes the connection or
 * the request limit runs out (then `signal.reason` is a `TimeoutError`).
 */
export async function routeCall (opts: ForeignApiOptions, req: FastifyRequest, reply: FastifyReply, op: InferenceOp, body: Record<string, unknown>): Promise<RoutedCall> {
  const ac = new AbortController()
  reply.raw.on('close', () => { if (!reply.raw.writableEnded) ac.abort(new ShepherdError('client closed the request', { code: 'client_closed', status: 499 })) })
  const limit = opts.requestTimeoutMs()
  const timer = setTimeout(() => { ac.abort(new TimeoutError(`The request took longer than ${limit} ms`)) }, limit)
  timer.unref()
  const model = String(body.model)
  const frame: InferenceRequestFrame = { v: 1, op, stream: body.stream === true, body, model }
  try {
    const pin = req.headers['x-shepherd-model-fingerprint']
    const result = await opts.router.route(frame, ac.signal, typeof pin === 'string' && pin !== '' ? { fingerprint: pin } : {})
    void reply.header('x-shepherd-host', result.host.peerId)
    return { reply: result.reply, host: result.host.peerId, signal: ac.signal, abort: reason => { ac.abort(reason) }, done: () => { clearTimeout(timer) } }
  } catch (err) {
    clearTimeout(timer)
    if (ac.signal.aborted && ac.signal.reason instanceof TimeoutError) throw ac.signal.reason
    throw err
  }
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
    const d = reply.data as any
    const choice = d?.choices?.[0]
    const content = choice?.message?.content ?? choice?.text
    const text = typeof content === 'string' ? content : ''
    if (text !== '') yield { kind: 'text', text }
    const calls: any[] = Array.isArray(choice?.message?.tool_calls) ? choice.message.tool_calls : []
    for (const [i, c] of calls.entries()) {
      yield { kind: 'tool_start', call: i, id: String(c?.id ?? `call_${i}`), name: String(c?.function?.name ?? '') }
      const json = c?.function?.arguments
      if (typeof json === 'string' && json !== '') yield { kind: 'tool_args', call: i, json }
    }
    yield { kind: 'end', finishReason: String(choice?.finish_reason ?? 'stop'), promptTokens: numberOrNull(d?.usage?.prompt_tokens), completionTokens: numberOrNull(d?.usage?.completion_tokens) }
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
    const c = chunk as any
    if (c?.usage != null) {
      promptTokens = numberOrNull(c.usage.prompt_tokens)
      completionTokens = numberOrNull(c.usage.completion_tokens)
    }
    const choice = c?.choices?.[0]
    if (choice == null) continue
    // Chat chunks carry `delta.content`; completion chunks (raw prompts) carry `text`.
    const text = choice.delta?.content ?? choice.text
    if (typeof text === 'string' && text !== '') {
      deltas++
      yield { kind: 'text', text }
    }
    const calls: any[] = Array.isArray(choice.delta?.tool_calls) ? choice.delta.tool_calls : []
    for (const tc of calls) {
      const call = typeof tc?.index === 'number' ? tc.index : 0
      if (!started.has(call)) {
        started.add(call)
        yield { kind: 'tool_start', call, id: String(tc?.id ?? `call_${call}`), name: String(tc?.function?.name ?? '') }
      }
      const json = tc?.function?.arguments
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
