import type { FastifyError, FastifyInstance } from 'fastify'
import { ShepherdError } from '../errors.js'

/** The OpenAI error body, used by every route of every API family. */
export interface ErrorBody {
  error: { message: string, type: string, param: string | null, code: string | null }
}

export const errorSchema = {
  $id: 'ErrorBody',
  type: 'object',
  properties: {
    error: {
      type: 'object',
      properties: {
        message: { type: 'string' },
        type: { type: 'string' },
        param: { type: ['string', 'null'] },
        code: { type: ['string', 'null'] }
      }
    }
  }
} as const

export function toErrorBody (err: ShepherdError): ErrorBody {
  return { error: { message: err.message, type: err.type, param: err.param, code: err.code } }
}

/** Maps fastify's own errors (validation, body size, bad JSON) onto typed errors. */
function fromFastify (err: FastifyError): ShepherdError {
  const status = err.statusCode ?? 500
  if (err.validation != null) {
    const first = err.validation[0]
    const param = first?.instancePath?.replace(/^\//, '').replace(/\//g, '.') || (first?.params as any)?.missingProperty || null
    return new ShepherdError(`Invalid request: ${err.message}`, { code: 'invalid_request', status: 400, param })
  }
  if (err.code === 'FST_ERR_CTP_BODY_TOO_LARGE') return new ShepherdError('Request body too large', { code: 'payload_too_large', status: 413 })
  if (err.code === 'FST_ERR_CTP_INVALID_MEDIA_TYPE') return new ShepherdError('Unsupported Content-Type; send application/json', { code: 'unsupported_media_type', status: 415 })
  if (err.code === 'FST_ERR_CTP_EMPTY_JSON_BODY' || err.code === 'FST_ERR_CTP_INVALID_JSON_BODY' || (status === 400 && err instanceof SyntaxError)) {
    return new ShepherdError('Request body is not valid JSON', { code: 'invalid_json', status: 400 })
  }
  if (status < 500) return new ShepherdError(err.message, { code: String(err.code ?? 'bad_request').toLowerCase(), status })
  // Deeply nested JSON parses (V8) but overflows the stack when re-serialized: the client's fault.
  if (err instanceof RangeError && /call stack/i.test(err.message)) return new ShepherdError('The JSON body is nested too deeply', { code: 'invalid_request', status: 400 })
  return new ShepherdError('Internal server error', { code: 'internal_error', status: 500, cause: err })
}

/** One error handler for the whole server: typed errors become the OpenAI error shape. */
export function installErrorHandler (app: FastifyInstance): void {
  app.setErrorHandler((err: FastifyError, request, reply) => {
    const typed = err instanceof ShepherdError ? err : fromFastify(err)
    if (typed.status >= 500) request.log.error({ err }, 'request failed')
    if (typed.status === 413 && !request.raw.readableEnded) {
      // Answer once the oversized body is read (bounded), so the client sees the 413 rather
      // than a connection reset in the middle of its upload; then close the connection.
      const drained = new Promise<void>(resolve => {
        const timer = setTimeout(resolve, 3000)
        request.raw.once('end', () => { clearTimeout(timer); resolve() })
        request.raw.once('error', () => { clearTimeout(timer); resolve() })
      })
      request.raw.resume()
      return drained.then(async () => await reply.status(413).header('connection', 'close').send(toErrorBody(typed)))
    }
    void reply.status(typed.status).send(toErrorBody(typed))
  })
  app.setNotFoundHandler((request, reply) => {
    void reply.status(404).send({ error: { message: `Unknown route ${request.method} ${request.url.split('?')[0]}`, type: 'invalid_request_error', param: null, code: 'route_not_found' } })
  })
}
