/**
 * Tool calls on the embedded engine, the parts that need no model:
 * - the chat history in node-llama-cpp's shape, tool calls and their results included;
 * - the grammar schema and instructions of a forced call (`tool_choice` "required" or a named
 *   function), whose reply is `{"name": …, "arguments": {…}}` (or an array of them);
 * - a streaming scanner that cuts that JSON into OpenAI's `tool_calls` deltas.
 */
import { randomBytes } from 'node:crypto'
import type { ChatHistoryItem, ChatModelFunctionCall, ChatModelFunctions, ChatModelResponse } from 'node-llama-cpp'
import { REQUEST_LIMITS } from './constants.js'
import type { NormalizedMessage } from './openai-request.js'
import type { ChatCompletionChunkToolCall, ChatCompletionMessageToolCall, ToolChoice, ToolDefinition } from './openai-types.js'
import type { JsonSchema } from './response-format.js'

const ID_ALPHABET = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789'

/** `call_` and 24 random letters and digits, as OpenAI's ids look. */
export function newToolCallId (): string {
  return 'call_' + [...randomBytes(24)].map(b => ID_ALPHABET[b % ID_ALPHABET.length]).join('')
}

function parseMaybeJson (text: string): unknown {
  try {
    return JSON.parse(text)
  } catch {
    return text
  }
}

/**
 * The history as node-llama-cpp renders it through the model's chat template: an assistant's
 * tool calls become function calls of its response, the tool messages after it their results,
 * and an assistant message after those results continues the same response.
 */
export function chatHistory (messages: NormalizedMessage[]): ChatHistoryItem[] {
  const items: ChatHistoryItem[] = []
  let calls: Array<{ id: string, call: ChatModelFunctionCall }> = []
  let afterResults = false
  for (const m of messages) {
    if (m.role === 'system' || m.role === 'user') {
      items.push({ type: m.role, text: m.content })
      calls = []
      afterResults = false
    } else if (m.role === 'assistant') {
      const response: ChatModelResponse['response'] = m.content.length > 0 ? [m.content] : []
      const newCalls = (m.toolCalls ?? []).map((c, j) => ({
        id: c.id,
        call: { type: 'functionCall' as const, name: c.function.name, params: parseMaybeJson(c.function.arguments), result: '', startsNewChunk: j === 0 }
      }))
      response.push(...newCalls.map(c => c.call))
      const last = items.at(-1)
      if (afterResults && last?.type === 'model') last.response.push(...response)
      else items.push({ type: 'model', response })
      calls = newCalls
      afterResults = false
    } else {
      const match = calls.find(c => c.id === m.toolCallId) ?? calls.find(c => m.toolCallId === undefined && c.call.name === m.name && c.call.result === '')
      if (match !== undefined) match.call.result = parseMaybeJson(m.content)
      afterResults = true
    }
  }
  return items
}

/** node-llama-cpp's function definitions (the model's template documents them in the prompt). */
export function chatModelFunctions (tools: ToolDefinition[]): ChatModelFunctions {
  return Object.fromEntries(tools.map(t => [t.name, {
    ...(t.description !== undefined ? { description: t.description } : {}),
    params: t.grammarParameters as ChatModelFunctions[string]['params']
  }]))
}

/** Renames a schema's `$ref`s from `#/$defs/x` to `#/$defs/<prefix>x`. */
function prefixRefs (schema: unknown, prefix: string): unknown {
  if (Array.isArray(schema)) return schema.map(s => prefixRefs(s, prefix))
  if (schema === null || typeof schema !== 'object') return schema
  return Object.fromEntries(Object.entries(schema).map(([k, v]) =>
    k === '$ref' && typeof v === 'string' ? [k, v.replace('#/$defs/', `#/$defs/${prefix}`)] : [k, k === 'enum' || k === 'const' ? v : prefixRefs(v, prefix)]))
}

/** The tools a forced choice allows: the named one, or all. */
export function allowedTools (tools: ToolDefinition[], choice: ToolChoice): ToolDefinition[] {
  return choice.type === 'function' ? tools.filter(t => t.name === choice.name) : tools
}

