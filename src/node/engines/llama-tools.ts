/**
 * Chat requests and answers of the llama-server engine (issue 13): tools, forced tool calls,
 * every choice and logprobs, mapped to and from llama-server's `/v1/chat/completions` so the
 * client sees OpenAI's exact shapes. Pure functions and a small per-stream state machine.
 *
 * Tool calls run two ways:
 * - `tool_choice` `auto` (and `none`): forwarded as they are. llama-server (started with
 *   `--jinja`) renders the tools with the model's own chat template, lets the model decide, and
 *   parses the template's call format into `tool_calls` (a lazy grammar constrains a call once
 *   the model starts one).
 * - `required` or a named function: llama-server's own `required` grammar lets the model write
 *   free text before the call marker, so a model that never writes the marker (any small or
 *   random-weight model) runs to `max_tokens` and llama-server answers 500 ("does not match the
 *   expected peg-native format"). Here the call is forced instead: the tools are still shown
 *   to the model (`tool_choice: "none"`), and the answer is constrained by a JSON schema grammar
 *   (`response_format`) to exactly `{"name": <one of the tools>, "arguments": <its parameters>}`,
 *   which this module turns into a `tool_calls` entry — so the call always parses and validates.
 */
import { randomBytes } from 'node:crypto'
import { ShepherdError } from '../../errors.js'
import type { NormalizedMessage, ParsedChatRequest } from './openai-request.js'
import { upstreamChatFormat } from './response-format.js'
import { newResponseId, unixNow, usage, type ResponseHeader } from './openai-response.js'
import type {
  ChatCompletion,
  ChatCompletionChunk,
  ChatCompletionChunkDelta,
  ChatCompletionChunkToolCall,
  ChatCompletionLogprobs,
  ChatCompletionMessage,
  ChatCompletionMessageToolCall,
  ChatCompletionTokenLogprob,
  ChatCompletionTopLogprob,
  CompletionUsage,
  FinishReason
} from './openai-types.js'

type Json = Record<string, unknown>

const ID_CHARS = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789'

/** `call_` and 24 random letters and digits, as OpenAI's tool call ids look. */
export function newCallId (): string {
  return 'call_' + Array.from(randomBytes(24), b => ID_CHARS[b % ID_CHARS.length]).join('')
}

function asRecord (value: unknown): Json {
  if (value === null || typeof value !== 'object') {
    throw new ShepherdError('llama-server sent something that is not a JSON object', { code: 'upstream_invalid_response', status: 502 })
  }
  return value as Json
}

const FINISH_REASONS = new Set<FinishReason>(['stop', 'length', 'tool_calls', 'content_filter', 'function_call'])

/** llama-server's finish reason, `stop` for anything OpenAI does not define. */
export function finishReason (value: unknown): FinishReason {
  return FINISH_REASONS.has(value as FinishReason) ? value as FinishReason : 'stop'
}

/** A non-negative integer count from llama-server, 0 when missing or not a number. */
export function int (value: unknown): number {
  return typeof value === 'number' && Number.isFinite(value) ? Math.max(0, Math.round(value)) : 0
}

/** llama-server's usage, with missing or odd counts as 0. */
export function usageOf (value: unknown): CompletionUsage {
  const u = value as { prompt_tokens?: unknown, completion_tokens?: unknown } | null | undefined
  return usage(int(u?.prompt_tokens), int(u?.completion_tokens))
}

function headerOf (raw: Json, model: string): ResponseHeader {
  return {
    id: typeof raw.id === 'string' && raw.id !== '' ? raw.id : newResponseId('chatcmpl'),
    created: typeof raw.created === 'number' ? raw.created : unixNow(),
    model
  }
}

function choicesOf (raw: Json): Json[] {
  return Array.isArray(raw.choices) ? raw.choices.map(asRecord) : []
}

// ---- request -------------------------------------------------------------------------

/** A forced call: the answer is the JSON `{"name", "arguments"}` (see the module comment). */
export interface ForcedCall { names: string[] }

/** What `upstreamChatFields` adds to the body sent to llama-server. */
export interface UpstreamChat {
  fields: Json
  /** Set when the call is forced: map the answer with it. */
  forced?: ForcedCall
}

function wireMessage (m: NormalizedMessage): Json {
  if (m.role === 'tool') {
    // A legacy `function` turn has a name and no call id.
    return { role: 'tool', content: m.content, ...(m.toolCallId !== undefined ? { tool_call_id: m.toolCallId } : {}), ...(m.name !== undefined ? { name: m.name } : {}) }
  }
  if (m.role === 'assistant' && m.toolCalls !== undefined && m.toolCalls.length > 0) {
    return { role: 'assistant', content: m.content === '' ? null : m.content, tool_calls: m.toolCalls }
  }
  return { role: m.role, content: m.content }
}

