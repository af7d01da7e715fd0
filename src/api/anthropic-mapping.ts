/**
 * The Anthropic Messages API (`POST /v1/messages`) mapped onto the OpenAI chat request the router
 * already carries, and OpenAI output mapped back into Anthropic's shapes. Pure functions: every
 * refusal is a `BadRequestError` whose message names the field the way Anthropic's API does.
 *
 * Text and custom (client) tools: tools, tool_choice, tool_use and tool_result blocks map onto
 * OpenAI chat tools (see anthropic-tools.ts). Server tools, images, documents and extended thinking
 * are refused with a 400 rather than dropped, so a client never gets an answer to a question it
 * did not ask.
 */
import { randomBytes } from 'node:crypto'
import { BadRequestError } from '../errors.js'
import { asObject, blocksText, mapMessage, parseToolChoice, parseTools, type ChatMessage } from './anthropic-tools.js'

/** The Anthropic error body. */
export interface AnthropicErrorBody {
  type: 'error'
  error: { type: string, message: string }
}

export interface ParsedMessagesRequest {
  model: string
  stream: boolean
  /** Stop sequences, matched on the text by the API layer (see stop-scanner.ts). */
  stops: string[]
  /** The OpenAI chat body for the router: always streamed internally, with usage. */
  body: Record<string, unknown>
  /** Whether the request offers tools: a streamed answer then opens its content blocks lazily. */
  tools: boolean
}

/**
 * Bounds that Anthropic states per model; here they protect the node. A stop sequence longer
 * than this is held back from the stream that long, so it is bounded too.
 */
export const MESSAGES_LIMITS = {
  maxStopSequences: 64,
  maxStopSequenceChars: 1000,
  /** Output tokens allowed when the model's context length is unknown. */
  maxTokensFallback: 1 << 20
} as const

/** Top-level fields this server understands; any other is refused, as Anthropic's API does. */
const KNOWN = new Set(['model', 'messages', 'max_tokens', 'system', 'stop_sequences', 'temperature', 'top_p', 'top_k', 'metadata', 'stream', 'tools', 'tool_choice', 'thinking', 'service_tier'])

type Body = Record<string, unknown>

const present = (b: Body, k: string): boolean => b[k] !== undefined && b[k] !== null


function numberIn (b: Body, k: string, min: number, max: number): number | undefined {
  if (!present(b, k)) return undefined
  const v = b[k]
  if (typeof v !== 'number' || !Number.isFinite(v)) throw new BadRequestError(`${k}: Input should be a valid number`, k)
  if (v < min || v > max) throw new BadRequestError(`${k}: Input should be between ${min} and ${max}`, k)
  return v
}

function integerIn (b: Body, k: string, min: number, max: number): number | undefined {
  const v = numberIn(b, k, min, Number.MAX_SAFE_INTEGER)
  if (v === undefined) return undefined
  if (!Number.isInteger(v)) throw new BadRequestError(`${k}: Input should be a valid integer`, k)
  if (v > max) throw new BadRequestError(`${k}: ${v} > ${max}, which is the maximum allowed value`, k)
  return v
}


function refuseUnsupported (b: Body): void {
  for (const k of Object.keys(b)) {
    if (!KNOWN.has(k)) throw new BadRequestError(`${k}: Extra inputs are not permitted`, k)
  }
  if (present(b, 'thinking')) {
    const t = asObject(b.thinking, 'thinking')
    if (t.type !== 'disabled') throw new BadRequestError('thinking: extended thinking is not supported by this server', 'thinking', 'unsupported_parameter')
  }
  if (present(b, 'metadata')) asObject(b.metadata, 'metadata')
  // No tiers in a mesh: every request is served alike, which is what 'auto' and 'standard_only' ask.
  if (present(b, 'service_tier') && b.service_tier !== 'auto' && b.service_tier !== 'standard_only') {
    throw new BadRequestError("service_tier: Input should be 'auto' or 'standard_only'", 'service_tier')
  }
}

