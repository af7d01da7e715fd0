/**
 * llama-server's answers in exactly the OpenAI shapes the embedded engine returns (our model id,
 * no llama.cpp extras), and the bodies sent to it: the text-completion half of the mapping
 * (chat's, with tools and logprobs, is src/node/engines/llama-tools.ts). Pure functions.
 */
import { ShepherdError } from '../../errors.js'
import { finishReason, usageOf } from './llama-tools.js'
import { newResponseId, unixNow, type ResponseHeader } from './openai-response.js'
import { upstreamSchema, type ResponseFormat } from './response-format.js'
import type { TextCompletion, TextCompletionChunk } from './openai-types.js'

/** The identity of a response, its model replaced by ours. */
function headerOf (raw: Record<string, unknown>, prefix: 'chatcmpl' | 'cmpl', model: string): ResponseHeader {
  let id = typeof raw.id === 'string' && raw.id !== '' ? raw.id : newResponseId(prefix)
  // llama-server names text completions `chatcmpl-` too; OpenAI's are `cmpl-`.
  if (prefix === 'cmpl' && id.startsWith('chatcmpl-')) id = id.slice('chat'.length)
  return {
    id,
    created: typeof raw.created === 'number' ? raw.created : unixNow(),
    model
  }
}

export function asRecord (value: unknown): Record<string, unknown> {
  if (value === null || typeof value !== 'object') {
    throw new ShepherdError('llama-server sent something that is not a JSON object', { code: 'upstream_invalid_response', status: 502 })
  }
  return value as Record<string, unknown>
}

function firstChoice (raw: Record<string, unknown>): Record<string, unknown> | undefined {
  const choices = raw.choices
  return Array.isArray(choices) && choices.length > 0 ? asRecord(choices[0]) : undefined
}

/** A llama-server text completion as an exact OpenAI one; `echo` is the prompt to put first. */
export function toTextCompletion (value: unknown, model: string, echo = ''): TextCompletion {
  const raw = asRecord(value)
  const header = headerOf(raw, 'cmpl', model)
  const choice = firstChoice(raw) ?? {}
  return {
    id: header.id,
    object: 'text_completion',
    created: header.created,
    model,
    choices: [{ text: echo + (typeof choice.text === 'string' ? choice.text : ''), index: 0, logprobs: null, finish_reason: finishReason(choice.finish_reason) }],
    usage: usageOf(raw.usage)
  }
}

/** A llama-server completion chunk as OpenAI ones (see `toChatChunks`). */
export function toTextChunks (value: unknown, model: string, includeUsage: boolean): TextCompletionChunk[] {
  const raw = asRecord(value)
  const header = headerOf(raw, 'cmpl', model)
  const out: TextCompletionChunk[] = []
  const base = { id: header.id, object: 'text_completion' as const, created: header.created, model }
  const choice = firstChoice(raw)
  if (choice !== undefined) {
    const finish = choice.finish_reason == null ? null : finishReason(choice.finish_reason)
    const text = typeof choice.text === 'string' ? choice.text : ''
    out.push({ ...base, choices: [{ text, index: 0, logprobs: null, finish_reason: finish }], ...(includeUsage ? { usage: null } : {}) })
  }
  if (includeUsage && raw.usage != null) out.push({ ...base, choices: [], usage: usageOf(raw.usage) })
  return out
}

/**
 * Structured output on llama-server's `/v1/completions`: it reads no `response_format` there,
 * only its own `json_schema` field.
 */
export function completionFormat (format: ResponseFormat | undefined): Record<string, unknown> {
  return { response_format: undefined, json_schema: format === undefined ? undefined : upstreamSchema(format) }
}

/** The client's body for the child: fields this engine handles itself (keep_alive, echo, suffix, best_of) left out, `extra` laid over. */
export function forwardable (body: object, model: string, extra: Record<string, unknown>): Record<string, unknown> {
  const { keep_alive: _keepAlive, echo: _echo, suffix: _suffix, best_of: _bestOf, ...rest } = body as Record<string, unknown>
  return { ...rest, ...extra, model }
}
