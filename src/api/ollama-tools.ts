/**
 * Tool calling in the Ollama API (`/api/chat`), mapped onto OpenAI's chat tools, which both local
 * engines serve. Ollama's shapes differ from OpenAI's in three ways this module bridges:
 * - a call's `arguments` is a JSON object, not a JSON string;
 * - a `role: "tool"` message names its tool (`tool_name`) and often no call id, so it is paired
 *   here with the first unanswered call of that name in the assistant message before it;
 * - calls are sent whole, in one streamed line before the final one, not as argument deltas.
 * Ollama has no `tool_choice`; this server accepts OpenAI's as an extension (a forced call is
 * enforced by grammar), and offers the tools to the model's own template otherwise.
 */
import { BadRequestError } from '../errors.js'
import type { GenerationEvent } from './inference-call.js'

type Body = Record<string, unknown>

const isObject = (v: unknown): v is Body => v !== null && typeof v === 'object' && !Array.isArray(v)

/** `tools` (and the `tool_choice` extension) as OpenAI fields; the engine validates them further. */
export function mapOllamaTools (b: Body): Record<string, unknown> {
  const out: Record<string, unknown> = {}
  if (b.tools !== undefined && b.tools !== null) {
    if (!Array.isArray(b.tools)) throw new BadRequestError('tools must be a list', 'tools')
    if (b.tools.length > 0) {
      out.tools = b.tools.map((t, i) => {
        if (!isObject(t) || !isObject(t.function)) throw new BadRequestError(`tools[${i}].function must be an object`, `tools[${i}].function`)
        if (t.type !== undefined && t.type !== 'function') throw new BadRequestError(`tools[${i}].type must be "function"`, `tools[${i}].type`)
        const { name, description, parameters } = t.function
        return { type: 'function', function: { name, ...(description !== undefined ? { description } : {}), ...(parameters !== undefined ? { parameters } : {}) } }
      })
    }
  }
  if (b.tool_choice !== undefined && b.tool_choice !== null) out.tool_choice = b.tool_choice
  return out
}

/** A call id for a call the client sent without one: stable within the conversation. */
const idFor = (message: number, call: number): string => `call_m${message}c${call}`

/**
 * Ollama chat messages as OpenAI's: assistant `tool_calls` (object arguments → JSON strings, ids
 * kept or made) and `role: "tool"` results paired with the call they answer.
 */
export function mapOllamaMessages (raw: unknown[]): Array<Record<string, unknown>> {
  // Calls of the last assistant message not answered yet: id and name.
  let open: Array<{ id: string, name: string }> = []
  return raw.map((rawMsg, i) => {
    if (!isObject(rawMsg)) throw new BadRequestError(`messages[${i}] must be a JSON object`, `messages[${i}]`)
    const m = rawMsg
    const role = m.role
    if (role !== 'system' && role !== 'user' && role !== 'assistant' && role !== 'tool') {
      throw new BadRequestError(`messages[${i}].role must be system, user, assistant or tool`, `messages[${i}].role`)
    }
    if (m.content !== undefined && m.content !== null && typeof m.content !== 'string') throw new BadRequestError(`messages[${i}].content must be a string`, `messages[${i}].content`)
    if (m.images !== undefined && m.images !== null && !(Array.isArray(m.images) && m.images.length === 0)) {
      throw new BadRequestError('images are not supported by this server', `messages[${i}].images`, 'unsupported_parameter')
    }
    const content = typeof m.content === 'string' ? m.content : ''
    if (role === 'assistant') {
      const calls = m.tool_calls
      if (calls === undefined || calls === null || (Array.isArray(calls) && calls.length === 0)) {
        open = []
        return { role, content }
      }
      if (!Array.isArray(calls)) throw new BadRequestError(`messages[${i}].tool_calls must be a list`, `messages[${i}].tool_calls`)
      const mapped = calls.map((c, j) => {
        const fn = isObject(c) ? c.function : undefined
        if (!isObject(fn) || typeof fn.name !== 'string') throw new BadRequestError(`messages[${i}].tool_calls[${j}].function.name must be a string`, `messages[${i}].tool_calls[${j}].function.name`)
        const args = fn.arguments ?? {}
        if (!isObject(args) && typeof args !== 'string') throw new BadRequestError(`messages[${i}].tool_calls[${j}].function.arguments must be an object`, `messages[${i}].tool_calls[${j}].function.arguments`)
        const id = isObject(c) && typeof c.id === 'string' && c.id !== '' ? c.id : idFor(i, j)
        return { id, type: 'function', function: { name: fn.name, arguments: typeof args === 'string' ? args : JSON.stringify(args) } }
      })
      open = mapped.map(c => ({ id: c.id, name: c.function.name }))
      return { role, content: content === '' ? null : content, tool_calls: mapped }
    }
    if (role === 'tool') {
      const named = typeof m.tool_name === 'string' ? m.tool_name : typeof m.name === 'string' ? m.name : undefined
      const given = typeof m.tool_call_id === 'string' && m.tool_call_id !== '' ? m.tool_call_id : undefined
      const at = given !== undefined ? open.findIndex(c => c.id === given) : open.findIndex(c => named === undefined || c.name === named)
      if (at === -1) throw new BadRequestError(`messages[${i}]: a tool message must answer a tool call of the assistant message before it`, `messages[${i}]`)
      const [answered] = open.splice(at, 1)
      return { role, content, tool_call_id: answered.id }
    }
    open = []
    if (m.tool_calls !== undefined && m.tool_calls !== null) throw new BadRequestError(`messages[${i}].tool_calls is only for assistant messages`, `messages[${i}].tool_calls`)
    return { role, content }
  })
}

/** One call as Ollama answers it. */
export interface OllamaToolCall {
  id: string
  function: { index: number, name: string, arguments: Record<string, unknown> }
}

/** Gathers the calls of a generation from its events; Ollama sends them whole. */
export class OllamaToolCalls {
  private readonly calls = new Map<number, { id: string, name: string, json: string }>()

  /** Takes a generation event; true when it was part of a call. */
  take (ev: GenerationEvent): boolean {
    if (ev.kind === 'tool_start') {
      this.calls.set(ev.call, { id: ev.id, name: ev.name, json: '' })
      return true
    }
    if (ev.kind === 'tool_args') {
      const call = this.calls.get(ev.call)
      if (call !== undefined) call.json += ev.json
      return true
    }
    return false
  }

  get size (): number {
    return this.calls.size
  }

  /** The calls in order; arguments cut short (a length limit) come as `{}`, as they cannot parse. */
  list (): OllamaToolCall[] {
    return [...this.calls.entries()].sort(([a], [b]) => a - b).map(([index, c]) => ({ id: c.id, function: { index, name: c.name, arguments: parseArguments(c.json) } }))
  }
}

function parseArguments (json: string): Record<string, unknown> {
  try {
    const v: unknown = JSON.parse(json === '' ? '{}' : json)
    return isObject(v) ? v : { value: v }
  } catch {
    return {}
  }
}
