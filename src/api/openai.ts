import { openStream } from './stream-response.js'
import type { FastifyInstance, FastifyPluginAsync, FastifyReply, FastifyRequest } from 'fastify'
import { ModelNotFoundError, ShepherdError, TimeoutError } from '../errors.js'
import type { InferenceOp, InferenceRequestFrame, InferenceReply } from '../p2p/index.js'
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

    const infer = (op: InferenceOp) => async (req: FastifyRequest, reply: FastifyReply): Promise<void> => {
      const body = req.body as Record<string, unknown>
      const frame: InferenceRequestFrame = { v: 1, op, stream: body.stream === true && op !== 'embeddings', body, model: String(body.model) }
      await serve(req, reply, frame)
    }

    const passthrough = async (req: FastifyRequest, reply: FastifyReply): Promise<void> => {
      const path = req.url.replace(/^\/v1/, '').split('?')[0]
      const raw = req.body
      let bytes: Buffer
      let modelName: string | undefined
      if (Buffer.isBuffer(raw)) {
        bytes = raw
        modelName = /name="model"\r\n(?:[^\r\n]*\r\n)*?\r\n([^\r\n]+)/.exec(raw.toString('latin1'))?.[1]
      } else {
        bytes = Buffer.from(JSON.stringify(raw ?? {}))
        modelName = typeof (raw as any)?.model === 'string' ? (raw as any).model : undefined
      }
      if (modelName == null || modelName === '') throw new ShepherdError('you must provide a model parameter', { code: 'missing_model', status: 400, param: 'model' })
      const headers: Record<string, string> = {}
      const ct = req.headers['content-type']
      if (typeof ct === 'string') headers['content-type'] = ct
      const frame: InferenceRequestFrame = { v: 1, op: 'passthrough', stream: false, body: null, model: modelName, pass: { method: 'POST', path, headers, body: bytes.toString('base64') } }
      await serve(req, reply, frame)
    }

    async function serve (req: FastifyRequest, reply: FastifyReply, frame: InferenceRequestFrame): Promise<void> {
      const ac = new AbortController()
      // The client went away before we finished: stop the generation wherever it runs.
      reply.raw.on('close', () => { if (!reply.raw.writableEnded) ac.abort(new ShepherdError('client closed the request', { code: 'client_closed', status: 499 })) })
      const limit = opts.requestTimeoutMs()
      const timer = setTimeout(() => { ac.abort(new TimeoutError(`The request took longer than ${limit} ms`)) }, limit)
      timer.unref()
      try {
        let result
        try {
          const pin = req.headers['x-shepherd-model-fingerprint']
          result = await router.route(frame, ac.signal, typeof pin === 'string' && pin !== '' ? { fingerprint: pin } : {})
        } catch (err) {
          if (ac.signal.aborted && ac.signal.reason instanceof TimeoutError) throw ac.signal.reason
          throw err
        }
        void reply.header('x-shepherd-host', result.host.peerId)
        await send(reply, result.reply, ac.signal)
      } finally {
        clearTimeout(timer)
      }
    }

    async function send (reply: FastifyReply, r: InferenceReply, signal: AbortSignal): Promise<void> {
      if (r.kind === 'result') {
        await reply.type('application/json').send(r.data)
        return
      }
      if (r.kind === 'passthrough') {
        reply.hijack()
        const headers: Record<string, string> = { 'x-shepherd-host': String(reply.getHeader('x-shepherd-host') ?? '') }
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
      const { res, write } = openStream(reply)
      try {
        for await (const chunk of r.chunks) {
          if (signal.aborted) break
          await write(`data: ${JSON.stringify(chunk)}\n\n`)
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
