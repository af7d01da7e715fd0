/**
 * Validation of a chat request's tool fields: `tools`, `tool_choice`, `parallel_tool_calls`,
 * the legacy `functions` / `function_call`, and the tool parts of history messages (assistant
 * `tool_calls`, `role: "tool"` results). Pure functions; every refusal is a `BadRequestError`
 * naming the parameter at fault. Every bound is checked before any schema is walked, so a
 * hostile request (thousands of tools, a huge schema) is refused in time linear in what was read.
 */
import { BadRequestError } from '../../errors.js'
import { REQUEST_LIMITS } from './constants.js'
import type { NormalizedMessage } from './openai-request.js'
import type { ChatCompletionMessageToolCall, ToolChoice, ToolDefinition } from './openai-types.js'
import { checkJsonSchema, type JsonSchema } from './response-format.js'

type Body = Record<string, unknown>

/** OpenAI's rule for function names. */
const FUNCTION_NAME = /^[A-Za-z0-9_-]{1,64}$/

function isObject (v: unknown): v is Body {
  return v !== null && typeof v === 'object' && !Array.isArray(v)
}

function present (body: Body, key: string): boolean {
  return body[key] !== undefined && body[key] !== null
}

/** Keywords a grammar cannot enforce, dropped from a non-strict tool's grammar (see `ToolDefinition.grammarParameters`). */
const LOOSE_KEYWORDS = new Set(['pattern', 'minimum', 'maximum', 'exclusiveMinimum', 'exclusiveMaximum', 'multipleOf',
  'minProperties', 'maxProperties', 'uniqueItems', 'contains', 'patternProperties', 'propertyNames', 'not', 'if', 'then', 'else',
  'minContains', 'maxContains', 'dependentRequired', 'dependentSchemas', 'unevaluatedProperties', 'unevaluatedItems'])

/** The schema less what a grammar cannot enforce; bounded by the depth `checkJsonSchema` allows. */
function loosen (schema: unknown, depth = 0): unknown {
  if (depth > REQUEST_LIMITS.maxSchemaDepth + 2) return schema
  if (Array.isArray(schema)) return schema.map(s => loosen(s, depth + 1))
  if (!isObject(schema)) return schema
  // Pydantic wraps a `$ref` with a description in a one-item `allOf`.
  if (Array.isArray(schema.allOf) && schema.allOf.length === 1 && isObject(schema.allOf[0])) {
    const { allOf, ...rest } = schema
    return loosen({ ...rest, ...schema.allOf[0] }, depth + 1)
  }
  const out: Body = {}
  for (const [key, value] of Object.entries(schema)) {
    if (LOOSE_KEYWORDS.has(key)) continue
    if (key === 'format' && !['date-time', 'date', 'time'].includes(value as string)) continue
    // Values of these are data, not schemas.
    if (key === 'enum' || key === 'const' || key === 'required' || key === 'default' || key === 'examples') out[key] = value
    // Keys of these maps are names, not keywords (a property may be called "pattern").
    else if ((key === 'properties' || key === '$defs' || key === 'definitions') && isObject(value)) {
      out[key] = Object.fromEntries(Object.entries(value).map(([k, v]) => [k, loosen(v, depth + 1)]))
    } else out[key] = loosen(value, depth + 1)
  }
  // A schema that allows any value (`{}`, or only a description, as MCP tools often send) cannot
  // be a grammar: any JSON scalar is the nearest it can enforce.
  if (!['type', 'enum', 'const', 'anyOf', 'oneOf', '$ref', 'allOf'].some(k => k in out)) out.type = ['string', 'number', 'boolean', 'null']
  return out
}

/** The checker's message names `response_format`; a tool's refusal names the tool's own parameter. */
function checkParameters (schema: JsonSchema, strict: boolean, param: string): JsonSchema {
  const rename = (err: unknown): never => {
    if (err instanceof BadRequestError) {
      throw new BadRequestError(`${param}: ${err.message.replace(/^response_format: /, '')}`, param, err.code)
    }
    throw err
  }
  try {
    return checkJsonSchema(schema)
  } catch (err) {
    // A non-strict tool promises no exact validation (as with OpenAI); its grammar enforces what it can.
    if (strict || !(err instanceof BadRequestError) || err.code !== 'unsupported_parameter') rename(err)
  }
  try {
    return checkJsonSchema(loosen(schema))
  } catch (err) {
    return rename(err)
  }
}

const EMPTY_PARAMETERS: JsonSchema = { type: 'object', properties: {} }

