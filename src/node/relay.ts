/**
 * The typed call across the mesh: maps an {@link InferenceCall} and its {@link InferenceReply}
 * to and from what `/shepherd/openai` carries (src/p2p/inference.ts), on both sides of the hop.
 * A call's JSON body is serialized once here on the requesting node and parsed once on the host;
 * results and chunks stay the bytes the host wrote all the way to the client.
 */
import { BadRequestError } from '../errors.js'
import type { Logger } from '../logger.js'
import type { InferenceService, RelayHandler, RelayReply, RelayRequest } from '../p2p/index.js'
import { JsonPayload, type InferenceCall, type InferenceReply } from './inference-call.js'
import type { ChatCompletionRequest, CompletionRequest, EmbeddingRequest } from './engines/openai-types.js'

const encoder = new TextEncoder()
const decoder = new TextDecoder('utf-8', { fatal: true })

/** The relay's form of a call. */
export function toRelayRequest (call: InferenceCall): RelayRequest {
  const base = { id: call.requestId, model: call.model }
  if (call.op === 'passthrough') {
    return { ...base, op: 'passthrough', stream: false, pass: { method: call.method, path: call.path, headers: call.headers }, body: call.bytes ?? new Uint8Array(0) }
  }
  return { ...base, op: call.op, stream: call.stream, body: encoder.encode(JSON.stringify(call.body)) }
}

/**
 * The call a peer sent. Its body must be one JSON object naming the model the head names (the
 * head routes, the body runs: they may not disagree); the engines validate the fields.
 */
export function fromRelayRequest (req: RelayRequest): InferenceCall {
  const base = { requestId: req.id, model: req.model }
  if (req.op === 'passthrough') {
    if (req.pass == null) throw new BadRequestError('a passthrough call names no endpoint')
    return { ...base, op: 'passthrough', stream: false, method: req.pass.method, path: req.pass.path, headers: req.pass.headers, bytes: req.body.byteLength > 0 ? req.body : null }
  }
  let body: unknown
  try {
    body = JSON.parse(decoder.decode(req.body))
  } catch {
    throw new BadRequestError('the relayed request body is not JSON')
  }
  if (body == null || typeof body !== 'object' || Array.isArray(body)) throw new BadRequestError('the relayed request body is not a JSON object')
  if ((body as { model?: unknown }).model !== req.model) throw new BadRequestError('the relayed request body names another model than its call', 'model')
  // Shape checked above; the engines check every field they use (BadRequestError).
  switch (req.op) {
    case 'chat': return { ...base, op: 'chat', stream: req.stream, body: body as ChatCompletionRequest }
    case 'completion': return { ...base, op: 'completion', stream: req.stream, body: body as CompletionRequest }
    case 'embeddings': return { ...base, op: 'embeddings', stream: false, body: body as EmbeddingRequest }
  }
}

async function * bytesOf (chunks: AsyncIterable<JsonPayload>): AsyncGenerator<Uint8Array> {
  for await (const c of chunks) yield c.bytes
}

async function * payloadsOf (chunks: AsyncIterable<Uint8Array>): AsyncGenerator<JsonPayload> {
  for await (const c of chunks) yield JsonPayload.fromBytes(c)
}

/** The relay's form of a reply: serialized once (or never, when it came serialized). */
export function toRelayReply (reply: InferenceReply): RelayReply {
  if (reply.kind === 'result') return { kind: 'result', data: reply.data.bytes }
  if (reply.kind === 'stream') return { kind: 'stream', chunks: bytesOf(reply.chunks) }
  return reply
}

/** A peer's reply as payloads that are parsed only if someone reads them. */
export function fromRelayReply (reply: RelayReply): InferenceReply {
  if (reply.kind === 'result') return { kind: 'result', data: JsonPayload.fromBytes(reply.data) }
  if (reply.kind === 'stream') return { kind: 'stream', chunks: payloadsOf(reply.chunks) }
  return reply
}

/** Options of one remote call: the router's time limits and the client's abort. */
export interface RemoteCallOptions {
  signal?: AbortSignal
  connectTimeoutMs?: number
  firstByteTimeoutMs?: number
}

/** Sends typed calls to peers over the inference protocol. */
export class RemoteInference {
  constructor (private readonly service: Pick<InferenceService, 'request'>, private readonly log?: Logger) {}

  async call (peer: string, call: InferenceCall, opts: RemoteCallOptions = {}): Promise<InferenceReply> {
    this.log?.debug('relaying request', { requestId: call.requestId, peer, op: call.op, model: call.model })
    return fromRelayReply(await this.service.request(peer, toRelayRequest(call), opts))
  }
}

/**
 * The host side: a protocol handler that runs each peer's call with `run` (the engine hub, with
 * the peer as the fair-share source) and logs its request id.
 */
export function relayHandler (run: (call: InferenceCall, signal: AbortSignal, source: string) => Promise<InferenceReply>, log?: Logger): RelayHandler {
  return async (req, ctx) => {
    log?.debug('serving relayed request', { requestId: req.id, peer: ctx.peer, op: req.op, model: req.model })
    return toRelayReply(await run(fromRelayRequest(req), ctx.signal, ctx.peer))
  }
}
