/**
 * Validates OpenAI request bodies and turns them into what a local engine needs: the model
 * name, normalized messages or prompt, and sampling parameters with defaults applied. Pure
 * functions; every rejection is a `BadRequestError` naming the parameter at fault.
 */
import { BadRequestError } from '../../errors.js'
import { REQUEST_LIMITS, SAMPLING_DEFAULTS } from './constants.js'
import { parseKeepAlive } from './keep-alive.js'
import { parseResponseFormat, type ResponseFormat } from './response-format.js'
import type { ChatCompletionMessageToolCall, ToolChoice, ToolDefinition } from './openai-types.js'
import { checkToolTurns, parseMessageToolCalls, parseToolFields } from './tool-request.js'

export interface SamplingParams {
  temperature: number
  topP: number
  topK: number
  minP: number
  /** Fixed seed for reproducible sampling; random per request when absent. */
  seed?: number
  stop: string[]
  /** Token budget the request asked for; the engine also caps it by the context left. */
  maxTokens?: number
  frequencyPenalty: number
  presencePenalty: number
  /** 1 = off. */
  repeatPenalty: number
  /** `logit_bias` as [token id, bias from -100 to 100]; absent when none. */
  logitBias?: Array<[token: number, bias: number]>
  /** Choices to generate (`n`); 1 unless the engine said it can give more. */
  n: number
}

export interface RequestCommon {
  model: string
  /** Milliseconds; absent when the request did not say. */
  keepAliveMs?: number
}

/**
 * A history message. `tool` messages carry a tool's result (`toolCallId` names the call it
 * answers; `name` the function, found from the assistant call when the message did not say);
 * assistant messages may carry the calls they made (`toolCalls`, arguments as JSON text).
 */
export interface NormalizedMessage {
  role: 'system' | 'user' | 'assistant' | 'tool'
  content: string
  toolCalls?: ChatCompletionMessageToolCall[]
  toolCallId?: string
  name?: string
}

export interface ParsedChatRequest extends RequestCommon {
  messages: NormalizedMessage[]
  sampling: SamplingParams
  includeUsage: boolean
  /** Structured output the engine enforces with a grammar; absent for plain text. */
  responseFormat?: ResponseFormat
  /** Validated tools (`tools` or legacy `functions`); absent when none were given. */
  tools?: ToolDefinition[]
  /** Absent when no tools; `auto` when tools came without a choice. */
  toolChoice?: ToolChoice
  /** `parallel_tool_calls` (default true): may one reply hold several calls. Absent when no tools. */
  parallelToolCalls?: boolean
  /**
   * The tools came as legacy `functions`: the answer carries `message.function_call` and
   * `finish_reason: "function_call"` instead (see `legacyFunctionCompletion` / `legacyFunctionChunk`).
   */
  legacyFunctions?: true
  /** `logprobs: true` with its `top_logprobs` (0 when absent); only for engines that can (`ChatCapabilities`). */
  logprobs?: { topLogprobs: number }
}

export interface ParsedCompletionRequest extends RequestCommon {
  /** The first prompt (engines that take one). */
  prompt: string | number[]
  /** Every prompt, in order: one choice (or `n`) per prompt. */
  prompts: Array<string | number[]>
  echo: boolean
  sampling: SamplingParams
  includeUsage: boolean
  /** Structured output (a llama.cpp extension on completions; Ollama's `format` with `raw`). */
  responseFormat?: ResponseFormat
}

export interface ParsedEmbeddingRequest extends RequestCommon {
  inputs: Array<string | number[]>
  encoding: 'float' | 'base64'
  dimensions?: number
}

type Body = Record<string, unknown>

function asBody (body: unknown): Body {
  if (body === null || typeof body !== 'object' || Array.isArray(body)) throw new BadRequestError('The request body must be a JSON object')
  return body as Body
}

/** `null` counts as absent, as the OpenAI API treats it. */
function present (body: Body, key: string): boolean {
  return body[key] !== undefined && body[key] !== null
}

function parseModel (body: Body): string {
  const model = body.model
  if (typeof model !== 'string' || model.length === 0) throw new BadRequestError('model must be a non-empty string', 'model')
  return model
}

function number (body: Body, key: string, min: number, max: number): number | undefined {
  if (!present(body, key)) return undefined
  const v = body[key]
  if (typeof v !== 'number' || !Number.isFinite(v) || v < min || v > max) {
    throw new BadRequestError(`${key} must be a number between ${min} and ${max}`, key)
  }
  return v
}

function integer (body: Body, key: string, min: number, max = Number.MAX_SAFE_INTEGER): number | undefined {
  const v = number(body, key, min, max)
  if (v !== undefined && !Number.isInteger(v)) throw new BadRequestError(`${key} must be an integer`, key)
  return v
}

