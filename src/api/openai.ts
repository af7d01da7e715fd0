import { openStream } from './stream-response.js'
import type { FastifyInstance, FastifyPluginAsync, FastifyReply, FastifyRequest } from 'fastify'
import { BadRequestError, ModelNotFoundError, ShepherdError, TimeoutError } from '../errors.js'
import { PASSTHROUGH_PATHS, type InferenceCall, type InferenceReply, type PassthroughPath } from '../node/index.js'
import { bodyCall, requestIdOf, routeTyped, type BodyOp } from './inference-call.js'
import type { Router } from '../scheduler/index.js'
import { toErrorBody } from './errors.js'

export interface OpenAIRoutesOptions {
  router: Router
  /** Whole-request limit (read per request: it can change at run time); the stream ends with an error event when it runs out. */
  requestTimeoutMs: () => number
}

const errorResponses = { '4xx': { $ref: 'ErrorBody#' }, '5xx': { $ref: 'ErrorBody#' } }
const model = { type: 'string', minLength: 1, maxLength: 256 }
const bodyOf = (required: string[], extra: Record<string, unknown>): Record<string, unknown> => ({
  type: 'object',
  required: ['model', ...required],
  properties: { model, stream: { type: 'boolean' }, ...extra }
})
const chatBody = bodyOf(['messages'], { messages: { type: 'array', minItems: 1, maxItems: 4096, items: { type: 'object', required: ['role'], properties: { role: { type: 'string' } } } } })
const completionBody = bodyOf(['prompt'], { prompt: { anyOf: [{ type: 'string' }, { type: 'array' }] } })
const embeddingsBody = bodyOf(['input'], { input: { anyOf: [{ type: 'string' }, { type: 'array', minItems: 1, maxItems: 2048 }] } })

const modelObject = {
  type: 'object',
  properties: {
    id: { type: 'string' },
    object: { type: 'string' },
    created: { type: 'integer' },
    owned_by: { type: 'string' },
    state: { type: 'string' },
    hosts: { type: 'integer' }
  }
}

const SSE_DATA = Buffer.from('data: ')
const SSE_END = Buffer.from('\n\n')

/** One SSE event around a chunk's serialized bytes (one JSON object on one line). */
function sseEvent (bytes: Uint8Array): Buffer {
  return Buffer.concat([SSE_DATA, bytes, SSE_END])
}

/** Writes `bytes`, waiting while the client's socket is full (back-pressure to the host node). */
async function writeBytes (res: NodeJS.WritableStream, bytes: Uint8Array): Promise<void> {
  if (!res.write(bytes)) await new Promise(resolve => res.once('drain', resolve))
}

/** Hop-by-hop and framing headers are ours to set, not the upstream's. */
const DROP_HEADERS = new Set(['connection', 'keep-alive', 'transfer-encoding', 'content-length', 'content-encoding', 'upgrade', 'proxy-connection', 'te', 'trailer'])

