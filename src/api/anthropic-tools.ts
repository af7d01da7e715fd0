/**
 * Anthropic tool use mapped onto OpenAI chat tools, both ways. Pure functions.
 *
 * Request: `tools: [{name, description, input_schema}]` → chat `tools`; `tool_choice` → chat
 * `tool_choice` + `parallel_tool_calls`; `tool_use` blocks of assistant turns → `tool_calls`;
 * `tool_result` blocks of user turns → `role: "tool"` messages, placed before the rest of that
 * turn's text because a chat tool message must follow the assistant call it answers.
 * Output: chat tool calls → `tool_use` blocks with the arguments parsed into `input`.
 * Server tools (web search, bash, computer use…) run on Anthropic's side: refused with a 400.
 * Also holds the block readers the request mapping shares (`asObject`, `blocksText`), so the two
 * modules do not import each other.
 */
import { BadRequestError, ShepherdError } from '../errors.js'

/** A chat message as the engines take it. */
export interface ChatMessage {
  role: string
  content: string | null
  tool_calls?: Array<{ id: string, type: 'function', function: { name: string, arguments: string } }>
  tool_call_id?: string
}

type Body = Record<string, unknown>

/** The object at `field`, or a 400 naming it. */
export function asObject (v: unknown, field: string): Body {
  if (v === null || typeof v !== 'object' || Array.isArray(v)) throw new BadRequestError(`${field}: Input should be a valid dictionary`, field === 'body' ? null : field)
  return v as Body
}

/** Text of a `content` (string or blocks) or of `system`; non-text blocks are refused. */
export function blocksText (content: unknown, field: string): string {
  if (typeof content === 'string') return content
  if (!Array.isArray(content)) throw new BadRequestError(`${field}: Input should be a valid string or a list of content blocks`, field)
  return content.map((raw, i) => {
    const block = asObject(raw, `${field}.${i}`)
    const type = block.type
    if (type === 'text') {
      if (typeof block.text !== 'string') throw new BadRequestError(`${field}.${i}.text: Input should be a valid string`, `${field}.${i}.text`)
      return block.text
    }
    if (type === 'tool_use' || type === 'tool_result' || type === 'server_tool_use') {
      // mapMessage takes tool_use and tool_result out of the turns where they belong; anywhere else they are misplaced.
      throw new BadRequestError(`${field}.${i}: content blocks of type '${type}' are not allowed here (tool_use only in assistant turns, tool_result only in user turns; server tools are not supported)`, `${field}.${i}.type`, 'unsupported_parameter')
    }
    throw new BadRequestError(`${field}.${i}: content blocks of type '${String(type)}' are not supported by this server; only 'text'`, `${field}.${i}.type`, 'unsupported_parameter')
  }).join('\n')
}

/** Maps `tools` onto chat function tools; the engines validate names and schemas further. */
export function parseTools (raw: unknown): Array<{ type: 'function', function: Body }> {
  if (!Array.isArray(raw)) throw new BadRequestError('tools: Input should be a valid list', 'tools')
  return raw.map((item, i) => {
    const t = asObject(item, `tools.${i}`)
    // Custom tools have no type or 'custom'; any other type is an Anthropic-hosted server tool.
    if (t.type !== undefined && t.type !== null && t.type !== 'custom') {
      throw new BadRequestError(`tools.${i}: server tool '${String(t.type)}' is not supported by this server; only custom tools ({name, description, input_schema}) are`, `tools.${i}.type`, 'unsupported_parameter')
    }
    if (typeof t.name !== 'string' || t.name === '') throw new BadRequestError(`tools.${i}.name: Field required`, `tools.${i}.name`)
    const schema = asObject(t.input_schema, `tools.${i}.input_schema`)
    if (t.description !== undefined && typeof t.description !== 'string') throw new BadRequestError(`tools.${i}.description: Input should be a valid string`, `tools.${i}.description`)
    return { type: 'function', function: { name: t.name, ...(typeof t.description === 'string' ? { description: t.description } : {}), parameters: schema } }
  })
}

