/**
 * OpenAI's Responses API (`POST /v1/responses`) requests mapped onto the OpenAI chat request the
 * router already carries (the way back, chat output into Responses objects and stream events, is
 * responses-output.ts). Pure functions: every refusal is a `BadRequestError` whose `param` names the field the way OpenAI's
 * API does (`input[2].content[0].type`).
 *
 * Text only. `previous_response_id` and `item_reference` items are resolved through a lookup of the
 * node's stored responses (responses-store.ts); `conversation` objects are refused. Hosted tools,
 * images, files and reasoning are refused with a 400 naming the parameter rather than dropped, so a client never gets an answer to a question it did not ask.
 * Function tools map onto the chat API's tools (the engines' own validation then applies); the
 * mapping of tools and their input items is responses-tools.ts.
 */
import { BadRequestError, ShepherdError } from '../errors.js'
import { functionCallMessage, functionOutputMessage, parseResponsesToolChoice, parseResponsesTools } from './responses-tools.js'

/** Bounds that protect the node; OpenAI's own limits where it states them. */
export const RESPONSES_LIMITS = {
  maxInputItems: 4096,
  maxContentParts: 1024,
  /** OpenAI's metadata limits: 16 pairs, keys up to 64 characters, values up to 512. */
  maxMetadataKeys: 16,
  maxMetadataKeyChars: 64,
  maxMetadataValueChars: 512,
  /** Output tokens allowed when the model's context length is unknown. */
  maxOutputTokensFallback: 1 << 20
} as const

/** Request fields this server understands; any other is refused as OpenAI refuses it. */
const KNOWN = new Set([
  'model', 'input', 'instructions', 'max_output_tokens', 'temperature', 'top_p', 'stream', 'stream_options', 'metadata', 'store',
  'text', 'tools', 'tool_choice', 'parallel_tool_calls', 'max_tool_calls', 'previous_response_id', 'conversation', 'prompt',
  'user', 'safety_identifier', 'prompt_cache_key', 'service_tier', 'truncation', 'reasoning', 'include', 'background', 'top_logprobs'
])

type Body = Record<string, unknown>

/** Values the response object repeats from the request (OpenAI echoes them). */
export interface ResponseEcho {
  previousResponseId: string | null
  instructions: string | null
  maxOutputTokens: number | null
  temperature: number
  topP: number
  metadata: Record<string, string>
  store: boolean
  /** The `text.format` as given, `{type: "text"}` by default. */
  format: Body
  user: string | null
  safetyIdentifier: string | null
  promptCacheKey: string | null
  parallelToolCalls: boolean
  /** The function tools as OpenAI echoes them (`[]` when none). */
  tools: Body[]
  /** The `tool_choice` as given, `'auto'` by default. */
  toolChoice: unknown
}

export interface ParsedResponsesRequest {
  model: string
  stream: boolean
  echo: ResponseEcho
  /** The conversation as Responses input items: the previous response's, then this input (references resolved). */
  items: Body[]
  /** The OpenAI chat body for the router: always streamed internally, with usage. */
  body: Record<string, unknown>
}

const present = (b: Body, k: string): boolean => b[k] !== undefined && b[k] !== null

const bad = (param: string, message: string, code = 'invalid_request'): BadRequestError => new BadRequestError(message, param, code)
const unsupported = (param: string, message: string): BadRequestError => new BadRequestError(message, param, 'unsupported_parameter')

function asObject (v: unknown, param: string): Body {
  if (v === null || typeof v !== 'object' || Array.isArray(v)) throw bad(param, `Invalid type for '${param}': expected an object, but got ${typeName(v)} instead.`, 'invalid_type')
  return v as Body
}

/** A client's value quoted in a message, cut short: a hostile value must not make a huge error. */
function shown (v: unknown): string {
  const s = typeof v === 'string' ? `'${v}'` : JSON.stringify(v) ?? String(v)
  return s.length > 80 ? `${s.slice(0, 80)}…` : s
}

function typeName (v: unknown): string {
  if (v === null) return 'null'
  if (Array.isArray(v)) return 'an array'
  if (typeof v === 'string') return 'a string'
  if (typeof v === 'number') return Number.isInteger(v) ? 'an integer' : 'a decimal'
  if (typeof v === 'boolean') return 'a boolean'
  return 'an object'
}

function stringOf (b: Body, k: string, param = k): string | undefined {
  if (!present(b, k)) return undefined
  if (typeof b[k] !== 'string') throw bad(param, `Invalid type for '${param}': expected a string, but got ${typeName(b[k])} instead.`, 'invalid_type')
  return b[k] as string
}

