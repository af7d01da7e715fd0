/**
 * The Ollama API on the node's own port (`GET /`, `/api/version`, `/api/tags`, `/api/show`,
 * `/api/ps`, `/api/chat`, `/api/generate`, `/api/embed`, `/api/embeddings`), served through the
 * router like `/v1/chat/completions`: a node without the model relays to one that has it.
 * Streams are NDJSON, on by default as in Ollama; errors are Ollama's `{"error": "..."}`.
 */
import { openStream } from './stream-response.js'
import type { FastifyInstance, FastifyPluginAsync, FastifyReply, FastifyRequest } from 'fastify'
import { BadRequestError, ModelNotFoundError, ShepherdError } from '../errors.js'
import type { MeshModel } from '../scheduler/index.js'
import { generationEvents, routeCall, streamError, type BodyOp, type ForeignApiOptions } from './inference-call.js'
import { OllamaToolCalls } from './ollama-tools.js'
import {
  OLLAMA_API_VERSION, chatFinal, chatLine, doneReasonOf, toolCallsLine, embedResult, generateFinal, generateLine, modelOf, parseOllamaChat,
  parseOllamaEmbed, parseOllamaGenerate, psEntry, resolveModelName, showResult, tagsEntry, type GenerationStats
} from './ollama-mapping.js'

export interface OllamaRoutesOptions extends ForeignApiOptions {
  /** The node's idle time before a model unloads: `/api/ps`'s `expires_at` is an estimate from it. */
  keepAliveMs: () => number
  /**
   * Answers `GET /` for a browser (its `Accept` names text/html): the console page. API clients
   * (curl, the Ollama libraries) still get `Ollama is running`.
   */
  page?: { wants: (req: FastifyRequest) => boolean, send: (reply: FastifyReply) => Promise<unknown> }
}

/** Rewrites any error body of this plugin's routes (ours, fastify's, the auth hooks') into Ollama's `{error}`. */
function installOllamaErrors (app: FastifyInstance): void {
  app.addHook('onSend', async (_request, reply, payload) => {
    if (reply.statusCode < 400 || typeof payload !== 'string') return payload
    try {
      const body = JSON.parse(payload)
      if (typeof body?.error === 'string') return payload
      return JSON.stringify({ error: typeof body?.error?.message === 'string' ? body.error.message : 'request failed' })
    } catch {
      return payload
    }
  })
}

/** An engine's refusal of `response_format` is about the request's `format`: say so in Ollama's terms. */
function inOllamaTerms (err: unknown): unknown {
  if (err instanceof ShepherdError && err.status === 400 && err.param === 'response_format') {
    // The engines enforce format with a grammar; what they refuse is a schema (or part of one) it cannot express.
    return new BadRequestError(`format: ${err.message.replace(/^response_format: /, '')}`, 'format', err.code)
  }
  return err
}

const elapsedNs = (since: bigint): number => Number(process.hrtime.bigint() - since)