/** Whether a forced reply is an array of calls: only `required` with parallel calls allowed (a named choice is one call). */
export function forcedIsArray (choice: ToolChoice, parallel: boolean): boolean {
  return choice.type === 'required' && parallel
}

/**
 * The grammar schema of a forced reply: `{"name": <allowed name>, "arguments": <its
 * parameters>}`, or with parallel calls a non-empty array of those. Each tool's `$defs` move to
 * the root under a per-tool prefix, since node-llama-cpp resolves `$ref` only there.
 */
export function forcedCallSchema (tools: ToolDefinition[], choice: ToolChoice, parallel: boolean): JsonSchema {
  const defs: Record<string, unknown> = {}
  const variants = allowedTools(tools, choice).map((t, i): JsonSchema => {
    const { $defs, ...params } = t.grammarParameters
    const prefix = `t${i}_`
    for (const [name, def] of Object.entries(($defs ?? {}) as Record<string, unknown>)) defs[prefix + name] = prefixRefs(def, prefix)
    return {
      type: 'object',
      properties: { name: { const: t.name }, arguments: prefixRefs(params, prefix) },
      required: ['name', 'arguments'],
      additionalProperties: false
    }
  })
  const one = variants.length === 1 ? variants[0] : { oneOf: variants }
  const root: JsonSchema = forcedIsArray(choice, parallel) ? { type: 'array', items: one, minItems: 1, maxItems: REQUEST_LIMITS.maxParallelToolCalls } : one
  return Object.keys(defs).length > 0 ? { ...root, $defs: defs } : root
}

/** The system text that tells the model about a forced call (the grammar enforces it either way). */
export function forcedCallInstructions (tools: ToolDefinition[], choice: ToolChoice, parallel: boolean): string {
  const list = allowedTools(tools, choice).map(t => JSON.stringify({ name: t.name, description: t.description, parameters: t.parameters })).join('\n')
  const shape = '{"name": ..., "arguments": {...}}'
  return `Call ${choice.type === 'function' ? 'this tool' : 'one of these tools'}:\n${list}\n` +
    (forcedIsArray(choice, parallel) ? `Reply only with a JSON array of calls ${shape}.` : `Reply only with JSON ${shape}.`)
}

/**
 * Cuts a forced reply's JSON, as it streams, into OpenAI's `tool_calls` deltas: a call's first
 * delta carries its id and name once its `"arguments":` key is reached (the grammar writes the
 * name first), later ones the argument text exactly as generated, so the deltas concatenate to
 * each call's `arguments`. Tracks only string and nesting state: the grammar guarantees the shape.
 */
export class ToolCallScanner {
  private depth = 0
  private inString = false
  private escape = false
  private header = ''
  private args: string | undefined
  private readonly callDepth: number
  readonly calls: ChatCompletionMessageToolCall[] = []

  constructor (array: boolean) {
    this.callDepth = array ? 2 : 1
  }

  /** Feeds generated text; returns the deltas it completes (at most one per call). */
  feed (text: string): ChatCompletionChunkToolCall[] {
    const out: ChatCompletionChunkToolCall[] = []
    for (const ch of text) this.step(ch, out)
    return out
  }

  private step (ch: string, out: ChatCompletionChunkToolCall[]): void {
    const was = this.depth
    if (this.inString) {
      if (this.escape) this.escape = false
      else if (ch === '\\') this.escape = true
      else if (ch === '"') this.inString = false
    } else if (ch === '"') this.inString = true
    else if (ch === '{' || ch === '[') this.depth++
    else if (ch === '}' || ch === ']') this.depth--
    if (this.args !== undefined) {
      // Whitespace between the key's colon and the arguments object is not part of them.
      if (this.args.length === 0 && was === this.callDepth && /\s/.test(ch)) return
      this.args += ch
      const call = this.calls[this.calls.length - 1]
      call.function.arguments = this.args
      const last = out.at(-1)
      if (last !== undefined && last.index === this.calls.length - 1 && last.id === undefined && last.function !== undefined) last.function.arguments += ch
      else out.push({ index: this.calls.length - 1, function: { arguments: ch } })
      if (this.depth === this.callDepth && was === this.callDepth + 1) this.args = undefined
      return
    }
    if (this.depth === this.callDepth && was === this.callDepth - 1) {
      this.header = ''
      return
    }
    if (this.depth !== this.callDepth || was !== this.callDepth) return
    if (this.header.length < 256) this.header += ch
    if (this.inString || ch !== ':' || !/"arguments"\s*:$/.test(this.header)) return
    const m = /"name"\s*:\s*("(?:[^"\\]|\\.)*")/.exec(this.header)
    const name = m === null ? '' : JSON.parse(m[1]) as string
    const id = newToolCallId()
    this.calls.push({ id, type: 'function', function: { name, arguments: '' } })
    out.push({ index: this.calls.length - 1, id, type: 'function', function: { name, arguments: '' } })
    this.args = ''
  }
}