function booleanOf (b: Body, k: string): boolean | undefined {
  if (!present(b, k)) return undefined
  if (typeof b[k] !== 'boolean') throw bad(k, `Invalid type for '${k}': expected a boolean, but got ${typeName(b[k])} instead.`, 'invalid_type')
  return b[k] as boolean
}

function numberIn (b: Body, k: string, min: number, max: number, integer = false): number | undefined {
  if (!present(b, k)) return undefined
  const v = b[k]
  if (typeof v !== 'number' || !Number.isFinite(v) || (integer && !Number.isInteger(v))) {
    throw bad(k, `Invalid type for '${k}': expected ${integer ? 'an integer' : 'a number'}, but got ${typeName(v)} instead.`, 'invalid_type')
  }
  if (v < min) throw bad(k, `Invalid '${k}': value below minimum. Expected a value >= ${min}, but got ${v} instead.`, 'integer_below_min_value')
  if (v > max) throw bad(k, `Invalid '${k}': value above maximum. Expected a value <= ${max}, but got ${v} instead.`, 'integer_above_max_value')
  return v
}

/** Text of one content part; only text parts are served. */
function partText (raw: unknown, param: string): string {
  const part = asObject(raw, param)
  const type = part.type
  if (type === 'input_text' || type === 'output_text' || type === 'text') {
    if (typeof part.text !== 'string') throw bad(`${param}.text`, `Invalid type for '${param}.text': expected a string, but got ${typeName(part.text)} instead.`, 'invalid_type')
    return part.text
  }
  if (type === 'refusal') {
    if (typeof part.refusal !== 'string') throw bad(`${param}.refusal`, `Invalid type for '${param}.refusal': expected a string, but got ${typeName(part.refusal)} instead.`, 'invalid_type')
    return part.refusal
  }
  if (type === 'input_image' || type === 'input_file' || type === 'input_audio') {
    throw unsupported(`${param}.type`, `Content of type '${type}' is not supported by this server; only text ('input_text', 'output_text').`)
  }
  throw bad(`${param}.type`, `Invalid value for '${param}.type': ${shown(type ?? null)} is not a supported content type; expected 'input_text' or 'output_text'.`, 'invalid_value')
}

function contentText (content: unknown, param: string): string {
  if (typeof content === 'string') return content
  if (!Array.isArray(content)) throw bad(param, `Invalid type for '${param}': expected a string or an array of content parts, but got ${typeName(content)} instead.`, 'invalid_type')
  if (content.length > RESPONSES_LIMITS.maxContentParts) throw bad(param, `Invalid '${param}': array too long. Expected an array with maximum length ${RESPONSES_LIMITS.maxContentParts}, but got an array with length ${content.length} instead.`, 'array_above_max_length')
  return content.map((p, i) => partText(p, `${param}[${i}]`)).join('')
}

const ROLES = new Set(['user', 'system', 'developer', 'assistant'])
/** Item types that need hosted tools, storage or reasoning, none of which this server has. */
const TOOL_ITEMS = new Set(['custom_tool_call', 'custom_tool_call_output', 'computer_call', 'computer_call_output',
  'web_search_call', 'file_search_call', 'code_interpreter_call', 'image_generation_call', 'local_shell_call', 'local_shell_call_output',
  'shell_call', 'shell_call_output', 'apply_patch_call', 'apply_patch_call_output', 'mcp_call', 'mcp_list_tools', 'mcp_approval_request', 'mcp_approval_response'])

/**
 * What a stored-response lookup gives the mapping (see responses-store.ts): the conversation a
 * `previous_response_id` continues, and the items an `item_reference` names.
 */
export interface ResponsesLookup {
  conversation: (responseId: string) => Body[] | undefined
  item: (itemId: string) => Body | undefined
}

/** Unknown stored ids are 404s, as OpenAI answers them. */
function notFound (message: string, param: string, code: string): ShepherdError {
  return new ShepherdError(message, { code, status: 404, param })
}

