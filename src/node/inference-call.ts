/**
 * The typed inference call: what the HTTP layer asks, the router routes and the engine hub runs,
 * whether the engine is on this node or across the mesh. No wire type appears here: the relay
 * (src/node/relay.ts) maps a call to and from `/shepherd/openai`'s frames in src/p2p.
 */
import { randomUUID } from 'node:crypto'
import { REQUEST_ID_PATTERN, PASSTHROUGH_PATHS, type PassthroughPath } from '../p2p/index.js'
import type { ChatCompletionRequest, CompletionRequest, EmbeddingRequest } from './engines/openai-types.js'

export type InferenceOp = InferenceCall['op']

/** The endpoints (under `/v1`) a passthrough call may reach. */
export { PASSTHROUGH_PATHS, type PassthroughPath }

interface CallBase {
  /** Chosen where the request entered the mesh; crosses the hop and is logged on both nodes. */
  requestId: string
  /** The model the call is routed by (a passthrough body is opaque, so it is named here). */
  model: string
}

export interface ChatCall extends CallBase { op: 'chat', stream: boolean, body: ChatCompletionRequest }
export interface CompletionCall extends CallBase { op: 'completion', stream: boolean, body: CompletionRequest }
export interface EmbeddingsCall extends CallBase { op: 'embeddings', stream: false, body: EmbeddingRequest }

/** A raw HTTP request (audio, images) passed to the engine's server untouched. */
export interface PassthroughCall extends CallBase {
  op: 'passthrough'
  stream: false
  method: 'GET' | 'POST'
  path: PassthroughPath
  headers: Record<string, string>
  /** The client's body, byte for byte (multipart, binary, JSON). */
  bytes: Uint8Array | null
}

export type InferenceCall = ChatCall | CompletionCall | EmbeddingsCall | PassthroughCall

const REQUEST_ID = new RegExp(REQUEST_ID_PATTERN)

/**
 * The id of a request entering the mesh: the client's `x-request-id` when it is a plain token
 * (so a client can find its request in the logs of every node it crossed), else a new one.
 */
export function requestIdFrom (header: unknown): string {
  return typeof header === 'string' && REQUEST_ID.test(header) ? header : randomUUID()
}

const encoder = new TextEncoder()
const decoder = new TextDecoder()

/**
 * One JSON object, held as a value, as its serialized bytes, or both: each form is made at most
 * once, on first use. A chunk that a node only forwards (host → relay → client) stays the bytes
 * the host wrote and is never parsed; one that a local engine produced is serialized once.
 */
export class JsonPayload {
  private parsedBytes = false

  private constructor (private object: Record<string, unknown> | undefined, private serialized: Uint8Array | undefined) {}

  /** A payload from a value (a local engine's result or chunk). */
  static of (value: object): JsonPayload {
    return new JsonPayload(value as Record<string, unknown>, undefined)
  }

  /**
   * A payload from serialized bytes, taken as they are. The relay checked that they are one
   * JSON object on one line (src/p2p/inference-messages.ts `isObjectLine`); reading `value`
   * parses them.
   */
  static fromBytes (bytes: Uint8Array): JsonPayload {
    return new JsonPayload(undefined, bytes)
  }

  /** The object (parsed on first use; invalid JSON throws a `SyntaxError`). */
  get value (): Record<string, unknown> {
    if (this.object === undefined) {
      this.object = JSON.parse(decoder.decode(this.serialized)) as Record<string, unknown>
      this.parsedBytes = true
    }
    return this.object
  }

  /** The serialized bytes (written on first use). */
  get bytes (): Uint8Array {
    this.serialized ??= encoder.encode(JSON.stringify(this.object))
    return this.serialized
  }

  /** Whether bytes were parsed into the value (tests: a forwarding node never parses a chunk). */
  get parsed (): boolean {
    return this.parsedBytes
  }
}

/** What a call answers: one result, a stream of chunks, or raw HTTP (passthrough). */
export type InferenceReply =
  | { kind: 'result', data: JsonPayload }
  | { kind: 'stream', chunks: AsyncIterable<JsonPayload> }
  | { kind: 'passthrough', status: number, headers: Record<string, string>, body: AsyncIterable<Uint8Array> }