function boolean (body: Body, key: string): boolean | undefined {
  if (!present(body, key)) return undefined
  if (typeof body[key] !== 'boolean') throw new BadRequestError(`${key} must be a boolean`, key)
  return body[key] as boolean
}

function parseStop (body: Body): string[] {
  if (!present(body, 'stop')) return []
  const stop = body.stop
  const list = typeof stop === 'string' ? [stop] : stop
  if (!Array.isArray(list) || list.some(s => typeof s !== 'string')) {
    throw new BadRequestError('stop must be a string or an array of strings', 'stop')
  }
  if (list.length > REQUEST_LIMITS.maxStopSequences) {
    throw new BadRequestError(`stop takes at most ${REQUEST_LIMITS.maxStopSequences} sequences`, 'stop')
  }
  return (list as string[]).filter(s => s.length > 0)
}

function parseLogitBias (body: Body): Array<[number, number]> | undefined {
  if (!present(body, 'logit_bias')) return undefined
  const raw = body.logit_bias
  if (typeof raw !== 'object' || Array.isArray(raw)) throw new BadRequestError('logit_bias must be an object of token ids to biases', 'logit_bias')
  const entries = Object.entries(raw as Body)
  if (entries.length > REQUEST_LIMITS.maxLogitBias) throw new BadRequestError(`logit_bias takes at most ${REQUEST_LIMITS.maxLogitBias} tokens`, 'logit_bias')
  const out = entries.map(([key, bias]): [number, number] => {
    if (!/^\d{1,9}$/.test(key)) throw new BadRequestError(`logit_bias key '${key.slice(0, 32)}' is not a token id`, 'logit_bias')
    if (typeof bias !== 'number' || !Number.isFinite(bias) || bias < -100 || bias > 100) {
      throw new BadRequestError('logit_bias values must be numbers from -100 to 100', 'logit_bias')
    }
    return [Number(key), bias]
  })
  return out.length > 0 ? out : undefined
}

function parseKeepAliveField (body: Body): number | undefined {
  return present(body, 'keep_alive') ? parseKeepAlive(body.keep_alive) : undefined
}

function optional<K extends string, V> (key: K, value: V | undefined): { [P in K]?: V } {
  return (value === undefined ? {} : { [key]: value }) as { [P in K]?: V }
}

/** `n` choices; an engine that cannot give several (`maxN` 1) refuses more by name. */
function parseChoices (body: Body, maxN: number): number {
  const n = integer(body, 'n', 1) ?? 1
  if (n > 1 && maxN === 1) throw new BadRequestError('Only n = 1 is supported by this engine', 'n', 'unsupported_parameter')
  if (n > maxN) throw new BadRequestError(`n must be at most ${maxN}`, 'n', 'integer_above_max_value')
  return n
}

function parseSampling (body: Body, maxTokensKeys: string[], maxN = 1): SamplingParams {
  const n = parseChoices(body, maxN)
  // The first key present wins (max_completion_tokens supersedes max_tokens); all are validated.
  const maxTokens = maxTokensKeys.map(key => integer(body, key, 1)).find(v => v !== undefined)
  const seed = integer(body, 'seed', Number.MIN_SAFE_INTEGER)
  return {
    temperature: number(body, 'temperature', 0, 2) ?? SAMPLING_DEFAULTS.temperature,
    topP: number(body, 'top_p', 0, 1) ?? SAMPLING_DEFAULTS.topP,
    topK: integer(body, 'top_k', 0) ?? SAMPLING_DEFAULTS.topK,
    minP: number(body, 'min_p', 0, 1) ?? SAMPLING_DEFAULTS.minP,
    // llama.cpp seeds are uint32; fold any integer onto that range rather than refuse it.
    seed: seed === undefined ? undefined : ((seed % 2 ** 32) + 2 ** 32) % 2 ** 32,
    stop: parseStop(body),
    maxTokens,
    frequencyPenalty: number(body, 'frequency_penalty', -2, 2) ?? 0,
    presencePenalty: number(body, 'presence_penalty', -2, 2) ?? 0,
    repeatPenalty: number(body, 'repeat_penalty', 0, 10) ?? 1,
    n,
    ...optional('logitBias', parseLogitBias(body))
  }
}

function parseIncludeUsage (body: Body): boolean {
  if (!present(body, 'stream_options')) return false
  const opts = body.stream_options
  if (typeof opts !== 'object' || Array.isArray(opts)) throw new BadRequestError('stream_options must be an object', 'stream_options')
  return boolean(opts as Body, 'include_usage') ?? false
}