function parseFunction (raw: unknown, param: string, legacy: boolean): ToolDefinition {
  if (!isObject(raw)) throw new BadRequestError(`${param} must be an object`, param)
  const name = raw.name
  if (typeof name !== 'string' || !FUNCTION_NAME.test(name)) {
    throw new BadRequestError(`${param}.name must be 1-64 letters, digits, '_' or '-'`, `${param}.name`)
  }
  const description = raw.description
  if (present(raw, 'description')) {
    if (typeof description !== 'string') throw new BadRequestError(`${param}.description must be a string`, `${param}.description`)
    if (description.length > REQUEST_LIMITS.maxToolDescriptionChars) {
      throw new BadRequestError(`${param}.description is longer than ${REQUEST_LIMITS.maxToolDescriptionChars} characters`, `${param}.description`)
    }
  }
  const strict = !legacy && raw.strict === true
  if (!legacy && present(raw, 'strict') && typeof raw.strict !== 'boolean') throw new BadRequestError(`${param}.strict must be a boolean`, `${param}.strict`)
  const parametersParam = `${param}.parameters`
  let parameters = EMPTY_PARAMETERS
  if (present(raw, 'parameters')) {
    if (!isObject(raw.parameters)) throw new BadRequestError(`${parametersParam} must be a JSON schema object`, parametersParam)
    // Function arguments are a JSON object; an empty schema is OpenAI's "no arguments".
    parameters = Object.keys(raw.parameters).length === 0 ? EMPTY_PARAMETERS : raw.parameters
    if (parameters.type !== 'object') throw new BadRequestError(`${parametersParam}.type must be "object"`, parametersParam)
  }
  // An object schema without properties would let the grammar write any object; no arguments is meant.
  const forGrammar = parameters.properties === undefined ? { ...parameters, properties: {} } : parameters
  const grammarParameters = checkParameters(forGrammar, strict, parametersParam)
  return { name, ...(typeof description === 'string' && description.length > 0 ? { description } : {}), parameters, grammarParameters, strict }
}

function parseToolList (body: Body): ToolDefinition[] | undefined {
  const fromTools = present(body, 'tools')
  const fromFunctions = present(body, 'functions')
  if (fromTools && fromFunctions) throw new BadRequestError('Use tools or the legacy functions, not both', 'functions')
  if (!fromTools && !fromFunctions) return undefined
  const key = fromTools ? 'tools' : 'functions'
  const list = body[key]
  if (!Array.isArray(list)) throw new BadRequestError(`${key} must be an array`, key)
  // Before anything is walked: the count bounds the work.
  if (list.length > REQUEST_LIMITS.maxTools) throw new BadRequestError(`${key} takes at most ${REQUEST_LIMITS.maxTools} tools`, key)
  if (list.length === 0) return undefined
  const tools = list.map((item: unknown, i): ToolDefinition => {
    const param = `${key}[${i}]`
    if (!fromTools) return parseFunction(item, param, true)
    if (!isObject(item)) throw new BadRequestError(`${param} must be an object`, param)
    if (item.type !== 'function') {
      throw new BadRequestError(`${param}.type '${String(item.type).slice(0, 32)}' is not supported; only "function"`, `${param}.type`, 'unsupported_parameter')
    }
    return parseFunction(item.function, `${param}.function`, false)
  })
  const seen = new Set<string>()
  for (const [i, tool] of tools.entries()) {
    if (seen.has(tool.name)) throw new BadRequestError(`${key}[${i}]: the function name '${tool.name}' is used twice`, key)
    seen.add(tool.name)
  }
  return tools
}

