/**
 * Chat output mapped back into OpenAI's Responses shapes: the response object (every field OpenAI's
 * API returns) and the numbered event sequence of a streamed response. Pure: no I/O, no clock.
 */
import { randomBytes } from 'node:crypto'
import type { ResponseEcho } from './responses-mapping.js'

function randomId (prefix: string): string {
  return prefix + randomBytes(24).toString('hex')
}

/** `resp_` and 48 hex characters, like OpenAI's ids. */
export const responseId = (): string => randomId('resp_')
/** `msg_` and 48 hex characters, like OpenAI's output message ids. */
export const outputMessageId = (): string => randomId('msg_')
/** `fc_` and 48 hex characters, like OpenAI's function call item ids. */
export const functionCallId = (): string => randomId('fc_')

export interface ResponseUsage {
  input_tokens: number
  input_tokens_details: { cached_tokens: number }
  output_tokens: number
  output_tokens_details: { reasoning_tokens: number }
  total_tokens: number
}

export function usageOf (input: number, output: number): ResponseUsage {
  return { input_tokens: input, input_tokens_details: { cached_tokens: 0 }, output_tokens: output, output_tokens_details: { reasoning_tokens: 0 }, total_tokens: input + output }
}

export type ResponseStatus = 'in_progress' | 'completed' | 'incomplete' | 'failed'

/** The status a finished chat generation gives: a length stop means the output limit was reached. */
export function statusOf (finishReason: string): 'completed' | 'incomplete' {
  return finishReason === 'length' ? 'incomplete' : 'completed'
}

export interface OutputMessage {
  id: string
  type: 'message'
  status: 'in_progress' | 'completed' | 'incomplete'
  role: 'assistant'
  content: Array<{ type: 'output_text', text: string, annotations: [], logprobs: [] }>
}

export function outputText (text: string): OutputMessage['content'][number] {
  return { type: 'output_text', text, annotations: [], logprobs: [] }
}

export function outputMessage (id: string, status: OutputMessage['status'], text: string | null): OutputMessage {
  return { id, type: 'message', status, role: 'assistant', content: text === null ? [] : [outputText(text)] }
}

/** A function call output item; `call_id` is what the client's `function_call_output` names. */
export interface FunctionCallItem {
  id: string
  type: 'function_call'
  status: 'in_progress' | 'completed' | 'incomplete'
  call_id: string
  name: string
  arguments: string
}

export function functionCallItem (id: string, status: FunctionCallItem['status'], callId: string, name: string, args: string): FunctionCallItem {
  return { id, type: 'function_call', status, call_id: callId, name, arguments: args }
}

export type OutputItem = OutputMessage | FunctionCallItem

export interface ResponseState {
  id: string
  createdAt: number
  model: string
  status: ResponseStatus
  output: OutputItem[]
  usage: ResponseUsage | null
  error?: { code: string, message: string } | null
  /** Seconds since the epoch; set once the response is finished. */
  completedAt?: number | null
}

/**
 * A whole response object, with every field OpenAI's API returns (the SDK's `Response` type marks
 * most of them required). `output_text` is left to the SDKs, which compute it from `output`.
 */
export function responseObject (s: ResponseState, echo: ResponseEcho): Record<string, unknown> {
  return {
    id: s.id,
    object: 'response',
    created_at: s.createdAt,
    status: s.status,
    background: false,
    completed_at: s.status === 'completed' ? (s.completedAt ?? null) : null,
    error: s.error ?? null,
    incomplete_details: s.status === 'incomplete' ? { reason: 'max_output_tokens' } : null,
    instructions: echo.instructions,
    max_output_tokens: echo.maxOutputTokens,
    max_tool_calls: null,
    model: s.model,
    output: s.output,
    parallel_tool_calls: echo.parallelToolCalls,
    previous_response_id: echo.previousResponseId,
    prompt_cache_key: echo.promptCacheKey,
    reasoning: { effort: null, summary: null },
    safety_identifier: echo.safetyIdentifier,
    service_tier: 'default',
    store: echo.store,
    temperature: echo.temperature,
    text: { format: echo.format, verbosity: 'medium' },
    tool_choice: echo.toolChoice,
    tools: echo.tools,
    top_logprobs: 0,
    top_p: echo.topP,
    truncation: 'disabled',
    usage: s.usage,
    user: echo.user,
    metadata: echo.metadata
  }
}

/** One server-sent event: OpenAI names each event and repeats its type in the data. */
export function sse (data: { type: string } & Record<string, unknown>): string {
  return `event: ${data.type}\ndata: ${JSON.stringify(data)}\n\n`
}

/**
 * The event sequence of one streamed response, numbered as OpenAI numbers it (`sequence_number`
 * from 0). Holds the text and call arguments so far, so the `.done` events and the final response
 * repeat them whole. Output items are numbered in the order they open: the message first unless
 * `lazyMessage` (a request that offers tools), where it opens on the first text and a forced call
 * gets no empty message before it.
 */
