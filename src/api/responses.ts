/**
 * OpenAI's Responses API: `POST /v1/responses`, whole or streamed as its typed server-sent events,
 * served through the router like `/v1/chat/completions`, so a node without the model relays to one
 * that has it. Responses with `store` (OpenAI's default) are kept on this node, bounded (see
 * responses-store.ts), for `previous_response_id`, `item_reference` and `GET`/`DELETE /v1/responses/:id`.
 */
import { openStream } from './stream-response.js'
import type { FastifyInstance, FastifyPluginAsync, FastifyReply, FastifyRequest } from 'fastify'
import { BadRequestError, ShepherdError } from '../errors.js'
import { parseResponsesRequest, type ParsedResponsesRequest, type ResponsesLookup } from './responses-mapping.js'
import { functionCallId, functionCallItem, outputMessage, outputMessageId, responseId, responseObject, ResponseEventStream, statusOf, usageOf, type OutputItem } from './responses-output.js'
import { generationEvents, routeCall, streamError, type ForeignApiOptions, type GenerationEvent, type RoutedCall } from './inference-call.js'
import { responsesToolParam, responsesToolText } from './responses-tools.js'
import { ResponseStore, type ResponseOwner, type ResponseStoreLimits } from './responses-store.js'

export interface ResponsesRoutesOptions extends ForeignApiOptions {
  /** Bounds of this node's stored responses (options `responsesStoreMax`, `responsesStoreMb`). */
  store: ResponseStoreLimits
}

/**
 * The engine judges `response_format` (structured output may or may not be served by it) and the
 * tools; its refusal names the chat field, which a Responses client knows as `text.format`,
 * `tools[0].name` or `tool_choice.name`.
 */
function asResponsesError (err: unknown): unknown {
  if (err instanceof ShepherdError && err.status === 400 && err.param === 'response_format') {
    return new BadRequestError(err.message.replace(/response_format/g, 'text.format'), 'text.format', err.code)
  }
  const toolParam = err instanceof ShepherdError && err.status === 400 && typeof err.param === 'string' ? responsesToolParam(err.param) : null
  if (toolParam !== null) return new BadRequestError(responsesToolText((err as ShepherdError).message), toolParam, (err as ShepherdError).code)
  return err
}

/** Whether the request offers tools the model may call (then no message item opens before text does). */
const offersTools = (parsed: ParsedResponsesRequest): boolean => Array.isArray(parsed.body.tools) && parsed.body.tools.length > 0 && parsed.body.tool_choice !== 'none'

