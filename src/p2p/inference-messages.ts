/**
 * The frames of `/shepherd/openai/2.0.0` and their bounded decoders. Every frame is a varint
 * length (src/p2p/framing.ts) and a body whose first byte says what it is:
 *
 * | type | byte | body after the type byte | direction |
 * |---|---|---|---|
 * | `call` | 1 | JSON {@link CallHead} (≤ 64 KiB) | requester → host |
 * | `data` | 2 | raw bytes: a request body block (≤ 256 KiB), or a block of a passthrough answer | both |
 * | `end` | 3 | nothing: the request body, or the answer, is complete | both |
 * | `result` | 4 | one whole JSON object, as the host serialized it | host → requester |
 * | `chunk` | 5 | one streamed JSON object, as the host serialized it | host → requester |
 * | `error` | 6 | JSON `{status, error}` (OpenAI error payload) | host → requester |
 * | `head` | 7 | JSON `{status, headers}` of a passthrough answer | host → requester |
 *
 * A request is `call`, `data`… (exactly `size` bytes in all), `end`. An answer is `result`, or
 * `chunk`… `end`, or `head` `data`… `end`, or `error` at any point. Bodies, results and chunks
 * stay bytes: a node that only forwards a chunk never parses it. Wire types stay in src/p2p; the
 * typed call above (src/node/inference-call.ts) is mapped to and from {@link RelayRequest}.
 */
import { isUtf8 } from 'node:buffer'
import type { ValidateFunction } from 'ajv'
import { compileSchema } from './schemas.js'
import { WireError } from '../errors.js'
import { INFERENCE_VERSION, MAX_INFERENCE_BODY_BYTES, MAX_INFERENCE_HEAD_BYTES } from './constants.js'

/** What a node asks a peer to run: an OpenAI operation on a body, or a raw HTTP passthrough. */
export type RelayOp = 'chat' | 'completion' | 'embeddings' | 'passthrough'

/** The endpoints a passthrough call may reach (under `/v1`). */
export const PASSTHROUGH_PATHS = ['/audio/transcriptions', '/audio/speech', '/audio/translations', '/images/generations', '/images/edits', '/images/variations'] as const
export type PassthroughPath = typeof PASSTHROUGH_PATHS[number]

/** The HTTP side of a passthrough call; its body travels as the request body. */
export interface RelayPass {
  method: 'GET' | 'POST'
  path: PassthroughPath
  headers: Record<string, string>
}

/** The `call` frame: everything about a request but its body. */
export interface CallHead {
  v: typeof INFERENCE_VERSION
  /** Request id, chosen where the request entered the mesh; logged on both nodes. */
  id: string
  op: RelayOp
  model: string
  stream: boolean
  /** Body bytes that follow in `data` frames. */
  size: number
  pass?: RelayPass
}

export interface ErrorPayload { message: string, type: string, param: string | null, code: string | null }

/** A request as frames carry it, before or after the body was gathered. */
export type RequestFrame =
  | { t: 'call', head: CallHead }
  | { t: 'data', bytes: Uint8Array }
  | { t: 'end' }

export type ResponseFrame =
  | { t: 'result', bytes: Uint8Array }
  | { t: 'chunk', bytes: Uint8Array }
  | { t: 'data', bytes: Uint8Array }
  | { t: 'end' }
  | { t: 'error', status: number, error: ErrorPayload }
  | { t: 'head', status: number, headers: Record<string, string> }

export const FRAME_TYPE = { call: 1, data: 2, end: 3, result: 4, chunk: 5, error: 6, head: 7 } as const
type FrameName = keyof typeof FRAME_TYPE
const NAME_OF = new Map<number, FrameName>(Object.entries(FRAME_TYPE).map(([k, v]) => [v, k as FrameName]))

/** Request ids are printed in logs on both nodes: short and plain. */
export const REQUEST_ID_PATTERN = '^[A-Za-z0-9._:-]{1,128}$'

/** HTTP headers of a passthrough call or answer: bounded in count and size. */
const headersSchema = { type: 'object', maxProperties: 64, additionalProperties: { type: 'string', maxLength: 8192 } }

const callSchema = {
  type: 'object',
  required: ['v', 'id', 'op', 'model', 'stream', 'size'],
  additionalProperties: false,
  properties: {
    v: { const: INFERENCE_VERSION },
    id: { type: 'string', pattern: REQUEST_ID_PATTERN },
    op: { enum: ['chat', 'completion', 'embeddings', 'passthrough'] },
    model: { type: 'string', minLength: 1, maxLength: 256 },
    stream: { type: 'boolean' },
    size: { type: 'integer', minimum: 0, maximum: MAX_INFERENCE_BODY_BYTES },
    pass: {
      type: 'object',
      required: ['method', 'path', 'headers'],
      additionalProperties: false,
      properties: {
        method: { enum: ['GET', 'POST'] },
        path: { enum: [...PASSTHROUGH_PATHS] },
        headers: headersSchema
      }
    }
  }
}

const errorSchema = {
  type: 'object',
  required: ['status', 'error'],
  additionalProperties: false,
  properties: {
    status: { type: 'integer', minimum: 400, maximum: 599 },
    error: {
      type: 'object',
      required: ['message', 'type', 'param', 'code'],
      properties: { message: { type: 'string', maxLength: 8192 }, type: { type: 'string', maxLength: 256 }, param: { type: ['string', 'null'], maxLength: 256 }, code: { type: ['string', 'null'], maxLength: 256 } }
    }
  }
}

