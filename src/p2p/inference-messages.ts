import { Ajv, type ValidateFunction } from 'ajv'
import { INFERENCE_VERSION } from './constants.js'

/** What a node asks a peer to run: an OpenAI operation on a body, or a raw HTTP passthrough. */
export type InferenceOp = 'chat' | 'completion' | 'embeddings' | 'passthrough'

export interface PassthroughRequest {
  method: string
  /** Path under `/v1`, e.g. `/audio/speech`. */
  path: string
  headers: Record<string, string>
  /** Body bytes, base64. */
  body: string | null
}

export interface InferenceRequestFrame {
  v: 1
  op: InferenceOp
  stream: boolean
  /** The OpenAI request body (parsed JSON); null for passthrough. */
  body: Record<string, unknown> | null
  /** Model name, for routing a passthrough request (whose body is opaque). */
  model: string
  pass?: PassthroughRequest
}

export interface ErrorPayload { message: string, type: string, param: string | null, code: string | null }

export type InferenceResponseFrame =
  | { t: 'result', data: Record<string, unknown> }
  | { t: 'chunk', data: Record<string, unknown> }
  | { t: 'end' }
  | { t: 'error', status: number, error: ErrorPayload }
  | { t: 'head', status: number, headers: Record<string, string> }
  | { t: 'bytes', b64: string }

const requestSchema = {
  type: 'object',
  required: ['v', 'op', 'stream', 'body', 'model'],
  additionalProperties: false,
  properties: {
    v: { const: INFERENCE_VERSION },
    op: { enum: ['chat', 'completion', 'embeddings', 'passthrough'] },
    stream: { type: 'boolean' },
    body: { type: ['object', 'null'] },
    model: { type: 'string', minLength: 1, maxLength: 256 },
    pass: {
      type: 'object',
      required: ['method', 'path', 'headers', 'body'],
      additionalProperties: false,
      properties: {
        method: { enum: ['GET', 'POST'] },
        path: { type: 'string', pattern: '^/(audio/transcriptions|audio/speech|audio/translations|images/generations|images/edits|images/variations)$' },
        headers: { type: 'object', maxProperties: 64, additionalProperties: { type: 'string', maxLength: 8192 } },
        body: { type: ['string', 'null'] }
      }
    }
  }
}

const errorPayload = {
  type: 'object',
  required: ['message', 'type', 'param', 'code'],
  properties: { message: { type: 'string', maxLength: 8192 }, type: { type: 'string' }, param: { type: ['string', 'null'] }, code: { type: ['string', 'null'] } }
}

const responseSchema = {
  oneOf: [
    { type: 'object', required: ['t', 'data'], additionalProperties: false, properties: { t: { enum: ['result', 'chunk'] }, data: { type: 'object' } } },
    { type: 'object', required: ['t'], additionalProperties: false, properties: { t: { const: 'end' } } },
    { type: 'object', required: ['t', 'status', 'error'], additionalProperties: false, properties: { t: { const: 'error' }, status: { type: 'integer', minimum: 400, maximum: 599 }, error: errorPayload } },
    { type: 'object', required: ['t', 'status', 'headers'], additionalProperties: false, properties: { t: { const: 'head' }, status: { type: 'integer', minimum: 100, maximum: 599 }, headers: { type: 'object', additionalProperties: { type: 'string' } } } },
    { type: 'object', required: ['t', 'b64'], additionalProperties: false, properties: { t: { const: 'bytes' }, b64: { type: 'string' } } }
  ]
}

let validators: { req: ValidateFunction<InferenceRequestFrame>, res: ValidateFunction<InferenceResponseFrame> } | undefined
function compiled (): NonNullable<typeof validators> {
  if (validators == null) {
    const ajv = new Ajv({ allErrors: false })
    validators = { req: ajv.compile<InferenceRequestFrame>(requestSchema), res: ajv.compile<InferenceResponseFrame>(responseSchema) }
  }
  return validators
}

export function isInferenceRequest (x: unknown): x is InferenceRequestFrame {
  return compiled().req(x)
}

export function isInferenceResponse (x: unknown): x is InferenceResponseFrame {
  return compiled().res(x)
}