/** The Responses API under `/v1/responses`. */
export function responsesRoutes (opts: ResponsesRoutesOptions): FastifyPluginAsync {
  const { router } = opts
  const store = new ResponseStore(opts.store)
  /** What a request may continue from: only responses stored with its own API key. */
  const lookupFor = (owner: ResponseOwner): ResponsesLookup => ({
    conversation: (id: string) => store.get(id, owner)?.conversation,
    item: (id: string) => store.item(id, owner)
  })
  /** Keeps a finished response (unless `store: false`) with the conversation a follow-up continues. */
  const keep = (parsed: ParsedResponsesRequest, response: Record<string, unknown> | undefined, owner: ResponseOwner): void => {
    if (!parsed.echo.store || response === undefined) return
    const output = Array.isArray(response.output) ? response.output as Array<Record<string, unknown>> : []
    store.put(String(response.id), { response, conversation: [...parsed.items, ...output] }, owner)
  }
  const contextOf = (model: unknown): number | null => typeof model === 'string' ? router.models().get(model)?.contextLength ?? null : null

  return async (app: FastifyInstance) => {
    const anyObject = { type: 'object' }

    app.post('/v1/responses', { schema: { body: anyObject } }, async (req, reply) => {
      const owner = req.apiKeyOwner
      const parsed = parseResponsesRequest(req.body, { maxOutputTokens: contextOf((req.body as any)?.model), lookup: lookupFor(owner) })
      let call: RoutedCall
      try {
        call = await routeCall(opts, req, reply, 'chat', parsed.body)
      } catch (err) {
        throw asResponsesError(err)
      }
      const events = generationEvents(call.reply, call.signal)
      try {
        // The first event is awaited before anything is sent: a refusal (unknown model, a format
        // the engine rejects) still gets its own HTTP status rather than a broken 200 stream.
        let first: IteratorResult<GenerationEvent>
        try {
          first = await events.next()
        } catch (err) {
          throw asResponsesError(err)
        }
        if (parsed.stream) await streamed(parsed, first, events, reply, owner)
        else await whole(parsed, first, events, reply, owner)
      } finally {
        await events.return(undefined)
        call.done()
      }
    })

    async function whole (parsed: ParsedResponsesRequest, first: IteratorResult<GenerationEvent>, events: AsyncGenerator<GenerationEvent>, reply: FastifyReply, owner: ResponseOwner): Promise<void> {
      const id = responseId()
      const createdAt = Math.floor(Date.now() / 1000)
      let text = ''
      const calls = new Map<number, { callId: string, name: string, args: string }>()
      for (let next = first; next.done !== true; next = await events.next()) {
        const ev = next.value
        if (ev.kind === 'text') { text += ev.text; continue }
        if (ev.kind === 'tool_start') { if (!calls.has(ev.call)) calls.set(ev.call, { callId: ev.id, name: ev.name, args: '' }); continue }
        if (ev.kind === 'tool_args') {
          const c = calls.get(ev.call) ?? { callId: `call_${ev.call}`, name: '', args: '' }
          calls.set(ev.call, { ...c, args: c.args + ev.json })
          continue
        }
        const status = statusOf(ev.finishReason)
        const usage = usageOf(ev.promptTokens ?? 0, ev.completionTokens ?? 0)
        // A forced call with no text gets no empty message before it (OpenAI sends only the call).
        const output: OutputItem[] = text !== '' || calls.size === 0 ? [outputMessage(outputMessageId(), status, text)] : []
        for (const c of calls.values()) output.push(functionCallItem(functionCallId(), status, c.callId, c.name, c.args))
        const body = responseObject({ id, createdAt, model: parsed.model, status, output, usage, completedAt: Math.floor(Date.now() / 1000) }, parsed.echo)
        keep(parsed, body, owner)
        await reply.type('application/json').send(JSON.stringify(body))
        return
      }
      throw new ShepherdError('The generation ended without a result', { code: 'stream_failed', status: 502 })
    }

    async function streamed (parsed: ParsedResponsesRequest, first: IteratorResult<GenerationEvent>, events: AsyncGenerator<GenerationEvent>, reply: FastifyReply, owner: ResponseOwner): Promise<void> {
      const stream = new ResponseEventStream({ id: responseId(), createdAt: Math.floor(Date.now() / 1000), model: parsed.model }, parsed.echo, outputMessageId(), offersTools(parsed))
      const { res, write } = openStream(reply)
      try {
        await write(stream.start())
        for (let next = first; next.done !== true; next = await events.next()) {
          const ev = next.value
          if (ev.kind === 'text') {
            await write(stream.delta(ev.text))
            continue
          }
          if (ev.kind === 'tool_start') { await write(stream.callStart(ev.call, ev.id, ev.name)); continue }
          if (ev.kind === 'tool_args') { await write(stream.callArguments(ev.call, ev.json)); continue }
          const done = stream.finish(ev.finishReason, usageOf(ev.promptTokens ?? 0, ev.completionTokens ?? 0), Math.floor(Date.now() / 1000))
          keep(parsed, stream.final, owner)
          await write(done)
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

    // Stored on this node only (see the README), for the key that stored it: another node's id, another
    // key's, an evicted one or one sent with store: false is a 404.
    const idOf = (req: FastifyRequest): string => String((req.params as { id: string }).id)
    const notFound = (id: string): ShepherdError => new ShepherdError(`No response found with id '${id.slice(0, 128)}'.`, { code: 'not_found', status: 404, param: 'response_id' })
    app.get('/v1/responses/:id', async (req, reply) => {
      const stored = store.get(idOf(req), req.apiKeyOwner)
      if (stored === undefined) throw notFound(idOf(req))
      // Sent as a string: model output must reach the client verbatim (sanitize.ts cleans objects).
      return await reply.type('application/json').send(JSON.stringify(stored.response))
    })
    app.get('/v1/responses/:id/input_items', async (req, reply) => {
      const stored = store.get(idOf(req), req.apiKeyOwner)
      if (stored === undefined) throw notFound(idOf(req))
      const output = Array.isArray(stored.response.output) ? stored.response.output.length : 0
      const data = stored.conversation.slice(0, stored.conversation.length - output).reverse()
      const ids = data.map(item => typeof item.id === 'string' ? item.id : null)
      return await reply.type('application/json').send(JSON.stringify({ object: 'list', data, first_id: ids[0] ?? null, last_id: ids.at(-1) ?? null, has_more: false }))
    })
    app.delete('/v1/responses/:id', async (req) => {
      if (!store.delete(idOf(req), req.apiKeyOwner)) throw notFound(idOf(req))
      return { id: idOf(req), object: 'response', deleted: true }
    })
  }
}
