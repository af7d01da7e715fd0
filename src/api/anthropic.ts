/**
 * The Anthropic Messages API: `POST /v1/messages` (whole or streamed as Anthropic's server-sent
 * events) and `POST /v1/messages/count_tokens`, served through the router like
 * `/v1/chat/completions`, so a node without the model relays to one that has it.
 */
import { openStream } from './stream-response.js'
import type { FastifyInstance, FastifyPluginAsync, FastifyReply, FastifyRequest } from 'fastify'
import { ShepherdError } from '../errors.js'
import { anthropicError, messageId, messageObject, parseMessagesRequest, sse, stopReasonOf, streamEnd, streamStart, textDelta, usageOf, type ParsedMessagesRequest } from './anthropic-mapping.js'
import { toolUseBlock, toolUseId } from './anthropic-tools.js'
import { chatEvents, generationEvents, routeCall, streamError, type ForeignApiOptions, type GenerationEvent } from './inference-call.js'
import { StopScanner } from '../node/engines/index.js'

/** A stop sequence matched: generation is stopped on purpose, not failed. */
const STOPPED = new ShepherdError('stop sequence reached', { code: 'stop_sequence', status: 499 })

/** Rewrites any error body of this plugin's routes (ours, fastify's, the auth hooks') into Anthropic's shape. */
function installAnthropicErrors (app: FastifyInstance): void {
  app.addHook('onSend', async (_request, reply, payload) => {
    if (reply.statusCode < 400 || typeof payload !== 'string') return payload
    try {
      const body = JSON.parse(payload)
      if (body?.type === 'error') return payload
      const message = typeof body?.error?.message === 'string' ? body.error.message : 'Request failed'
      return JSON.stringify(anthropicError(reply.statusCode, message))
    } catch {
      return payload
    }
  })
}