/**
 * The fields of the body for llama-server's chat endpoint that depend on the parsed request:
 * messages (normalized: legacy `function` turns became `tool` turns), tools, tool_choice,
 * parallel_tool_calls, response_format and logprobs; legacy `functions`/`function_call` removed.
 */
export function upstreamChatFields (req: ParsedChatRequest): UpstreamChat {
  const fields: Json = {
    messages: req.messages.map(wireMessage),
    functions: undefined,
    function_call: undefined,
    tools: undefined,
    tool_choice: undefined,
    parallel_tool_calls: undefined,
    response_format: upstreamChatFormat(req.responseFormat)
  }
  const lp = logprobsOf(req)
  fields.logprobs = lp === undefined ? undefined : true
  fields.top_logprobs = lp === undefined ? undefined : lp
  const tools = req.tools ?? []
  if (tools.length === 0 || req.toolChoice === undefined) return { fields }
  fields.tools = tools.map(t => ({
    type: 'function',
    function: { name: t.name, ...(t.description !== undefined ? { description: t.description } : {}), parameters: t.parameters }
  }))
  const choice = req.toolChoice
  if (choice.type === 'auto' || choice.type === 'none') {
    fields.tool_choice = choice.type
    fields.parallel_tool_calls = req.parallelToolCalls ?? true
    return { fields }
  }
  const chosen = choice.type === 'function' ? tools.filter(t => t.name === choice.name) : tools
  // The parameters as given (bounded by the request checks): llama.cpp's schema grammar honours
  // `required` (the embedded engine's dialect drops it and writes every property).
  const variants = chosen.map(t => ({
    type: 'object',
    properties: { name: { type: 'string', enum: [t.name] }, arguments: t.parameters },
    required: ['name', 'arguments'],
    additionalProperties: false
  }))
  fields.tool_choice = 'none'
  fields.response_format = {
    type: 'json_schema',
    json_schema: { name: 'tool_call', strict: true, schema: variants.length === 1 ? variants[0] : { anyOf: variants } }
  }
  return { fields, forced: { names: chosen.map(t => t.name) } }
}

/** `top_logprobs` asked for (0 = the chosen tokens only); undefined when logprobs were not asked. */
function logprobsOf (req: ParsedChatRequest): number | undefined {
  return req.logprobs?.topLogprobs
}

// ---- logprobs --------------------------------------------------------------------------

function bytesOf (value: unknown, token: string): number[] | null {
  if (Array.isArray(value) && value.every(b => Number.isInteger(b))) return value as number[]
  return token === '' ? null : [...Buffer.from(token, 'utf8')]
}

function topLogprob (value: unknown): ChatCompletionTopLogprob {
  const r = asRecord(value)
  const token = typeof r.token === 'string' ? r.token : ''
  return { token, logprob: typeof r.logprob === 'number' ? r.logprob : -9999, bytes: bytesOf(r.bytes, token) }
}

function tokenLogprobs (value: unknown): ChatCompletionTokenLogprob[] {
  if (!Array.isArray(value)) return []
  return value.map(v => ({ ...topLogprob(v), top_logprobs: Array.isArray(asRecord(v).top_logprobs) ? (asRecord(v).top_logprobs as unknown[]).map(topLogprob) : [] }))
}

/** llama-server's `logprobs` of a choice in OpenAI's shape (its token ids dropped); null when none. */
export function logprobsFrom (value: unknown): ChatCompletionLogprobs | null {
  if (value === null || typeof value !== 'object') return null
  return { content: tokenLogprobs((value as Json).content), refusal: null }
}

// ---- answers ---------------------------------------------------------------------------

const CALL_HEAD = /^\s*\{\s*"name"\s*:\s*("(?:[^"\\]|\\.)*")\s*,\s*"arguments"\s*:\s*(?=\S)/

/** The name and raw arguments text of a forced call's JSON; undefined when it is not one. */
export function parseForcedCall (text: string, forced: ForcedCall): { name: string, arguments: string } | undefined {
  const head = CALL_HEAD.exec(text)
  if (head === null) return undefined
  let name: unknown
  let whole: unknown
  try {
    name = JSON.parse(head[1])
    whole = JSON.parse(text)
  } catch {
    return undefined
  }
  if (typeof name !== 'string' || !forced.names.includes(name)) return undefined
  const args = argsText(text.slice(head[0].length))
  try {
    JSON.parse(args)
    return { name, arguments: args }
  } catch {
    return { name, arguments: JSON.stringify((whole as { arguments?: unknown }).arguments ?? {}) }
  }
}

