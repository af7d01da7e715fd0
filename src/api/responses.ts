/**
 * OpenAI's Responses API: `POST /v1/responses`, whole or streamed as its typed server-sent events,
 * served through the router like `/v1/chat/completions`, so a node without the model relays to one
 * that has it. Nothing is stored: `GET`/`DELETE /v1/responses/:id` answer 404 saying so.
 */
import { openStream } from './stream-response.js'
import type { FastifyInstance, FastifyPluginAsync, FastifyReply, FastifyRequest } from 'fastify'
import { BadRequestError, ShepherdError } from '../errors.js'
import { parseResponsesRequest, type ParsedResponsesRequest } from './responses-mapping.js'
import { outputMessage, outputMessageId, responseId, responseObject, ResponseEventStream, statusOf, usageOf } from './responses-output.js'
import { chatEvents, routeCall, streamError, type ChatEvent, type ForeignApiOptions, type RoutedCall } from './inference-call.js'

/**
 * The engine judges `response_format` (structured output may or may not be served by it); its
 * refusal names the chat field, which a Responses client knows as `text.format`.
 */
function asResponsesError (err: unknown): unknown {
  if (err instanceof ShepherdError && err.status === 400 && err.param === 'response_format') {
    return new BadRequestError(err.message.replace(/response_format/g, 'text.format'), 'text.format', err.code)
  }
  return err
}

/** The Responses API under `/v1/responses`. */
export function responsesRoutes (opts: ForeignApiOptions): FastifyPluginAsync {
  const { router } = opts
  const contextOf = (model: unknown): number | null => typeof model === 'string' ? router.models().get(model)?.contextLength ?? null : null

  return async (app: FastifyInstance) => {
    const anyObject = { type: 'object' }

    app.post('/v1/responses', { schema: { body: anyObject } }, async (req, reply) => {
      const parsed = parseResponsesRequest(req.body, { maxOutputTokens: contextOf((req.body as any)?.model) })
      let call: RoutedCall
      try {
        call = await routeCall(opts, req, reply, 'chat', parsed.body)
      } catch (err) {
        throw asResponsesError(err)
      }
      const events = chatEvents(call.reply, call.signal)
      try {
        // The first event is awaited before anything is sent: a refusal (unknown model, a format
        // the engine rejects) still gets its own HTTP status rather than a broken 200 stream.
        let first: IteratorResult<ChatEvent>
        try {
          first = await events.next()
        } catch (err) {
          throw asResponsesError(err)
        }
        if (parsed.stream) await streamed(parsed, first, events, reply)
        else await whole(parsed, first, events, reply)
      } finally {
        await events.return(undefined)
        call.done()
      }
    })

    async function whole (parsed: ParsedResponsesRequest, first: IteratorResult<ChatEvent>, events: AsyncGenerator<ChatEvent>, reply: FastifyReply): Promise<void> {
      const id = responseId()
      const createdAt = Math.floor(Date.now() / 1000)
      let text = ''
      for (let next = first; next.done !== true; next = await events.next()) {
        const ev = next.value
        if (ev.kind === 'text') { text += ev.text; continue }
        const status = statusOf(ev.finishReason)
        const usage = usageOf(ev.promptTokens ?? 0, ev.completionTokens ?? 0)
        const body = responseObject({ id, createdAt, model: parsed.model, status, output: [outputMessage(outputMessageId(), status, text)], usage, completedAt: Math.floor(Date.now() / 1000) }, parsed.echo)
        await reply.type('application/json').send(JSON.stringify(body))
        return
      }
      throw new ShepherdError('The generation ended without a result', { code: 'stream_failed', status: 502 })
    }

    async function streamed (parsed: ParsedResponsesRequest, first: IteratorResult<ChatEvent>, events: AsyncGenerator<ChatEvent>, reply: FastifyReply): Promise<void> {
      const stream = new ResponseEventStream({ id: responseId(), createdAt: Math.floor(Date.now() / 1000), model: parsed.model }, parsed.echo)
      const { res, write } = openStream(reply)
      try {
        await write(stream.start())
        for (let next = first; next.done !== true; next = await events.next()) {
          const ev = next.value
          if (ev.kind === 'text') {
            await write(stream.delta(ev.text))
            continue
          }
          await write(stream.finish(ev.finishReason, usageOf(ev.promptTokens ?? 0, ev.completionTokens ?? 0), Math.floor(Date.now() / 1000)))
          return
        }
        throw new ShepherdError('The generation ended without a result', { code: 'stream_failed', status: 502 })
      } catch (err) {
        if (!res.destroyed) {
          const typed = streamError(err)
          res.write(stream.error(typed.code, typed.message, typed.param))
        }
      } finally {
        res.end()
      }
    }

    // Nothing is stored (see README): say so rather than answer "unknown route".
    const notStored = async (req: FastifyRequest): Promise<never> => {
      const id = String((req.params as { id: string }).id).slice(0, 128)
      throw new ShepherdError(`No response found with id '${id}': this server does not store responses.`, { code: 'not_found', status: 404, param: 'response_id' })
    }
    app.get('/v1/responses/:id', notStored)
    app.delete('/v1/responses/:id', notStored)
  }
}