function parseStops (b: Body): string[] {
  if (!present(b, 'stop_sequences')) return []
  const s = b.stop_sequences
  if (!Array.isArray(s) || s.some(x => typeof x !== 'string')) throw new BadRequestError('stop_sequences: Input should be a list of strings', 'stop_sequences')
  if (s.length > MESSAGES_LIMITS.maxStopSequences) throw new BadRequestError(`stop_sequences: at most ${MESSAGES_LIMITS.maxStopSequences} stop sequences are allowed`, 'stop_sequences')
  if (s.some(x => x.length > MESSAGES_LIMITS.maxStopSequenceChars)) throw new BadRequestError(`stop_sequences: each stop sequence may hold at most ${MESSAGES_LIMITS.maxStopSequenceChars} characters`, 'stop_sequences')
  if (s.some(x => x.trim() === '')) throw new BadRequestError('stop_sequences: each stop sequence must contain non-whitespace', 'stop_sequences')
  return s
}

/**
 * Validates a `/v1/messages` body (or a `count_tokens` one, with `forCount`) and maps it onto an
 * OpenAI chat body. `maxOutputTokens` is the model's context length when the mesh knows it: a
 * `max_tokens` above it is refused as Anthropic refuses one above a model's output limit.
 */
export function parseMessagesRequest (raw: unknown, opts: { maxOutputTokens?: number | null, forCount?: boolean } = {}): ParsedMessagesRequest {
  const b = asObject(raw, 'body')
  refuseUnsupported(b)
  if (typeof b.model !== 'string' || b.model.length === 0 || b.model.length > 256) throw new BadRequestError('model: Input should be a non-empty string', 'model')
  const forCount = opts.forCount === true
  const limit = opts.maxOutputTokens ?? MESSAGES_LIMITS.maxTokensFallback
  const maxTokens = integerIn(b, 'max_tokens', 1, limit)
  if (maxTokens === undefined && !forCount) throw new BadRequestError('max_tokens: Field required', 'max_tokens')
  if (!Array.isArray(b.messages)) throw new BadRequestError(present(b, 'messages') ? 'messages: Input should be a valid list' : 'messages: Field required', 'messages')
  if (b.messages.length === 0) throw new BadRequestError('messages: at least one message is required', 'messages')
  if (present(b, 'stream') && typeof b.stream !== 'boolean') throw new BadRequestError('stream: Input should be a valid boolean', 'stream')
  const messages: ChatMessage[] = []
  if (present(b, 'system')) messages.push({ role: 'system', content: blocksText(b.system, 'system') })
  b.messages.forEach((raw, i) => {
    const m = asObject(raw, `messages.${i}`)
    if (m.role !== 'user' && m.role !== 'assistant') throw new BadRequestError(`messages.${i}.role: Input should be 'user' or 'assistant'`, `messages.${i}.role`)
    if (!present(m, 'content')) throw new BadRequestError(`messages.${i}.content: Field required`, `messages.${i}.content`)
    messages.push(...mapMessage(m.role, m.content, `messages.${i}.content`))
  })
  const tools = present(b, 'tools') ? parseTools(b.tools) : []
  const choice = present(b, 'tool_choice') ? parseToolChoice(b.tool_choice) : {}
  const temperature = numberIn(b, 'temperature', 0, 1)
  const topP = numberIn(b, 'top_p', 0, 1)
  const topK = integerIn(b, 'top_k', 0, Number.MAX_SAFE_INTEGER)
  const body: Record<string, unknown> = {
    model: b.model,
    messages,
    // Anthropic's default temperature is 1.0, the engines' is lower: say it.
    temperature: temperature ?? 1,
    ...(topP !== undefined ? { top_p: topP } : {}),
    ...(topK !== undefined ? { top_k: topK } : {}),
    max_tokens: forCount ? 1 : maxTokens,
    ...(tools.length > 0 ? { tools } : {}),
    ...choice,
    stream: true,
    stream_options: { include_usage: true }
  }
  return { model: b.model, stream: b.stream === true, stops: parseStops(b), body, tools: tools.length > 0 }
}