/** The OpenAI API under `/v1`, served by whichever node of the mesh hosts the model. */
export function openaiRoutes (opts: OpenAIRoutesOptions): FastifyPluginAsync {
  const { router } = opts
  const created = Math.floor(Date.now() / 1000)

  return async (app: FastifyInstance) => {
    // Multipart (audio transcriptions) passes through as raw bytes.
    app.addContentTypeParser('multipart/form-data', { parseAs: 'buffer' }, (_req, body, done) => { done(null, body) })
    app.addContentTypeParser(/^(audio|application\/octet-stream)/, { parseAs: 'buffer' }, (_req, body, done) => { done(null, body) })

    const listModels = (): Array<Record<string, unknown>> => [...router.models().values()]
      .sort((a, b) => a.name.localeCompare(b.name))
      .map(m => ({
        id: m.name,
        object: 'model',
        created,
        owned_by: 'shepherd-mesh',
        state: m.hosts.some(h => h.state === 'loaded') ? 'loaded' : m.hosts.some(h => h.state === 'loading') ? 'loading' : 'on_disk',
        hosts: m.hosts.length
      }))

    app.get('/v1/models', {
      schema: { response: { 200: { type: 'object', properties: { object: { type: 'string' }, data: { type: 'array', items: modelObject } } }, ...errorResponses } }
    }, async () => ({ object: 'list', data: listModels() }))

    app.get('/v1/models/*', {
      schema: { response: { 200: modelObject, ...errorResponses } }
    }, async (req) => {
      const id = (req.params as { '*': string })['*']
      const found = listModels().find(m => m.id === id)
      if (found == null) throw new ModelNotFoundError(id)
      return found
    })

    const infer = (op: BodyOp) => async (req: FastifyRequest, reply: FastifyReply): Promise<void> => {
      await serve(req, reply, bodyCall(op, req.body as Record<string, unknown>, requestIdOf(req, reply)))
    }

    const passthrough = async (req: FastifyRequest, reply: FastifyReply): Promise<void> => {
      const url = req.url.replace(/^\/v1/, '').split('?')[0]
      const path = PASSTHROUGH_PATHS.find(p => p === url)
      if (path == null) throw new ShepherdError(`${url} is not passed through`, { code: 'unsupported_endpoint', status: 404 })
      const raw = req.body
      let bytes: Buffer
      let modelName: string | undefined
      if (Buffer.isBuffer(raw)) {
        bytes = raw
        modelName = /name="model"\r\n(?:[^\r\n]*\r\n)*?\r\n([^\r\n]+)/.exec(raw.toString('latin1'))?.[1]
      } else {
        bytes = Buffer.from(JSON.stringify(raw ?? {}))
        const named: unknown = raw != null && typeof raw === 'object' ? (raw as { model?: unknown }).model : undefined
        modelName = typeof named === 'string' ? named : undefined
      }
      if (modelName == null || modelName === '') throw new ShepherdError('you must provide a model parameter', { code: 'missing_model', status: 400, param: 'model' })
      const headers: Record<string, string> = {}
      const ct = req.headers['content-type']
      if (typeof ct === 'string') headers['content-type'] = ct
      // The client's bytes as they came, relayed as bytes (no copy into JSON).
      const call: InferenceCall = { op: 'passthrough', requestId: requestIdOf(req, reply), model: modelName, stream: false, method: 'POST', path: path satisfies PassthroughPath, headers, bytes }
      await serve(req, reply, call)
    }

    async function serve (req: FastifyRequest, reply: FastifyReply, call: InferenceCall): Promise<void> {
      const routed = await routeTyped(opts, req, reply, call)
      try {
        await send(reply, routed.reply, routed.signal)
      } finally {
        routed.done()
      }
    }

    async function send (reply: FastifyReply, r: InferenceReply, signal: AbortSignal): Promise<void> {
      if (r.kind === 'result') {
        // The host's serialized bytes, as they came (never parsed here when relayed).
        await reply.type('application/json').send(Buffer.from(r.data.bytes.buffer, r.data.bytes.byteOffset, r.data.bytes.byteLength))
        return
      }
      if (r.kind === 'passthrough') {
        reply.hijack()
        const headers: Record<string, string> = { 'x-shepherd-host': String(reply.getHeader('x-shepherd-host') ?? ''), 'x-request-id': String(reply.getHeader('x-request-id') ?? '') }
        for (const [k, v] of Object.entries(r.headers)) if (!DROP_HEADERS.has(k.toLowerCase())) headers[k] = v
        reply.raw.writeHead(r.status, headers)
        try {
          for await (const block of r.body) {
            if (!reply.raw.write(block)) await new Promise(resolve => reply.raw.once('drain', resolve))
          }
        } finally {
          reply.raw.end()
        }
        return
      }
      // SSE: relayed chunk by chunk as they arrive, never buffered whole.
      const { res } = openStream(reply)
      try {
        for await (const chunk of r.chunks) {
          if (signal.aborted) break
          await writeBytes(res, sseEvent(chunk.bytes))
        }
        if (signal.aborted && signal.reason instanceof TimeoutError) throw signal.reason
        if (!signal.aborted) res.write('data: [DONE]\n\n')
      } catch (err) {
        if (!res.destroyed) {
          const typed = err instanceof ShepherdError ? err : new ShepherdError('The stream failed', { code: 'stream_failed', status: 502 })
          res.write(`data: ${JSON.stringify(toErrorBody(typed))}\n\n`)
        }
      } finally {
        res.end()
      }
    }

    app.post('/v1/chat/completions', { schema: { body: chatBody, response: errorResponses } }, infer('chat'))
    app.post('/v1/completions', { schema: { body: completionBody, response: errorResponses } }, infer('completion'))
    app.post('/v1/embeddings', { schema: { body: embeddingsBody, response: errorResponses } }, infer('embeddings'))
    for (const p of ['/v1/audio/transcriptions', '/v1/audio/translations', '/v1/audio/speech', '/v1/images/generations']) {
      app.post(p, { schema: { response: errorResponses } }, passthrough)
    }
    // Reranking needs a reranker model served with llama-server's --reranking, which no engine
    // here starts: a clear refusal naming the feature rather than "unknown route".
    for (const p of ['/v1/rerank', '/v1/reranking']) {
      app.post(p, { schema: { response: errorResponses } }, async () => {
        throw new BadRequestError(`Reranking (${p}) is not served by this mesh: no engine here runs a reranker model`, null, 'unsupported_parameter')
      })
    }

    app.get('/api/models', {
      schema: { response: { 200: { type: 'object', additionalProperties: true }, ...errorResponses } }
    }, async () => {
      const models = [...router.models().values()].sort((a, b) => a.name.localeCompare(b.name))
      return {
        models: models.map(m => ({
          ...m,
          conflict: m.conflicts.length > 0
        })),
        breakers: router.breaker.state()
      }
    })
  }
}
