/**
 * Responses API function tools mapped onto the chat API's tools (issue 13): `tools`, `tool_choice`
 * and the `function_call` / `function_call_output` input items. Only the Responses shape is checked
 * here; names, schemas and choices are then judged by the engine's chat parser (tool-request.ts),
 * whose refusals responses.ts renames to the Responses parameters. Hosted tools (web search, file
 * search, MCP...) are refused by name: nothing here can run them. Pure functions.
 */
import { BadRequestError } from '../errors.js'

type Body = Record<string, unknown>

/** The tool types OpenAI hosts or runs itself: refused with a 400 naming the parameter. */
const HOSTED = 'only function tools are supported by this server'

const bad = (param: string, message: string, code = 'invalid_request'): BadRequestError => new BadRequestError(message, param, code)
const present = (b: Body, k: string): boolean => b[k] !== undefined && b[k] !== null
const kind = (v: unknown): string => v === null ? 'null' : Array.isArray(v) ? 'an array' : typeof v === 'object' ? 'an object' : `a ${typeof v}`
/** A client's value quoted in a message, cut short: a hostile value must not make a huge error. */
const shown = (v: unknown): string => { const s = JSON.stringify(v) ?? String(v); return s.length > 64 ? `${s.slice(0, 64)}…` : s }

function object (v: unknown, param: string): Body {
  if (v === null || typeof v !== 'object' || Array.isArray(v)) throw bad(param, `Invalid type for '${param}': expected an object, but got ${kind(v)} instead.`, 'invalid_type')
  return v as Body
}

function string (b: Body, k: string, param: string): string {
  if (!present(b, k)) throw bad(`${param}.${k}`, `Missing required parameter: '${param}.${k}'.`, 'missing_required_parameter')
  if (typeof b[k] !== 'string') throw bad(`${param}.${k}`, `Invalid type for '${param}.${k}': expected a string, but got ${kind(b[k])} instead.`, 'invalid_type')
  return b[k] as string
}

/** `tools` → chat tools, and the list OpenAI echoes on the response object. */
export function parseResponsesTools (raw: unknown): { chat: Body[], echo: Body[] } {
  if (raw === undefined || raw === null) return { chat: [], echo: [] }
  if (!Array.isArray(raw)) throw bad('tools', `Invalid type for 'tools': expected an array, but got ${kind(raw)} instead.`, 'invalid_type')
  const chat: Body[] = []
  const echo: Body[] = []
  raw.forEach((t, i) => {
    const param = `tools[${i}]`
    const tool = object(t, param)
    if (tool.type !== 'function') {
      throw new BadRequestError(`Tools of type ${shown(tool.type ?? null)} are not supported: ${HOSTED} ({type: 'function', name, parameters}).`, `${param}.type`, 'unsupported_parameter')
    }
    const name = string(tool, 'name', param)
    const fn: Body = { name }
    if (present(tool, 'description')) fn.description = string(tool, 'description', param)
    if (present(tool, 'parameters')) fn.parameters = object(tool.parameters, `${param}.parameters`)
    // The chat parser checks the type; OpenAI's Responses default for `strict` is true, but a client
    // that leaves it out gets the engine's default (chat's false), which accepts more schemas.
    if (present(tool, 'strict')) fn.strict = tool.strict
    chat.push({ type: 'function', function: fn })
    echo.push({ type: 'function', name, description: fn.description ?? null, parameters: fn.parameters ?? null, strict: fn.strict ?? null })
  })
  return { chat, echo }
}

/** `tool_choice` → chat's, and the value OpenAI echoes (`'auto'` when absent). */
export function parseResponsesToolChoice (raw: unknown): { chat?: unknown, echo: unknown } {
  if (raw === undefined || raw === null) return { echo: 'auto' }
  if (raw === 'auto' || raw === 'none' || raw === 'required') return { chat: raw, echo: raw }
  if (typeof raw === 'string') throw bad('tool_choice', `Invalid value for 'tool_choice': expected 'auto', 'none', 'required' or {type: 'function', name}, but got ${shown(raw)} instead.`, 'invalid_value')
  const c = object(raw, 'tool_choice')
  if (c.type !== 'function') {
    throw new BadRequestError(`tool_choice of type ${shown(c.type ?? null)} is not supported: ${HOSTED}; use 'auto', 'none', 'required' or {type: 'function', name}.`, 'tool_choice.type', 'unsupported_parameter')
  }
  const name = string(c, 'name', 'tool_choice')
  return { chat: { type: 'function', function: { name } }, echo: { type: 'function', name } }
}

/** A `function_call` input item (the model's earlier call) → an assistant message with that tool call. */
export function functionCallMessage (item: Body, param: string): Body {
  const callId = string(item, 'call_id', param)
  const name = string(item, 'name', param)
  const args = string(item, 'arguments', param)
  return { role: 'assistant', content: null, tool_calls: [{ id: callId, type: 'function', function: { name, arguments: args } }] }
}

/** A `function_call_output` input item (the tool's result) → a `role: "tool"` message. */
export function functionOutputMessage (item: Body, param: string, contentText: (content: unknown, param: string) => string): Body {
  const callId = string(item, 'call_id', param)
  if (!present(item, 'output')) throw bad(`${param}.output`, `Missing required parameter: '${param}.output'.`, 'missing_required_parameter')
  return { role: 'tool', tool_call_id: callId, content: contentText(item.output, `${param}.output`) }
}

/**
 * A chat parser's refusal renamed to the Responses parameter it came from: `tools[0].function.name`
 * is `tools[0].name` there, `tool_choice.function.name` is `tool_choice.name`. Null when unrelated.
 */
export function responsesToolParam (param: string): string | null {
  if (!/^tools\[\d+\]\.function|^tool_choice\.function/.test(param)) return null
  return responsesToolText(param)
}

/** The same renaming inside a refusal's message. */
export function responsesToolText (text: string): string {
  return text.replace(/tools\[(\d+)\]\.function\b/g, 'tools[$1]').replace(/tool_choice\.function\b/g, 'tool_choice')
}