/** What the embedded engine gets from node-llama-cpp's function calling, per call. */
export interface ParamsChunk {
  callIndex: number
  functionName: string
  paramsChunk: string
}

/**
 * Collects one generation's tool calls and the stream deltas for them, either from a forced
 * reply's JSON text (`forced`) or from node-llama-cpp's function calling (the model's own
 * template, for `tool_choice: "auto"`).
 */
export class ToolCallCollector {
  private readonly scanner: ToolCallScanner | undefined
  private readonly auto: ChatCompletionMessageToolCall[] = []

  constructor (forced: { array: boolean } | undefined) {
    this.scanner = forced === undefined ? undefined : new ToolCallScanner(forced.array)
  }

  /** Whether the generated text is the calls' JSON (not content). */
  get forced (): boolean {
    return this.scanner !== undefined
  }

  /** Deltas for generated text of a forced reply. */
  text (text: string): ChatCompletionChunkToolCall[] {
    return this.scanner?.feed(text) ?? []
  }

  /** Deltas for a piece of a function call's parameters from node-llama-cpp. */
  params (chunk: ParamsChunk): ChatCompletionChunkToolCall[] {
    const out: ChatCompletionChunkToolCall[] = []
    let call = this.auto[chunk.callIndex]
    if (call === undefined) {
      call = { id: newToolCallId(), type: 'function', function: { name: chunk.functionName, arguments: '' } }
      this.auto[chunk.callIndex] = call
      out.push({ index: chunk.callIndex, id: call.id, type: 'function', function: { name: call.function.name, arguments: '' } })
    }
    if (chunk.paramsChunk.length > 0) {
      call.function.arguments += chunk.paramsChunk
      out.push({ index: chunk.callIndex, function: { arguments: chunk.paramsChunk } })
    }
    return out
  }

  /**
   * The calls once generation ended, with the deltas still owed: node-llama-cpp's final calls
   * are authoritative, and a call without parameters streams none, so its arguments are `{}`.
   */
  finish (functionCalls: ReadonlyArray<{ functionName: string, params: unknown }> | undefined): { calls: ChatCompletionMessageToolCall[], deltas: ChatCompletionChunkToolCall[] } {
    if (this.scanner !== undefined) return { calls: this.scanner.calls, deltas: [] }
    const deltas: ChatCompletionChunkToolCall[] = []
    for (const [index, fc] of (functionCalls ?? []).entries()) {
      const whole = JSON.stringify(fc.params ?? {})
      if (this.auto[index] === undefined) deltas.push(...this.params({ callIndex: index, functionName: fc.functionName, paramsChunk: '' }))
      const call = this.auto[index]
      if (!parsesTo(call.function.arguments, fc.params ?? {})) {
        // The streamed text was not the arguments (none streamed): send them whole.
        if (call.function.arguments.length === 0) deltas.push({ index, function: { arguments: whole } })
        call.function.arguments = whole
      }
    }
    return { calls: this.auto.slice(0, functionCalls?.length ?? 0).filter(c => c !== undefined), deltas }
  }
}

function parsesTo (text: string, value: unknown): boolean {
  try {
    return JSON.stringify(JSON.parse(text)) === JSON.stringify(value)
  } catch {
    return false
  }
}