/** Maps `tool_choice` onto chat `tool_choice` (and `parallel_tool_calls`). */
export function parseToolChoice (raw: unknown): Body {
  const c = asObject(raw, 'tool_choice')
  const dp = c.disable_parallel_tool_use
  if (dp !== undefined && typeof dp !== 'boolean') throw new BadRequestError('tool_choice.disable_parallel_tool_use: Input should be a valid boolean', 'tool_choice.disable_parallel_tool_use')
  const parallel = typeof dp === 'boolean' ? { parallel_tool_calls: !dp } : {}
  switch (c.type) {
    case 'auto': return { tool_choice: 'auto', ...parallel }
    case 'any': return { tool_choice: 'required', ...parallel }
    case 'none': return { tool_choice: 'none' }
    case 'tool':
      if (typeof c.name !== 'string' || c.name === '') throw new BadRequestError('tool_choice.name: Field required', 'tool_choice.name')
      return { tool_choice: { type: 'function', function: { name: c.name } }, ...parallel }
    default: throw new BadRequestError("tool_choice.type: Input should be 'auto', 'any', 'tool' or 'none'", 'tool_choice.type')
  }
}

/** The text of a tool_result's `content`: a string or text blocks. */
function resultText (content: unknown, field: string): string {
  if (content === undefined || content === null) return ''
  return blocksText(content, field)
}

/** One Anthropic turn as one or more chat messages. */
export function mapMessage (role: 'user' | 'assistant', content: unknown, field: string): ChatMessage[] {
  if (!Array.isArray(content)) return [{ role, content: blocksText(content, field) }]
  const texts: unknown[] = []
  const calls: NonNullable<ChatMessage['tool_calls']> = []
  const results: ChatMessage[] = []
  content.forEach((raw, i) => {
    const block = asObject(raw, `${field}.${i}`)
    const at = `${field}.${i}`
    if (block.type === 'tool_use' && role === 'assistant') {
      if (typeof block.id !== 'string' || block.id === '') throw new BadRequestError(`${at}.id: Field required`, `${at}.id`)
      if (typeof block.name !== 'string' || block.name === '') throw new BadRequestError(`${at}.name: Field required`, `${at}.name`)
      const input = asObject(block.input, `${at}.input`)
      calls.push({ id: block.id, type: 'function', function: { name: block.name, arguments: JSON.stringify(input) } })
    } else if (block.type === 'tool_result' && role === 'user') {
      if (typeof block.tool_use_id !== 'string' || block.tool_use_id === '') throw new BadRequestError(`${at}.tool_use_id: Field required`, `${at}.tool_use_id`)
      if (block.is_error !== undefined && typeof block.is_error !== 'boolean') throw new BadRequestError(`${at}.is_error: Input should be a valid boolean`, `${at}.is_error`)
      const text = resultText(block.content, `${at}.content`)
      // Chat tool messages have no error flag: the model is told in the text instead.
      results.push({ role: 'tool', tool_call_id: block.tool_use_id, content: block.is_error === true ? `Error: ${text}` : text })
    } else {
      texts.push(raw)
    }
  })
  const text = texts.length > 0 ? blocksText(texts, field) : ''
  if (role === 'assistant') {
    if (calls.length === 0) return [{ role, content: text }]
    return [{ role, content: text === '' ? null : text, tool_calls: calls }]
  }
  if (results.length === 0) return [{ role, content: text }]
  return texts.length > 0 ? [...results, { role, content: text }] : results
}

/** Anthropic's `toolu_` id for a chat call id (`call_…`); other ids are kept with the prefix added. */
export function toolUseId (callId: string): string {
  return callId.startsWith('toolu_') ? callId : 'toolu_' + callId.replace(/^call_/, '')
}

/** A whole tool_use block; arguments that are not a JSON object are the engine's fault (502). */
export function toolUseBlock (id: string, name: string, args: string): Record<string, unknown> {
  let input: unknown
  try { input = JSON.parse(args === '' ? '{}' : args) } catch { input = undefined }
  if (input === null || typeof input !== 'object' || Array.isArray(input)) {
    throw new ShepherdError('The model produced tool call arguments that are not a JSON object', { code: 'bad_engine_reply', status: 502 })
  }
  return { type: 'tool_use', id: toolUseId(id), name, input }
}