/** The Ollama API. */
export function ollamaRoutes (opts: OllamaRoutesOptions): FastifyPluginAsync {
  const { router } = opts
  // The mesh does not track file times; a fixed time per node keeps `modified_at` stable.
  const seenAt = new Date().toISOString()
  const resolve = (name: string): string => resolveModelName(name, n => router.models().has(n))
  const sorted = (): MeshModel[] => [...router.models().values()].sort((a, b) => a.name.localeCompare(b.name))

  /**
   * Runs a chat or raw completion and answers as `/api/chat` or `/api/generate` does: NDJSON
   * lines, or one object when `stream` is false.
   */
  async function generation (req: FastifyRequest, reply: FastifyReply, p: { model: string, stream: boolean, op: BodyOp, body: Record<string, unknown>, shape: 'chat' | 'generate', doneReason?: string }): Promise<void> {
    const t0 = process.hrtime.bigint()
    const createdAt = (): string => new Date().toISOString()
    const call = await routeCall(opts, req, reply, p.op, p.body).catch(err => { throw inOllamaTerms(err) })
    const events = generationEvents(call.reply, call.signal)
    // Ollama sends calls whole: gathered from the argument pieces, sent before the last line.
    const calls = new OllamaToolCalls()
    let text = ''
    let firstNs: number | null = null
    const line = (piece: string): Record<string, unknown> => p.shape === 'chat' ? chatLine(p.model, createdAt(), piece) : generateLine(p.model, createdAt(), piece)
    const final = (whole: string, finish: string, promptTokens: number | null, evalTokens: number): Record<string, unknown> => {
      const total = elapsedNs(t0)
      const promptNs = firstNs ?? total
      const stats: GenerationStats = { totalNs: total, promptNs, evalNs: total - promptNs, promptTokens: promptTokens ?? 0, evalTokens }
      const reason = p.doneReason ?? doneReasonOf(finish)
      return p.shape === 'chat' ? chatFinal(p.model, createdAt(), whole, reason, stats, p.stream ? [] : calls.list()) : generateFinal(p.model, createdAt(), whole, reason, stats)
    }
    try {
      // The first event is awaited before anything is sent, so a refusal keeps its own status.
      let next = await events.next().catch(err => { throw inOllamaTerms(err) })
      if (!p.stream) {
        // Sent as a string: the response sanitizer (sanitize.ts) cleans JSON objects of control
        // characters, and the model's output must reach the client verbatim.
        for (; next.done !== true; next = await events.next()) {
          const ev = next.value
          if (calls.take(ev)) firstNs ??= elapsedNs(t0)
          else if (ev.kind === 'text') {
            firstNs ??= elapsedNs(t0)
            text += ev.text
          } else if (ev.kind === 'end') {
            await reply.type('application/json').send(JSON.stringify(final(p.doneReason != null ? '' : text, ev.finishReason, ev.promptTokens, ev.completionTokens ?? 0)))
            return
          }
        }
        throw new ShepherdError('The generation ended without a result', { code: 'stream_failed', status: 502 })
      }
      const stream = openStream(reply, 'application/x-ndjson')
      const res = stream.res
      const write = async (o: Record<string, unknown>): Promise<void> => { await stream.write(JSON.stringify(o) + '\n') }
      try {
        for (; next.done !== true; next = await events.next()) {
          const ev = next.value
          if (calls.take(ev)) firstNs ??= elapsedNs(t0)
          else if (ev.kind === 'text') {
            firstNs ??= elapsedNs(t0)
            // A load request answers with one empty final line, whatever the token was.
            if (p.doneReason == null) await write(line(ev.text))
          } else if (ev.kind === 'end') {
            if (calls.size > 0) await write(toolCallsLine(p.model, createdAt(), calls.list()))
            await write(final('', ev.finishReason, ev.promptTokens, ev.completionTokens ?? 0))
            return
          }
        }
        throw new ShepherdError('The generation ended without a result', { code: 'stream_failed', status: 502 })
      } catch (err) {
        if (!res.destroyed) res.write(JSON.stringify({ error: streamError(err).message }) + '\n')
      } finally {
        res.end()
      }
    } finally {
      await events.return(undefined)
      call.done()
    }
  }

  return async (app: FastifyInstance) => {
    installOllamaErrors(app)
    const anyObject = { type: 'object' }

    app.get('/', async (req, reply) => {
      // One URL, two answers: a cache must keep them apart.
      void reply.header('vary', 'accept')
      if (opts.page?.wants(req) === true) return await opts.page.send(reply)
      return await reply.type('text/plain; charset=utf-8').send('Ollama is running')
    })
    app.get('/api/version', async () => ({ version: OLLAMA_API_VERSION }))
    app.get('/api/tags', async () => ({ models: sorted().map(m => tagsEntry(m, seenAt)) }))
    app.get('/api/ps', async () => {
      const expires = new Date(Date.now() + Math.min(opts.keepAliveMs(), 100 * 365 * 86_400_000)).toISOString()
      return { models: sorted().filter(m => m.hosts.some(h => h.state === 'loaded')).map(m => psEntry(m, expires)) }
    })
    app.post('/api/show', { schema: { body: anyObject } }, async (req) => {
      const name = resolve(modelOf(req.body as Record<string, unknown>))
      const m = router.models().get(name)
      if (m == null) throw new ModelNotFoundError(name)
      return showResult(m, seenAt)
    })

    app.post('/api/chat', { schema: { body: anyObject } }, async (req, reply) => {
      const p = parseOllamaChat(req.body, resolve)
      await generation(req, reply, { ...p, op: 'chat', shape: 'chat' })
    })

    app.post('/api/generate', { schema: { body: anyObject } }, async (req, reply) => {
      const p = parseOllamaGenerate(req.body, resolve)
      await generation(req, reply, {
        model: p.model,
        stream: p.stream,
        body: p.body,
        op: p.kind === 'completion' ? 'completion' : 'chat',
        shape: 'generate',
        ...(p.kind === 'load' ? { doneReason: p.unload ? 'unload' : 'load' } : {})
      })
    })

    for (const [path, legacy] of [['/api/embed', false], ['/api/embeddings', true]] as const) {
      app.post(path, { schema: { body: anyObject } }, async (req, reply) => {
        const t0 = process.hrtime.bigint()
        const p = parseOllamaEmbed(req.body, legacy, resolve)
        const call = await routeCall(opts, req, reply, 'embeddings', p.body)
        try {
          if (call.reply.kind !== 'result') throw new ShepherdError('The engine answered embeddings with a stream', { code: 'bad_engine_reply', status: 502 })
          const out = embedResult(p.model, call.reply.data.value, elapsedNs(t0))
          const body = legacy ? { embedding: (out.embeddings as number[][])[0] ?? [] } : out
          await reply.type('application/json').send(JSON.stringify(body))
        } finally {
          call.done()
        }
      })
    }
  }
}