/** `msg_` and 24 random base62-ish characters, like Anthropic's ids. */
export function messageId (): string {
  return 'msg_' + randomBytes(18).toString('base64url').replace(/[-_]/g, 'x').slice(0, 24)
}

export type StopReason = 'end_turn' | 'max_tokens' | 'stop_sequence' | 'tool_use'

/** Anthropic's stop reason for an OpenAI finish reason, or for a stop sequence we matched. */
export function stopReasonOf (finishReason: string, matchedStop: string | undefined): StopReason {
  if (matchedStop !== undefined) return 'stop_sequence'
  if (finishReason === 'tool_calls') return 'tool_use'
  return finishReason === 'length' ? 'max_tokens' : 'end_turn'
}

export interface MessageUsage {
  input_tokens: number
  output_tokens: number
  cache_creation_input_tokens: number
  cache_read_input_tokens: number
}

export function usageOf (input: number, output: number): MessageUsage {
  return { input_tokens: input, output_tokens: output, cache_creation_input_tokens: 0, cache_read_input_tokens: 0 }
}

/** A whole (non-streamed) message; `blocks` replaces the single text block when given (tool use). */
export function messageObject (m: { id: string, model: string, text: string, stopReason: StopReason | null, stopSequence: string | null, usage: MessageUsage, blocks?: Array<Record<string, unknown>> }): Record<string, unknown> {
  return {
    id: m.id,
    type: 'message',
    role: 'assistant',
    model: m.model,
    content: m.stopReason === null ? [] : m.blocks ?? [{ type: 'text', text: m.text }],
    stop_reason: m.stopReason,
    stop_sequence: m.stopSequence,
    usage: m.usage
  }
}

/** One server-sent event: Anthropic names each event and repeats its type in the data. */
export function sse (data: { type: string } & Record<string, unknown>): string {
  return `event: ${data.type}\ndata: ${JSON.stringify(data)}\n\n`
}

/**
 * The events that open a streamed message, before any text. With `openText` false (a request with
 * tools) no block is opened yet: the answer may start with a tool_use block instead.
 */
export function streamStart (id: string, model: string, openText = true): string {
  return sse({ type: 'message_start', message: messageObject({ id, model, text: '', stopReason: null, stopSequence: null, usage: usageOf(0, 0) }) }) +
    (openText ? sse({ type: 'content_block_start', index: 0, content_block: { type: 'text', text: '' } }) : '') +
    sse({ type: 'ping' })
}

export function textDelta (text: string, index = 0): string {
  return sse({ type: 'content_block_delta', index, delta: { type: 'text_delta', text } })
}

/**
 * The events that close a streamed message; the input count is known only at the end here.
 * `openIndex` is the block still open (null when none is).
 */
export function streamEnd (stopReason: StopReason, stopSequence: string | null, usage: MessageUsage, openIndex: number | null = 0): string {
  return (openIndex !== null ? sse({ type: 'content_block_stop', index: openIndex }) : '') +
    sse({ type: 'message_delta', delta: { stop_reason: stopReason, stop_sequence: stopSequence }, usage: { input_tokens: usage.input_tokens, output_tokens: usage.output_tokens } }) +
    sse({ type: 'message_stop' })
}

/** Anthropic's error `type` for an HTTP status. */
export function errorTypeOf (status: number): string {
  switch (status) {
    case 401: return 'authentication_error'
    case 402: return 'billing_error'
    case 403: return 'permission_error'
    case 404: return 'not_found_error'
    case 413: return 'request_too_large'
    case 429: return 'rate_limit_error'
    case 503: case 529: return 'overloaded_error'
    case 504: return 'timeout_error'
    default: return status >= 500 ? 'api_error' : 'invalid_request_error'
  }
}

export function anthropicError (status: number, message: string): AnthropicErrorBody {
  return { type: 'error', error: { type: errorTypeOf(status), message } }
}