/** `input` as a list of items, with `item_reference`s replaced by the stored items they name. */
function inputItems (input: unknown, lookup: ResponsesLookup | undefined): Body[] {
  if (typeof input === 'string') return [{ type: 'message', role: 'user', content: input }]
  if (!Array.isArray(input)) throw bad('input', `Invalid type for 'input': expected a string or an array of input items, but got ${typeName(input)} instead.`, 'invalid_type')
  if (input.length === 0) throw bad('input', "Invalid 'input': empty array. Expected an array with minimum length 1, but got an empty array instead.", 'empty_array')
  if (input.length > RESPONSES_LIMITS.maxInputItems) throw bad('input', `Invalid 'input': array too long. Expected an array with maximum length ${RESPONSES_LIMITS.maxInputItems}, but got an array with length ${input.length} instead.`, 'array_above_max_length')
  return input.map((raw, i) => {
    const item = asObject(raw, `input[${i}]`)
    if (item.type !== 'item_reference' || lookup === undefined) return item
    if (typeof item.id !== 'string') throw bad(`input[${i}].id`, `Invalid type for 'input[${i}].id': expected a string, but got ${typeName(item.id)} instead.`, 'invalid_type')
    const found = lookup.item(item.id)
    if (found === undefined) throw notFound(`Item with id ${shown(item.id)} not found.`, `input[${i}].id`, 'item_not_found')
    return found
  })
}

function inputMessages (input: Body[]): Body[] {
  if (input.length > RESPONSES_LIMITS.maxInputItems) throw bad('input', `Invalid 'input': the conversation is too long. Expected at most ${RESPONSES_LIMITS.maxInputItems} items with those of previous_response_id, but got ${input.length}.`, 'array_above_max_length')
  const messages: Body[] = []
  input.forEach((raw, i) => {
    const param = `input[${i}]`
    const item = asObject(raw, param)
    if (item.type === 'function_call') {
      const call = functionCallMessage(item, param)
      const last = messages[messages.length - 1]
      // Calls made together (parallel) are one assistant turn in chat.
      if (last?.role === 'assistant' && Array.isArray(last.tool_calls)) last.tool_calls.push(...(call.tool_calls as unknown[]))
      else messages.push(call)
      return
    }
    if (item.type === 'function_call_output') { messages.push(functionOutputMessage(item, param, contentText)); return }
    messages.push(inputMessage(item, param))
  })
  return messages
}

function inputMessage (item: Body, param: string): Body {
  const type = item.type ?? 'message'
  if (type === 'message') {
    if (typeof item.role !== 'string' || !ROLES.has(item.role)) {
      throw bad(`${param}.role`, `Invalid value for '${param}.role': expected one of 'user', 'system', 'developer' or 'assistant', but got ${shown(item.role ?? null)} instead.`, 'invalid_value')
    }
    if (!present(item, 'content')) throw bad(`${param}.content`, `Missing required parameter: '${param}.content'.`, 'missing_required_parameter')
    // Chat templates know `system`; OpenAI's `developer` role is the same instruction slot.
    return { role: item.role === 'developer' ? 'system' : item.role, content: contentText(item.content, `${param}.content`) }
  }
  if (typeof type === 'string' && TOOL_ITEMS.has(type)) throw unsupported(`${param}.type`, `Input items of type '${type}' are not supported: only function tools are served here ('function_call', 'function_call_output').`)
  if (type === 'reasoning') throw unsupported(`${param}.type`, "Input items of type 'reasoning' are not supported: this server does not produce reasoning items.")
  if (type === 'item_reference') throw unsupported(`${param}.type`, "Input items of type 'item_reference' are not supported: this server does not store responses; send the items themselves.")
  throw bad(`${param}.type`, `Invalid value for '${param}.type': ${shown(type)} is not a supported input item type.`, 'invalid_value')
}

function parseMetadata (b: Body): Record<string, string> {
  if (!present(b, 'metadata')) return {}
  const m = asObject(b.metadata, 'metadata')
  const entries = Object.entries(m)
  if (entries.length > RESPONSES_LIMITS.maxMetadataKeys) throw bad('metadata', `Invalid 'metadata': too many properties. Expected an object with at most ${RESPONSES_LIMITS.maxMetadataKeys} properties, but got ${entries.length} instead.`, 'object_above_max_properties')
  for (const [k, v] of entries) {
    if (k.length > RESPONSES_LIMITS.maxMetadataKeyChars) throw bad('metadata', `Invalid 'metadata': keys may hold at most ${RESPONSES_LIMITS.maxMetadataKeyChars} characters.`, 'invalid_value')
    if (typeof v !== 'string') throw bad(`metadata.${k}`, `Invalid type for 'metadata.${k}': expected a string, but got ${typeName(v)} instead.`, 'invalid_type')
    if (v.length > RESPONSES_LIMITS.maxMetadataValueChars) throw bad(`metadata.${k}`, `Invalid 'metadata.${k}': string too long. Expected at most ${RESPONSES_LIMITS.maxMetadataValueChars} characters.`, 'string_above_max_length')
  }
  return Object.fromEntries(entries) as Record<string, string>
}