/** Features a text-only local engine cannot honour; refused rather than silently ignored. */
function refuseUnsupported (body: Body, allowLogprobs = false): void {
  // llama.cpp's own constraint fields would reach llama-server unchecked (and the embedded engine
  // would ignore them): structured output goes through the checked response_format only.
  for (const key of ['grammar', 'json_schema']) {
    if (present(body, key)) throw new BadRequestError(`${key} is not supported; use response_format`, key, 'unsupported_parameter')
  }
  if (allowLogprobs) return
  if (body.logprobs === true || (typeof body.logprobs === 'number' && body.logprobs > 0)) {
    throw new BadRequestError('logprobs are not supported by this engine', 'logprobs', 'unsupported_parameter')
  }
  const top = body.top_logprobs
  if (typeof top === 'number' && top > 0) throw new BadRequestError('top_logprobs are not supported by this engine', 'top_logprobs', 'unsupported_parameter')
}

/** What an engine can do beyond the common request (see `parseChatRequest`). */
export interface ChatCapabilities {
  /** Chat `logprobs` / `top_logprobs` (llama-server); refused with a 400 when false. */
  logprobs?: boolean
  /** `n` > 1 (up to `REQUEST_LIMITS.maxChoices`) and, on completions, several prompts; refused by name when false. */
  choices?: boolean
}

/** Chat `logprobs: true` and `top_logprobs` (0-20, OpenAI's bounds; only with logprobs). */
function parseLogprobs (body: Body): { logprobs?: { topLogprobs: number } } {
  const on = boolean(body, 'logprobs') ?? false
  const top = integer(body, 'top_logprobs', 0, 20)
  if (!on) {
    if (top !== undefined && top > 0) throw new BadRequestError('top_logprobs requires logprobs: true', 'top_logprobs')
    return {}
  }
  return { logprobs: { topLogprobs: top ?? 0 } }
}

/** `response_format`, validated (see response-format.ts); absent when it asks for plain text. */
function withResponseFormat (body: Body): { responseFormat?: ResponseFormat } {
  const format = parseResponseFormat(body.response_format)
  return format === undefined ? {} : { responseFormat: format }
}

function messageText (content: unknown, index: number): string {
  const param = `messages[${index}].content`
  if (content === undefined || content === null) return ''
  if (typeof content === 'string') return content
  if (!Array.isArray(content)) throw new BadRequestError('content must be a string or an array of content parts', param)
  return content.map((part: unknown) => {
    const p = part as { type?: unknown, text?: unknown } | null
    if (p === null || typeof p !== 'object') throw new BadRequestError('content parts must be objects', param)
    if (p.type !== 'text' || typeof p.text !== 'string') {
      throw new BadRequestError(`content part type '${String(p.type)}' is not supported by this engine; only text`, param, 'unsupported_parameter')
    }
    return p.text
  }).join('\n')
}

const ROLES: Record<string, NormalizedMessage['role']> = {
  system: 'system',
  developer: 'system',
  user: 'user',
  assistant: 'assistant',
  tool: 'tool',
  // The legacy function-calling result turn.
  function: 'tool'
}

function normalizeMessage (m: unknown, i: number): NormalizedMessage {
  const msg = m as Body | null
  if (msg === null || typeof msg !== 'object' || Array.isArray(msg)) throw new BadRequestError('each message must be an object', `messages[${i}]`)
  const role = typeof msg.role === 'string' ? ROLES[msg.role] : undefined
  if (role === undefined) {
    throw new BadRequestError(`messages[${i}].role '${String(msg.role).slice(0, 32)}' is not supported; use system, developer, user, assistant or tool`, `messages[${i}].role`)
  }
  const content = messageText(msg.content, i)
  if (role === 'assistant') {
    const toolCalls = parseMessageToolCalls(msg, i)
    return toolCalls === undefined ? { role, content } : { role, content, toolCalls }
  }
  if (role !== 'tool') return { role, content }
  if (msg.role === 'function') {
    if (typeof msg.name !== 'string') throw new BadRequestError(`messages[${i}].name is required on a function message`, `messages[${i}].name`)
    return { role, content, name: msg.name }
  }
  if (typeof msg.tool_call_id !== 'string' || msg.tool_call_id.length === 0) {
    throw new BadRequestError(`messages[${i}].tool_call_id is required on a tool message`, `messages[${i}].tool_call_id`)
  }
  return { role, content, toolCallId: msg.tool_call_id, ...(typeof msg.name === 'string' ? { name: msg.name } : {}) }
}