/** The arguments text: what follows `"arguments":`, less the call object's closing brace. */
function argsText (rest: string): string {
  return rest.replace(/\}\s*$/, '').trimEnd()
}

function toolCallsFrom (value: unknown): ChatCompletionMessageToolCall[] {
  if (!Array.isArray(value)) return []
  return value.map(asRecord).map(c => {
    const fn = (c.function ?? {}) as { name?: unknown, arguments?: unknown }
    const args = typeof fn.arguments === 'string' ? fn.arguments : JSON.stringify(fn.arguments ?? {})
    return {
      id: typeof c.id === 'string' && c.id !== '' ? c.id : newCallId(),
      type: 'function' as const,
      function: { name: typeof fn.name === 'string' ? fn.name : '', arguments: args }
    }
  })
}

/** A llama-server chat completion as an exact OpenAI one: every choice, tool calls, logprobs. */
export function toChatCompletion (value: unknown, model: string, forced?: ForcedCall): ChatCompletion {
  const raw = asRecord(value)
  const header = headerOf(raw, model)
  const choices = choicesOf(raw).map((choice, i) => {
    const m = (choice.message ?? {}) as { content?: unknown, reasoning_content?: unknown, tool_calls?: unknown }
    const reasoning = typeof m.reasoning_content === 'string' ? m.reasoning_content : ''
    let text = typeof m.content === 'string' ? m.content : ''
    let calls = toolCallsFrom(m.tool_calls)
    let finish = finishReason(choice.finish_reason)
    if (forced !== undefined) {
      // Also on "length": a call that closed on the last token is complete (it must parse whole).
      const call = parseForcedCall(text, forced)
      if (call !== undefined) {
        calls = [{ id: newCallId(), type: 'function', function: call }]
        text = ''
      }
    }
    if (calls.length > 0) finish = 'tool_calls'
    const message: ChatCompletionMessage = {
      role: 'assistant',
      content: calls.length > 0 && text === '' ? null : text,
      refusal: null,
      ...(calls.length > 0 ? { tool_calls: calls } : {}),
      ...(reasoning !== '' ? { reasoning_content: reasoning } : {})
    }
    return { index: typeof choice.index === 'number' ? int(choice.index) : i, message, logprobs: logprobsFrom(choice.logprobs), finish_reason: finish }
  })
  if (choices.length === 0) {
    choices.push({ index: 0, message: { role: 'assistant', content: '', refusal: null }, logprobs: null, finish_reason: 'stop' })
  }
  return { id: header.id, object: 'chat.completion', created: header.created, model, choices, usage: usageOf(raw.usage) }
}

function chunkToolCalls (value: unknown): ChatCompletionChunkToolCall[] {
  if (!Array.isArray(value)) return []
  return value.map(asRecord).map((c, i) => {
    const out: ChatCompletionChunkToolCall = { index: typeof c.index === 'number' ? int(c.index) : i }
    if (typeof c.id === 'string' && c.id !== '') out.id = c.id
    if (c.type === 'function' || out.id !== undefined) out.type = 'function'
    const fn = c.function as { name?: unknown, arguments?: unknown } | undefined
    if (fn !== undefined && fn !== null) {
      out.function = {}
      if (typeof fn.name === 'string') out.function.name = fn.name
      if (typeof fn.arguments === 'string') out.function.arguments = fn.arguments
    }
    return out
  })
}

/** Per-choice state of a forced call being streamed. */
interface ForcedStream {
  text: string
  /** Where the arguments start in `text`; -1 until the head `{"name": …, "arguments":` is complete. */
  argsAt: number
  /** Arguments characters sent so far. */
  sent: number
  id: string
  pendingLogprobs: ChatCompletionTokenLogprob[]
}

/**
 * Maps one llama-server chat stream to OpenAI chunks. A new one per request: a forced call is
 * streamed as `tool_calls` deltas (the id and name once the name is complete, then argument
 * text as it comes, holding back only what may be the call object's closing brace).
 */
export class ChatStreamMapper {
  private readonly forcedState = new Map<number, ForcedStream>()
  private readonly sentCalls = new Set<number>()

  constructor (private readonly model: string, private readonly includeUsage: boolean, private readonly forced?: ForcedCall) {}