/** `text.format` → the chat `response_format` (undefined for plain text). */
function parseFormat (b: Body): { format: Body, responseFormat?: Body } {
  if (!present(b, 'text')) return { format: { type: 'text' } }
  const text = asObject(b.text, 'text')
  for (const k of Object.keys(text)) if (k !== 'format' && k !== 'verbosity') throw bad(`text.${k.slice(0, 64)}`, `Unknown parameter: 'text.${k.slice(0, 64)}'.`, 'unknown_parameter')
  // Verbosity steers OpenAI's reasoning models; an engine here has no such knob, so only the default is honest.
  if (present(text, 'verbosity') && text.verbosity !== 'medium') throw unsupported('text.verbosity', "Only text.verbosity 'medium' is supported by this server.")
  if (!present(text, 'format')) return { format: { type: 'text' } }
  const f = asObject(text.format, 'text.format')
  if (f.type === 'text') return { format: { type: 'text' } }
  if (f.type === 'json_object') return { format: { type: 'json_object' }, responseFormat: { type: 'json_object' } }
  if (f.type === 'json_schema') {
    const name = stringOf(f, 'name', 'text.format.name')
    if (name === undefined) throw bad('text.format.name', "Missing required parameter: 'text.format.name'.", 'missing_required_parameter')
    if (!/^[A-Za-z0-9_-]{1,64}$/.test(name)) throw bad('text.format.name', "Invalid 'text.format.name': expected a string of letters, digits, '_' or '-', at most 64 characters.", 'invalid_value')
    const schema = asObject(f.schema, 'text.format.schema')
    const description = stringOf(f, 'description', 'text.format.description')
    if (present(f, 'strict') && typeof f.strict !== 'boolean') throw bad('text.format.strict', `Invalid type for 'text.format.strict': expected a boolean, but got ${typeName(f.strict)} instead.`, 'invalid_type')
    const jsonSchema: Body = { name, schema, ...(description !== undefined ? { description } : {}), ...(present(f, 'strict') ? { strict: f.strict } : {}) }
    return { format: { type: 'json_schema', ...jsonSchema }, responseFormat: { type: 'json_schema', json_schema: jsonSchema } }
  }
  throw bad('text.format.type', `Invalid value for 'text.format.type': expected one of 'text', 'json_object' or 'json_schema', but got ${shown(f.type ?? null)} instead.`, 'invalid_value')
}

/** Everything that needs tools, storage, background jobs or reasoning: refused by name. */
function refuseUnsupported (b: Body): void {
  for (const k of Object.keys(b)) if (!KNOWN.has(k)) throw bad(k.slice(0, 64), `Unknown parameter: '${k.slice(0, 64)}'.`, 'unknown_parameter')
  if (present(b, 'max_tool_calls')) numberIn(b, 'max_tool_calls', 1, Number.MAX_SAFE_INTEGER, true)
  if (present(b, 'conversation')) throw unsupported('conversation', 'conversation is not supported: this server does not store conversations. Send the whole conversation as input items instead.')
  if (present(b, 'prompt')) throw unsupported('prompt', 'Stored prompt templates are not supported by this server; send instructions and input instead.')
  if (booleanOf(b, 'background') === true) throw unsupported('background', 'background responses are not supported: this server does not store responses.')
  if (present(b, 'reasoning')) {
    const r = asObject(b.reasoning, 'reasoning')
    const none = (v: unknown): boolean => v === undefined || v === null || v === 'none'
    if (!none(r.effort) || !none(r.summary) || !none(r.generate_summary)) throw unsupported('reasoning', 'reasoning options are not supported: the models served here do not expose reasoning.')
  }
  if (present(b, 'include')) {
    if (!Array.isArray(b.include)) throw bad('include', `Invalid type for 'include': expected an array, but got ${typeName(b.include)} instead.`, 'invalid_type')
    b.include.forEach((v, i) => {
      // Encrypted reasoning is asked for by stateless clients (Codex, Agents with store: false); there is none to include.
      if (v !== 'reasoning.encrypted_content') throw unsupported(`include[${i}]`, `include value ${shown(v)} is not supported by this server.`)
    })
  }
  if (numberIn(b, 'top_logprobs', 0, 20, true) !== undefined && (b.top_logprobs as number) > 0) throw unsupported('top_logprobs', 'top_logprobs are not supported by this server.')
  // 'auto' would drop items from the middle of a conversation that does not fit; we answer the overflow with an error instead.
  if (present(b, 'truncation') && b.truncation !== 'disabled') throw unsupported('truncation', "Only truncation 'disabled' is supported by this server.")
  if (present(b, 'service_tier') && b.service_tier !== 'auto' && b.service_tier !== 'default') throw unsupported('service_tier', "Only service_tier 'auto' or 'default' is supported: every request in a mesh is served alike.")
  if (present(b, 'stream_options')) asObject(b.stream_options, 'stream_options')
}