function parseChoice (body: Body, tools: ToolDefinition[] | undefined): ToolChoice | undefined {
  const legacy = present(body, 'function_call')
  if (legacy && present(body, 'tool_choice')) throw new BadRequestError('Use tool_choice or the legacy function_call, not both', 'function_call')
  const key = legacy ? 'function_call' : 'tool_choice'
  if (!present(body, key)) return tools === undefined ? undefined : { type: 'auto' }
  const raw = body[key]
  let choice: ToolChoice
  if (raw === 'none' || raw === 'auto' || (raw === 'required' && !legacy)) choice = { type: raw }
  else if (isObject(raw)) {
    const name = legacy ? raw.name : (raw.type === 'function' && isObject(raw.function) ? raw.function.name : undefined)
    if (typeof name !== 'string') {
      throw new BadRequestError(legacy
        ? 'function_call must be "none", "auto" or {"name": "..."}'
        : 'tool_choice must be "none", "auto", "required" or {"type": "function", "function": {"name": "..."}}', key)
    }
    choice = { type: 'function', name }
  } else {
    throw new BadRequestError(legacy ? 'function_call must be "none", "auto" or {"name": "..."}' : 'tool_choice must be "none", "auto", "required" or {"type": "function", "function": {"name": "..."}}', key)
  }
  if (tools === undefined) {
    // OpenAI allows "none" without tools; anything else asks for tools that are not there.
    if (choice.type === 'none') return undefined
    throw new BadRequestError(`${key} needs ${legacy ? 'functions' : 'tools'}`, key)
  }
  if (choice.type === 'function' && !tools.some(t => t.name === choice.name)) {
    throw new BadRequestError(`${key} names '${choice.name.slice(0, 64)}', which is not among the ${legacy ? 'functions' : 'tools'}`, key)
  }
  return choice
}

/** The tool fields of a chat request; all absent when it has no tools. */
export function parseToolFields (body: Body): { tools?: ToolDefinition[], toolChoice?: ToolChoice, parallelToolCalls?: boolean, legacyFunctions?: true } {
  const parallel = body.parallel_tool_calls
  if (present(body, 'parallel_tool_calls') && typeof parallel !== 'boolean') throw new BadRequestError('parallel_tool_calls must be a boolean', 'parallel_tool_calls')
  const tools = parseToolList(body)
  const toolChoice = parseChoice(body, tools)
  if (tools === undefined) return {}
  // Legacy function calling makes one call at a time.
  if (present(body, 'functions')) return { tools, toolChoice, parallelToolCalls: false, legacyFunctions: true }
  return { tools, toolChoice, parallelToolCalls: parallel !== false }
}

/** An assistant message's `tool_calls` (or legacy `function_call`), validated; undefined when none. */
export function parseMessageToolCalls (msg: Body, index: number): ChatCompletionMessageToolCall[] | undefined {
  const param = `messages[${index}].tool_calls`
  if (present(msg, 'function_call')) {
    const fc = msg.function_call
    if (!isObject(fc) || typeof fc.name !== 'string' || typeof fc.arguments !== 'string') {
      throw new BadRequestError(`messages[${index}].function_call must be {"name": string, "arguments": string}`, `messages[${index}].function_call`)
    }
    return [{ id: `call_legacy_${index}`, type: 'function', function: { name: fc.name, arguments: fc.arguments } }]
  }
  if (!present(msg, 'tool_calls')) return undefined
  const calls = msg.tool_calls
  if (!Array.isArray(calls)) throw new BadRequestError(`${param} must be an array`, param)
  if (calls.length > REQUEST_LIMITS.maxTools) throw new BadRequestError(`${param} holds more than ${REQUEST_LIMITS.maxTools} calls`, param)
  if (calls.length === 0) return undefined
  return calls.map((call: unknown, j): ChatCompletionMessageToolCall => {
    const at = `${param}[${j}]`
    if (!isObject(call) || typeof call.id !== 'string' || !isObject(call.function) ||
      typeof call.function.name !== 'string' || typeof call.function.arguments !== 'string') {
      throw new BadRequestError(`${at} must be {"id": string, "type": "function", "function": {"name": string, "arguments": string}}`, at)
    }
    if (call.type !== undefined && call.type !== 'function') throw new BadRequestError(`${at}.type must be "function"`, `${at}.type`)
    return { id: call.id, type: 'function', function: { name: call.function.name, arguments: call.function.arguments } }
  })
}

/**
 * Checks that every tool result answers a call of an earlier assistant message, as OpenAI
 * requires: a result with nothing to attach to cannot be rendered by a chat template.
 */
export function checkToolTurns (messages: NormalizedMessage[]): void {
  let open = new Set<string>()
  let names = new Set<string>()
  messages.forEach((m, i) => {
    if (m.role === 'assistant') {
      open = new Set(m.toolCalls?.map(c => c.id) ?? [])
      names = new Set(m.toolCalls?.map(c => c.function.name) ?? [])
    } else if (m.role === 'tool') {
      const known = m.toolCallId !== undefined ? open.has(m.toolCallId) : (m.name !== undefined && names.has(m.name))
      if (!known) {
        throw new BadRequestError(`messages[${i}]: a tool message must answer a tool call of the assistant message before it`, `messages[${i}]`)
      }
    } else {
      open = new Set()
      names = new Set()
    }
  })
}