  /** The OpenAI chunks for one llama-server chunk: zero or more, the usage chunk last. */
  map (value: unknown): ChatCompletionChunk[] {
    const raw = asRecord(value)
    const header = headerOf(raw, this.model)
    const base = { id: header.id, object: 'chat.completion.chunk' as const, created: header.created, model: this.model }
    const out: ChatCompletionChunk[] = []
    const push = (index: number, delta: ChatCompletionChunkDelta, logprobs: ChatCompletionLogprobs | null, finish: FinishReason | null): void => {
      out.push({ ...base, choices: [{ index, delta, logprobs, finish_reason: finish }], ...(this.includeUsage ? { usage: null } : {}) })
    }
    choicesOf(raw).forEach((choice, i) => {
      const index = typeof choice.index === 'number' ? int(choice.index) : i
      const d = (choice.delta ?? {}) as { role?: unknown, content?: unknown, reasoning_content?: unknown, tool_calls?: unknown }
      let finish = choice.finish_reason == null ? null : finishReason(choice.finish_reason)
      const logprobs = logprobsFrom(choice.logprobs)
      if (this.forced !== undefined) {
        this.mapForced(index, d, logprobs, finish, push)
        return
      }
      const delta: ChatCompletionChunkDelta = {}
      if (d.role === 'assistant') delta.role = 'assistant'
      if (typeof d.content === 'string') delta.content = d.content
      else if (delta.role !== undefined) delta.content = ''
      if (typeof d.reasoning_content === 'string') delta.reasoning_content = d.reasoning_content
      const calls = chunkToolCalls(d.tool_calls)
      if (calls.length > 0) {
        delta.tool_calls = calls
        this.sentCalls.add(index)
        if (delta.content === '') delete delta.content
      }
      if (finish === 'stop' && this.sentCalls.has(index)) finish = 'tool_calls'
      push(index, delta, logprobs, finish)
    })
    if (this.includeUsage && raw.usage != null) out.push({ ...base, choices: [], usage: usageOf(raw.usage) })
    return out
  }

  private mapForced (
    index: number,
    d: { role?: unknown, content?: unknown },
    logprobs: ChatCompletionLogprobs | null,
    finish: FinishReason | null,
    push: (index: number, delta: ChatCompletionChunkDelta, logprobs: ChatCompletionLogprobs | null, finish: FinishReason | null) => void
  ): void {
    const forced = this.forced as ForcedCall
    let s = this.forcedState.get(index)
    if (s === undefined) {
      s = { text: '', argsAt: -1, sent: 0, id: newCallId(), pendingLogprobs: [] }
      this.forcedState.set(index, s)
    }
    if (logprobs?.content != null) s.pendingLogprobs.push(...logprobs.content)
    const takeLogprobs = (): ChatCompletionLogprobs | null => {
      if (logprobs === null && s.pendingLogprobs.length === 0) return null
      const content = s.pendingLogprobs
      s.pendingLogprobs = []
      return { content, refusal: null }
    }
    if (d.role === 'assistant') push(index, { role: 'assistant', content: '' }, null, null)
    if (typeof d.content === 'string') s.text += d.content
    const deltas: ChatCompletionChunkDelta[] = []
    if (s.argsAt < 0) {
      const head = CALL_HEAD.exec(s.text)
      let name: unknown
      try { name = head === null ? undefined : JSON.parse(head[1]) } catch { name = undefined }
      if (head !== null && typeof name === 'string' && forced.names.includes(name)) {
        s.argsAt = head[0].length
        deltas.push({ tool_calls: [{ index: 0, id: s.id, type: 'function', function: { name, arguments: '' } }] })
      }
    }
    if (s.argsAt >= 0) {
      const rest = s.text.slice(s.argsAt)
      // Hold back a trailing run of spaces and braces: its last brace closes the call object.
      const ready = finish === null ? rest.replace(/[\s}]*$/, '') : argsText(rest)
      if (ready.length > s.sent) {
        deltas.push({ tool_calls: [{ index: 0, function: { arguments: ready.slice(s.sent) } }] })
        s.sent = ready.length
      }
    } else if (finish !== null && s.text !== '') {
      // Not a call (cut by max_tokens before the name was complete): say what was written.
      deltas.push({ content: s.text })
    }
    for (const delta of deltas) push(index, delta, takeLogprobs(), null)
    if (finish !== null) {
      const done = s.argsAt >= 0 && parseForcedCall(s.text, forced) !== undefined ? 'tool_calls' : finish
      push(index, {}, takeLogprobs(), done)
    }
  }
}

/** A llama-server chat chunk as OpenAI ones, for a stream without a forced call (see `ChatStreamMapper`). */
export function toChatChunks (value: unknown, model: string, includeUsage: boolean): ChatCompletionChunk[] {
  return new ChatStreamMapper(model, includeUsage).map(value)
}