/**
 * Validates a `/v1/responses` body and maps it onto an OpenAI chat body. `maxOutputTokens` is the
 * model's context length when the mesh knows it: a `max_output_tokens` above it is refused.
 */
export function parseResponsesRequest (raw: unknown, opts: { maxOutputTokens?: number | null, lookup?: ResponsesLookup } = {}): ParsedResponsesRequest {
  const b = asObject(raw, 'body')
  refuseUnsupported(b)
  const previousResponseId = stringOf(b, 'previous_response_id') ?? null
  let previous: Body[] = []
  if (previousResponseId !== null) {
    if (opts.lookup === undefined) throw unsupported('previous_response_id', 'previous_response_id is not supported: this server does not store responses. Send the whole conversation as input items instead.')
    const found = opts.lookup.conversation(previousResponseId)
    // Stored responses live on the node that answered them (see the README), and only so many are kept.
    if (found === undefined) throw notFound(`Previous response with id ${shown(previousResponseId)} not found.`, 'previous_response_id', 'previous_response_not_found')
    previous = found
  }
  if (!present(b, 'model')) throw bad('model', "Missing required parameter: 'model'.", 'missing_required_parameter')
  const model = stringOf(b, 'model') as string
  if (model.length === 0 || model.length > 256) throw bad('model', "Invalid 'model': expected a non-empty string of at most 256 characters.", 'invalid_value')
  if (!present(b, 'input')) throw bad('input', "Missing required parameter: 'input'.", 'missing_required_parameter')
  const instructions = stringOf(b, 'instructions') ?? null
  // Instructions are not carried over from a previous response (as OpenAI does): each request gives its own.
  const items = [...previous, ...inputItems(b.input, opts.lookup)]
  const messages = [...(instructions !== null ? [{ role: 'system', content: instructions }] : []), ...inputMessages(items)]
  const maxOutputTokens = numberIn(b, 'max_output_tokens', 1, opts.maxOutputTokens ?? RESPONSES_LIMITS.maxOutputTokensFallback, true)
  const temperature = numberIn(b, 'temperature', 0, 2)
  const topP = numberIn(b, 'top_p', 0, 1)
  const stream = booleanOf(b, 'stream') ?? false
  const store = booleanOf(b, 'store') ?? true
  const parallelToolCalls = booleanOf(b, 'parallel_tool_calls') ?? true
  const tools = parseResponsesTools(b.tools)
  const toolChoice = parseResponsesToolChoice(b.tool_choice)
  // Without tools, 'auto' and 'none' both mean "answer in text"; a forced call has nothing to call.
  const forced = toolChoice.chat !== undefined && toolChoice.chat !== 'auto' && toolChoice.chat !== 'none'
  if (forced && tools.chat.length === 0) throw bad('tool_choice', "Invalid value for 'tool_choice': a required or named tool_choice needs at least one function in 'tools'.", 'invalid_value')
  const metadata = parseMetadata(b)
  const { format, responseFormat } = parseFormat(b)
  const user = stringOf(b, 'user') ?? null
  const safetyIdentifier = stringOf(b, 'safety_identifier') ?? null
  const promptCacheKey = stringOf(b, 'prompt_cache_key') ?? null
  const body: Record<string, unknown> = {
    model,
    messages,
    // OpenAI's defaults are 1 for both; an engine's own are lower, so the documented ones are sent.
    temperature: temperature ?? 1,
    top_p: topP ?? 1,
    ...(maxOutputTokens !== undefined ? { max_tokens: maxOutputTokens } : {}),
    ...(responseFormat !== undefined ? { response_format: responseFormat } : {}),
    ...(tools.chat.length > 0 ? { tools: tools.chat } : {}),
    ...(toolChoice.chat !== undefined && tools.chat.length > 0 ? { tool_choice: toolChoice.chat } : {}),
    ...(present(b, 'parallel_tool_calls') && tools.chat.length > 0 ? { parallel_tool_calls: parallelToolCalls } : {}),
    stream: true,
    stream_options: { include_usage: true }
  }
  return {
    model,
    stream,
    items,
    echo: { previousResponseId, instructions, maxOutputTokens: maxOutputTokens ?? null, temperature: temperature ?? 1, topP: topP ?? 1, metadata, store, format, user, safetyIdentifier, promptCacheKey, parallelToolCalls, tools: tools.echo, toolChoice: toolChoice.echo },
    body
  }
}