const headSchema = {
  type: 'object',
  required: ['status', 'headers'],
  additionalProperties: false,
  properties: {
    status: { type: 'integer', minimum: 100, maximum: 599 },
    headers: headersSchema
  }
}

interface Validators {
  call: ValidateFunction<CallHead>
  error: ValidateFunction<{ status: number, error: ErrorPayload }>
  head: ValidateFunction<{ status: number, headers: Record<string, string> }>
}
let validators: Validators | undefined
function compiled (): Validators {
  validators ??= (() => {
    return { call: compileSchema<CallHead>(callSchema), error: compileSchema(errorSchema), head: compileSchema(headSchema) }
  })()
  return validators
}

/** Whether `x` is a valid call head (exported for the fuzz tests). */
export function isCallHead (x: unknown): x is CallHead {
  return compiled().call(x)
}

const encoder = new TextEncoder()
const decoder = new TextDecoder('utf-8', { fatal: true })
const TYPE_BYTES = new Map<FrameName, Uint8Array>(Object.entries(FRAME_TYPE).map(([k, v]) => [k as FrameName, Uint8Array.of(v)]))

/** The parts of one frame's body (type byte first), ready for `FramedStream.writeBytes`. */
export function encodeFrame (frame: RequestFrame | ResponseFrame): Uint8Array[] {
  const type = TYPE_BYTES.get(frame.t)!
  switch (frame.t) {
    case 'call': return [type, encoder.encode(JSON.stringify(frame.head))]
    case 'data': case 'result': case 'chunk': return [type, frame.bytes]
    case 'end': return [type]
    case 'error': return [type, encoder.encode(JSON.stringify({ status: frame.status, error: frame.error }))]
    case 'head': return [type, encoder.encode(JSON.stringify({ status: frame.status, headers: frame.headers }))]
  }
}

function invalid (why: string): WireError {
  return new WireError(why, 'invalid_frame')
}

function jsonOf (bytes: Uint8Array): unknown {
  try {
    return JSON.parse(decoder.decode(bytes))
  } catch {
    throw invalid('frame is not UTF-8 JSON')
  }
}

const OPEN_BRACE = 0x7b
const CLOSE_BRACE = 0x7d

/**
 * Whether `bytes` can stand as one JSON object on one SSE `data:` line without being parsed:
 * UTF-8, braces at both ends, no CR or LF (a host that slipped a line break into a chunk would
 * otherwise start an event of its own in the client's stream). What JSON.stringify writes passes.
 */
export function isObjectLine (bytes: Uint8Array): boolean {
  const n = bytes.byteLength
  if (n < 2 || bytes[0] !== OPEN_BRACE || bytes[n - 1] !== CLOSE_BRACE) return false
  if (bytes.indexOf(0x0a) >= 0 || bytes.indexOf(0x0d) >= 0) return false
  return isUtf8(bytes)
}

function typeOf (body: Uint8Array): FrameName {
  if (body.byteLength === 0) throw invalid('empty frame')
  const name = NAME_OF.get(body[0])
  if (name == null) throw invalid(`unknown frame type ${body[0]}`)
  return name
}

/** Decodes a frame a requester sent; a `WireError` (`invalid_frame`) for anything else. */
export function decodeRequestFrame (body: Uint8Array): RequestFrame {
  const t = typeOf(body)
  const rest = body.subarray(1)
  switch (t) {
    case 'call': {
      if (rest.byteLength > MAX_INFERENCE_HEAD_BYTES) throw invalid(`call head exceeds ${MAX_INFERENCE_HEAD_BYTES} bytes`)
      const head = jsonOf(rest)
      if (!isCallHead(head)) throw invalid('invalid call head')
      if ((head.op === 'passthrough') !== (head.pass != null)) throw invalid('a passthrough call, and only one, names its endpoint')
      return { t, head }
    }
    case 'data':
      if (rest.byteLength === 0) throw invalid('empty data frame')
      return { t, bytes: rest }
    case 'end':
      if (rest.byteLength !== 0) throw invalid('end frame with a body')
      return { t }
    default:
      throw invalid(`'${t}' frame from a requester`)
  }
}

/** Decodes a frame a host sent; a `WireError` (`invalid_frame`) for anything else. */
export function decodeResponseFrame (body: Uint8Array): ResponseFrame {
  const t = typeOf(body)
  const rest = body.subarray(1)
  switch (t) {
    case 'result': case 'chunk':
      if (!isObjectLine(rest)) throw invalid(`${t} is not one JSON object on one line`)
      return { t, bytes: rest }
    case 'data':
      if (rest.byteLength === 0) throw invalid('empty data frame')
      return { t, bytes: rest }
    case 'end':
      if (rest.byteLength !== 0) throw invalid('end frame with a body')
      return { t }
    case 'error': {
      const x = jsonOf(rest)
      if (!compiled().error(x)) throw invalid('invalid error frame')
      return { t, status: x.status, error: x.error }
    }
    case 'head': {
      const x = jsonOf(rest)
      if (!compiled().head(x)) throw invalid('invalid head frame')
      return { t, status: x.status, headers: x.headers }
    }
    default:
      throw invalid(`'${t}' frame from a host`)
  }
}