export class ResponseEventStream {
  private seq = 0
  private text = ''
  private readonly msgId: string
  private msgIndex: number | null = null
  private nextIndex = 0
  /** Chat tool call index → its output item and output index. */
  private readonly calls = new Map<number, { item: FunctionCallItem, outputIndex: number }>()
  /** The finished response object, once `finish` ran (what is stored). */
  final: Record<string, unknown> | undefined

  constructor (private readonly state: Omit<ResponseState, 'status' | 'output' | 'usage'>, private readonly echo: ResponseEcho, msgId = outputMessageId(), private readonly lazyMessage = false) {
    this.msgId = msgId
  }

  private event (type: string, fields: Record<string, unknown>): string {
    return sse({ type, ...fields, sequence_number: this.seq++ })
  }

  private response (status: ResponseStatus, output: OutputItem[], usage: ResponseUsage | null, extra: Partial<ResponseState> = {}): Record<string, unknown> {
    return responseObject({ ...this.state, status, output, usage, ...extra }, this.echo)
  }

  private openMessage (): string {
    this.msgIndex = this.nextIndex++
    return this.event('response.output_item.added', { output_index: this.msgIndex, item: outputMessage(this.msgId, 'in_progress', null) }) +
      this.event('response.content_part.added', { item_id: this.msgId, output_index: this.msgIndex, content_index: 0, part: outputText('') })
  }

  /** `response.created`, `response.in_progress`, and (unless lazy) the empty message and text part. */
  start (): string {
    return this.event('response.created', { response: this.response('in_progress', [], null) }) +
      this.event('response.in_progress', { response: this.response('in_progress', [], null) }) +
      (this.lazyMessage ? '' : this.openMessage())
  }

  delta (text: string): string {
    const opened = this.msgIndex === null ? this.openMessage() : ''
    this.text += text
    return opened + this.event('response.output_text.delta', { item_id: this.msgId, output_index: this.msgIndex, content_index: 0, delta: text, logprobs: [] })
  }

  /** A tool call started: its item, with empty arguments. */
  callStart (index: number, callId: string, name: string, id = functionCallId()): string {
    if (this.calls.has(index)) return ''
    const entry = { item: functionCallItem(id, 'in_progress', callId, name, ''), outputIndex: this.nextIndex++ }
    this.calls.set(index, entry)
    return this.event('response.output_item.added', { output_index: entry.outputIndex, item: { ...entry.item } })
  }

  /** A piece of a started call's arguments (a piece for an unknown call starts one without a name). */
  callArguments (index: number, delta: string): string {
    const opened = this.calls.has(index) ? '' : this.callStart(index, `call_${index}`, '')
    const entry = this.calls.get(index) as { item: FunctionCallItem, outputIndex: number }
    entry.item.arguments += delta
    return opened + this.event('response.function_call_arguments.delta', { item_id: entry.item.id, output_index: entry.outputIndex, delta })
  }

  /** The `.done` events of every item, and `response.completed` (or `response.incomplete` when the output limit stopped it). */
  finish (finishReason: string, usage: ResponseUsage, completedAt: number): string {
    const status = statusOf(finishReason)
    let out = this.msgIndex === null && this.calls.size === 0 ? this.openMessage() : ''
    const items: Array<{ outputIndex: number, item: OutputItem }> = []
    if (this.msgIndex !== null) {
      const item = outputMessage(this.msgId, status, this.text)
      items.push({ outputIndex: this.msgIndex, item })
      out += this.event('response.output_text.done', { item_id: this.msgId, output_index: this.msgIndex, content_index: 0, text: this.text, logprobs: [] }) +
        this.event('response.content_part.done', { item_id: this.msgId, output_index: this.msgIndex, content_index: 0, part: outputText(this.text) }) +
        this.event('response.output_item.done', { output_index: this.msgIndex, item })
    }
    for (const { item: open, outputIndex } of this.calls.values()) {
      const item = { ...open, status }
      items.push({ outputIndex, item })
      out += this.event('response.function_call_arguments.done', { item_id: item.id, output_index: outputIndex, name: item.name, arguments: item.arguments }) +
        this.event('response.output_item.done', { output_index: outputIndex, item })
    }
    const output = items.sort((x, y) => x.outputIndex - y.outputIndex).map(x => x.item)
    this.final = this.response(status, output, usage, { completedAt })
    return out + this.event(status === 'completed' ? 'response.completed' : 'response.incomplete', { response: this.final })
  }

  /** The stream broke after it started: an `error` event, which the SDKs raise as an error. */
  error (code: string | null, message: string, param: string | null = null): string {
    return this.event('error', { code, message, param })
  }
}