/** Validates a `/v1/chat/completions` body. */
export function parseChatRequest (raw: unknown, capabilities: ChatCapabilities = {}): ParsedChatRequest {
  const body = asBody(raw)
  const model = parseModel(body)
  refuseUnsupported(body, capabilities.logprobs === true)
  const messages = body.messages
  if (!Array.isArray(messages) || messages.length === 0) throw new BadRequestError('messages must be a non-empty array', 'messages')
  const normalized = messages.map(normalizeMessage)
  checkToolTurns(normalized)
  const toolFields = parseToolFields(body)
  const parsed: ParsedChatRequest = {
    model,
    keepAliveMs: parseKeepAliveField(body),
    messages: normalized,
    sampling: parseSampling(body, ['max_completion_tokens', 'max_tokens'], capabilities.choices === true ? REQUEST_LIMITS.maxChoices : 1),
    includeUsage: parseIncludeUsage(body),
    ...withResponseFormat(body),
    ...toolFields,
    ...(capabilities.logprobs === true ? parseLogprobs(body) : {})
  }
  if (parsed.responseFormat !== undefined && (toolFields.toolChoice?.type === 'required' || toolFields.toolChoice?.type === 'function')) {
    throw new BadRequestError('response_format cannot be combined with a tool_choice that forces a call', 'response_format', 'unsupported_parameter')
  }
  return parsed
}

function isTokenArray (v: unknown): v is number[] {
  return Array.isArray(v) && v.length > 0 && v.every(t => Number.isInteger(t) && t >= 0)
}

/** Validates a `/v1/completions` body. */
export function parseCompletionRequest (raw: unknown, capabilities: ChatCapabilities = {}): ParsedCompletionRequest {
  const body = asBody(raw)
  const model = parseModel(body)
  refuseUnsupported(body)
  for (const key of ['tools', 'functions']) {
    if (Array.isArray(body[key]) && (body[key] as unknown[]).length > 0) {
      throw new BadRequestError(`${key} are not supported on text completions; use /v1/chat/completions`, key, 'unsupported_parameter')
    }
  }
  if (present(body, 'suffix') && body.suffix !== '') {
    throw new BadRequestError('suffix is not supported by this engine', 'suffix', 'unsupported_parameter')
  }
  const best = integer(body, 'best_of', 1)
  if (best !== undefined && best !== 1) throw new BadRequestError('Only best_of = 1 is supported', 'best_of', 'unsupported_parameter')
  let prompts: Array<string | number[]>
  const p = body.prompt
  if (typeof p === 'string') prompts = [p]
  else if (isTokenArray(p)) prompts = [p]
  else if (Array.isArray(p) && p.length > 0 && p.every(x => typeof x === 'string' || isTokenArray(x))) prompts = p as Array<string | number[]>
  else throw new BadRequestError('prompt must be a string, an array of token ids, or an array of those', 'prompt')
  if (prompts.length > 1 && capabilities.choices !== true) throw new BadRequestError('Only one prompt per request is supported by this engine', 'prompt', 'unsupported_parameter')
  if (prompts.length > REQUEST_LIMITS.maxPrompts) throw new BadRequestError(`prompt takes at most ${REQUEST_LIMITS.maxPrompts} prompts`, 'prompt', 'array_above_max_length')
  const prompt = prompts[0]
  return {
    model,
    keepAliveMs: parseKeepAliveField(body),
    prompt,
    prompts,
    echo: boolean(body, 'echo') ?? false,
    // The legacy completions API defaults max_tokens to 16; clients rely on it being short.
    sampling: { ...parseSampling(body, ['max_tokens'], capabilities.choices === true ? REQUEST_LIMITS.maxChoices : 1), maxTokens: integer(body, 'max_tokens', 1) ?? 16 },
    includeUsage: parseIncludeUsage(body),
    ...withResponseFormat(body)
  }
}

/** Validates a `/v1/embeddings` body. */
export function parseEmbeddingRequest (raw: unknown): ParsedEmbeddingRequest {
  const body = asBody(raw)
  const model = parseModel(body)
  const input = body.input
  let inputs: Array<string | number[]>
  if (typeof input === 'string') inputs = [input]
  else if (isTokenArray(input)) inputs = [input]
  else if (Array.isArray(input) && input.length > 0 && input.every(i => typeof i === 'string' || isTokenArray(i))) inputs = input
  else throw new BadRequestError('input must be a string, an array of strings or an array of token arrays', 'input')
  if (inputs.length > REQUEST_LIMITS.maxEmbeddingInputs) {
    throw new BadRequestError(`input takes at most ${REQUEST_LIMITS.maxEmbeddingInputs} items`, 'input')
  }
  if (inputs.some(i => i.length === 0)) throw new BadRequestError('input must not contain empty strings', 'input')
  const encoding = present(body, 'encoding_format') ? body.encoding_format : 'float'
  if (encoding !== 'float' && encoding !== 'base64') throw new BadRequestError("encoding_format must be 'float' or 'base64'", 'encoding_format')
  return {
    model,
    keepAliveMs: parseKeepAliveField(body),
    inputs,
    encoding,
    dimensions: integer(body, 'dimensions', 1)
  }
}