/** The Anthropic Messages API under `/v1/messages`. */
export function anthropicRoutes (opts: ForeignApiOptions): FastifyPluginAsync {
  const { router } = opts
  const contextOf = (model: unknown): number | null => typeof model === 'string' ? router.models().get(model)?.contextLength ?? null : null

  async function * generate (parsed: ParsedMessagesRequest, req: FastifyRequest, reply: FastifyReply): AsyncGenerator<GenerationEvent | { kind: 'stopped', stop: string, generated: number }> {
    const call = await routeCall(opts, req, reply, 'chat', parsed.body)
    const scanner = new StopScanner(parsed.stops)
    // Text pieces the engine sent (one per token on the local engines): the output count when a
    // stop ends generation before the engine reports usage.
    let generated = 0
    try {
      for await (const ev of generationEvents(call.reply, call.signal)) {
        if (ev.kind === 'end') {
          const rest = scanner.flush()
          if (rest !== '') yield { kind: 'text', text: rest }
          yield ev
          return
        }
        if (ev.kind !== 'text') {
          // Stop sequences apply to text only: text held back for one is complete before a tool call.
          const rest = scanner.flush()
          if (rest !== '') yield { kind: 'text', text: rest }
          yield ev
          continue
        }
        generated++
        const { emit, stop } = scanner.push(ev.text)
        if (emit !== '') yield { kind: 'text', text: emit }
        if (stop !== undefined) {
          call.abort(STOPPED)
          yield { kind: 'stopped', stop, generated }
          return
        }
      }
    } finally {
      call.done()
    }
  }

  return async (app: FastifyInstance) => {
    installAnthropicErrors(app)
    const anyObject = { type: 'object' }

    app.post('/v1/messages', { schema: { body: anyObject } }, async (req, reply) => {
      const parsed = parseMessagesRequest(req.body, { maxOutputTokens: contextOf((req.body as any)?.model) })
      const events = generate(parsed, req, reply)
      try {
        await respond(parsed, events, reply)
      } finally {
        // Runs the generator's cleanup (time limit, early stop) however the response ended.
        await events.return(undefined)
      }
    })

    async function respond (parsed: ParsedMessagesRequest, events: ReturnType<typeof generate>, reply: FastifyReply): Promise<void> {
      const id = messageId()
      let text = ''
      let outputPieces = 0
      // Tool calls by chat call index, in order of appearance (non-streamed answers).
      const calls = new Map<number, { id: string, name: string, args: string }>()
      // The first event is awaited before anything is sent: a refusal (unknown model, a parameter
      // the engine rejects) still gets its own HTTP status rather than a broken 200 stream.
      let first = await events.next()
      if (!parsed.stream) {
        for (; first.done !== true; first = await events.next()) {
          const ev = first.value
          if (ev.kind === 'text') { text += ev.text; outputPieces++ } else if (ev.kind === 'tool_start') {
            calls.set(ev.call, { id: ev.id, name: ev.name, args: '' })
          } else if (ev.kind === 'tool_args') {
            const c = calls.get(ev.call)
            if (c !== undefined) c.args += ev.json
          } else {
            const stopSequence = ev.kind === 'stopped' ? ev.stop : null
            const usage = ev.kind === 'end' ? usageOf(ev.promptTokens ?? 0, ev.completionTokens ?? outputPieces) : usageOf(0, ev.generated)
            const blocks = calls.size === 0
              ? undefined
              : [...(text !== '' ? [{ type: 'text', text }] : []), ...[...calls.values()].map(c => toolUseBlock(c.id, c.name, c.args))]
            const msg = messageObject({ id, model: parsed.model, text, stopReason: stopReasonOf(ev.kind === 'end' ? ev.finishReason : 'stop', stopSequence ?? undefined), stopSequence, usage, blocks })
            await reply.type('application/json').send(JSON.stringify(msg))
            return
          }
        }
        throw new ShepherdError('The generation ended without a result', { code: 'stream_failed', status: 502 })
      }
      const { res, write } = openStream(reply)
      try {
        // Without tools the text block opens at once (index 0), as before; with tools each block
        // opens when its first piece arrives, so a bare tool call is not preceded by an empty text.
        await write(streamStart(id, parsed.model, !parsed.tools))
        let open: { index: number, kind: 'text' | 'tool', call?: number } | null = parsed.tools ? null : { index: 0, kind: 'text' }
        let next = open === null ? 0 : 1
        const close = async (): Promise<void> => {
          if (open !== null) await write(sse({ type: 'content_block_stop', index: open.index }))
          open = null
        }
        for (; first.done !== true; first = await events.next()) {
          const ev = first.value
          if (ev.kind === 'text') {
            outputPieces++
            if (open?.kind !== 'text') {
              await close()
              open = { index: next++, kind: 'text' }
              await write(sse({ type: 'content_block_start', index: open.index, content_block: { type: 'text', text: '' } }))
            }
            await write(textDelta(ev.text, open.index))
          } else if (ev.kind === 'tool_start') {
            await close()
            open = { index: next++, kind: 'tool', call: ev.call }
            await write(sse({ type: 'content_block_start', index: open.index, content_block: { type: 'tool_use', id: toolUseId(ev.id), name: ev.name, input: {} } }))
          } else if (ev.kind === 'tool_args') {
            // Argument pieces belong to the call opened last (the engines stream calls one after another).
            if (open?.kind === 'tool' && open.call === ev.call) await write(sse({ type: 'content_block_delta', index: open.index, delta: { type: 'input_json_delta', partial_json: ev.json } }))
          } else if (ev.kind === 'end') {
            const o = open as { index: number } | null
            await write(streamEnd(stopReasonOf(ev.finishReason, undefined), null, usageOf(ev.promptTokens ?? 0, ev.completionTokens ?? outputPieces), o?.index ?? null))
            return
          } else {
            const o = open as { index: number } | null
            await write(streamEnd('stop_sequence', ev.stop, usageOf(0, ev.generated), o?.index ?? null))
            return
          }
        }
        throw new ShepherdError('The generation ended without a result', { code: 'stream_failed', status: 502 })
      } catch (err) {
        if (!res.destroyed) {
          const typed = streamError(err)
          res.write(sse(anthropicError(typed.status, typed.message) as any))
        }
      } finally {
        res.end()
      }
    }

    app.post('/v1/messages/count_tokens', { schema: { body: anyObject } }, async (req, reply) => {
      const parsed = parseMessagesRequest(req.body, { forCount: true })
      // No tokenizer runs in the API layer: the host evaluates the prompt (one token generated)
      // and reports the prompt's length, so the count is the model's own.
      const call = await routeCall(opts, req, reply, 'chat', parsed.body)
      try {
        for await (const ev of chatEvents(call.reply, call.signal)) {
          if (ev.kind === 'end') {
            if (ev.promptTokens == null) throw new ShepherdError('The engine serving this model does not report token counts', { code: 'unsupported', status: 501 })
            return await reply.type('application/json').send(JSON.stringify({ input_tokens: ev.promptTokens }))
          }
        }
      } finally {
        call.done()
      }
      throw new ShepherdError('The generation ended without a result', { code: 'stream_failed', status: 502 })
    })
  }
}
