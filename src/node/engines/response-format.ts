/**
 * `response_format` (structured output): validation of the request field and of its JSON
 * schema against the subset both local engines can enforce with a grammar, and the schema
 * rewritten into node-llama-cpp's dialect. Pure functions; every refusal is a
 * `BadRequestError` with `param: 'response_format'`.
 *
 * The subset is OpenAI's strict-mode one, less what a grammar cannot enforce:
 * - objects: `properties`, `required`, `additionalProperties`
 * - arrays: `items` with `minItems`/`maxItems`, or `prefixItems` alone (a tuple)
 * - strings: `minLength`/`maxLength`, `format` date-time, date or time
 * - numbers, integers (bounds only when wider than ±`MAX_INTEGER`, as zod's `.int()` sends),
 *   booleans, null; `enum`, `const`; `anyOf`/`oneOf`; a `type` list
 * - `$defs` (or `definitions`) at the root and `$ref` to them, recursion included
 * - annotations (`title`, `description`, `default`, `examples`, ...) are accepted and ignored.
 * Refused, because the output could then break the schema: `pattern`, other string formats,
 * numeric bounds (`minimum`, `maximum`, `multipleOf`...), `minProperties`/`maxProperties`,
 * `allOf`, `not`, conditionals,
 * `patternProperties`, `uniqueItems`, `contains`, and the empty schema `{}`.
 *
 * node-llama-cpp always writes every declared property (it ignores `required`); llama-server
 * honours `required`. Either way the output validates against the schema.
 */
import { BadRequestError } from '../../errors.js'
import { REQUEST_LIMITS } from './constants.js'

/** A JSON schema as the request gave it (parsed JSON). */
export type JsonSchema = Record<string, unknown>

export type ResponseFormat =
  | { type: 'json_object' }
  | {
    type: 'json_schema'
    name: string
    /** The schema as given: what llama-server receives and what clients validate against. */
    schema: JsonSchema
    strict: boolean
    /** The same schema in node-llama-cpp's dialect (`anyOf` as `oneOf`, `$defs` at the root, no annotations). */
    grammarSchema: JsonSchema
  }

const PARAM = 'response_format'

function refuse (message: string, code = 'invalid_request'): never {
  throw new BadRequestError(`response_format: ${message}`, PARAM, code)
}

function unsupported (message: string): never {
  refuse(message, 'unsupported_parameter')
}

function isObject (v: unknown): v is Record<string, unknown> {
  return v !== null && typeof v === 'object' && !Array.isArray(v)
}

/** Keywords that describe but do not constrain: accepted anywhere, left out of the grammar. */
const ANNOTATIONS = new Set(['title', 'description', 'default', 'examples', '$comment', '$schema', '$id', 'deprecated', 'readOnly', 'writeOnly'])

const TYPES = new Set(['object', 'array', 'string', 'number', 'integer', 'boolean', 'null'])

/** The keywords each type allows besides `type` and annotations. */
const TYPE_KEYWORDS: Record<string, Set<string>> = {
  object: new Set(['properties', 'required', 'additionalProperties']),
  array: new Set(['items', 'prefixItems', 'minItems', 'maxItems']),
  string: new Set(['minLength', 'maxLength', 'format']),
  number: new Set(),
  integer: new Set(['minimum', 'maximum', 'exclusiveMinimum', 'exclusiveMaximum']),
  boolean: new Set(),
  null: new Set()
}

/** String formats node-llama-cpp's grammar enforces; llama-server's enforces these too. */
const STRING_FORMATS = new Set(['date-time', 'date', 'time'])

/** Why a keyword is refused, for the ones clients commonly send. */
const REFUSED_WHY: Record<string, string> = {
  pattern: 'regular expressions cannot be enforced on both engines',
  minimum: 'numeric bounds cannot be enforced by the grammar',
  maximum: 'numeric bounds cannot be enforced by the grammar',
  exclusiveMinimum: 'numeric bounds cannot be enforced by the grammar',
  exclusiveMaximum: 'numeric bounds cannot be enforced by the grammar',
  multipleOf: 'numeric bounds cannot be enforced by the grammar',
  allOf: 'combine the schemas into one object instead',
  not: 'negation cannot be enforced by the grammar',
  if: 'conditional schemas cannot be enforced by the grammar',
  patternProperties: 'regular expressions cannot be enforced on both engines',
  uniqueItems: 'uniqueness cannot be enforced by the grammar',
  contains: 'contains cannot be enforced by the grammar',
  nullable: 'use anyOf with {"type": "null"} or a type list instead'
}

/** The largest integer the grammars write (15 digits): every such integer is a safe JavaScript integer. */
export const MAX_INTEGER = 999_999_999_999_999

const DEF_NAME = /^[A-Za-z0-9_.-]{1,64}$/
const SCHEMA_NAME = /^[A-Za-z0-9_-]{1,64}$/

/** The walk's state: its budget and the definitions `$ref` may point to. */
interface Walk {
  nodes: number
  chars: number
  defs: Set<string>
}

function spend (w: Walk, nodes: number, chars = 0): void {
  w.nodes += nodes
  w.chars += chars
  if (w.nodes > REQUEST_LIMITS.maxSchemaNodes) refuse(`the schema is too large (more than ${REQUEST_LIMITS.maxSchemaNodes} schemas, properties and enum values)`)
  if (w.chars > REQUEST_LIMITS.maxSchemaChars) refuse(`the schema's names and values are too long (more than ${REQUEST_LIMITS.maxSchemaChars} characters)`)
}

function bound (s: JsonSchema, key: string, at: string): number | undefined {
  const v = s[key]
  if (v === undefined) return undefined
  if (typeof v !== 'number' || !Number.isInteger(v) || v < 0 || v > REQUEST_LIMITS.maxSchemaRepeat) {
    refuse(`${at}.${key} must be an integer from 0 to ${REQUEST_LIMITS.maxSchemaRepeat}`)
  }
  return v
}

function boundPair (s: JsonSchema, min: string, max: string, at: string, out: JsonSchema): void {
  const lo = bound(s, min, at)
  const hi = bound(s, max, at)
  if (lo !== undefined && hi !== undefined && lo > hi) refuse(`${at}.${min} is greater than ${at}.${max}`)
  if (lo !== undefined) out[min] = lo
  if (hi !== undefined) out[max] = hi
}

function primitive (v: unknown): boolean {
  return v === null || typeof v === 'string' || typeof v === 'boolean' || (typeof v === 'number' && Number.isFinite(v))
}

function checkKeywords (s: JsonSchema, allowed: Set<string>, at: string): void {
  for (const key of Object.keys(s)) {
    if (allowed.has(key) || ANNOTATIONS.has(key)) continue
    const why = REFUSED_WHY[key]
    if (why !== undefined) unsupported(`${at}.${key} is not supported: ${why}`)
    unsupported(`${at}.${key} is not a supported JSON schema keyword here`)
  }
}

/** Validates one schema node and returns it in node-llama-cpp's dialect. */
function walk (raw: unknown, at: string, depth: number, w: Walk): JsonSchema {
  if (depth > REQUEST_LIMITS.maxSchemaDepth) refuse(`the schema nests deeper than ${REQUEST_LIMITS.maxSchemaDepth} levels`)
  if (!isObject(raw)) unsupported(`${at} must be a schema object (boolean schemas are not supported)`)
  spend(w, 1)
  const s = raw
  if (depth > 0 && (s.$defs !== undefined || s.definitions !== undefined)) unsupported(`${at}: $defs are supported only at the schema's root`)
  // Keywords known to be out of reach are named first, whatever else the node holds.
  const integer = s.type === 'integer' || (Array.isArray(s.type) && s.type.includes('integer'))
  const known = Object.keys(s).find(key => REFUSED_WHY[key] !== undefined && !(integer && TYPE_KEYWORDS.integer.has(key)))
  if (known !== undefined) unsupported(`${at}.${known} is not supported: ${REFUSED_WHY[known]}`)
  const rootKeys = depth === 0 ? ['$defs', 'definitions'] : []

  if (s.$ref !== undefined) {
    checkKeywords(s, new Set(['$ref', ...rootKeys]), at)
    const ref = s.$ref
    const m = typeof ref === 'string' ? /^#\/(?:\$defs|definitions)\/(.+)$/.exec(ref) : null
    if (m === null) unsupported(`${at}.$ref must point into the root's $defs ("#/$defs/name")`)
    if (!w.defs.has(m[1])) refuse(`${at}.$ref points to '${m[1]}', which $defs does not define`)
    return { $ref: `#/$defs/${m[1]}` }
  }

  for (const key of ['anyOf', 'oneOf'] as const) {
    if (s[key] === undefined) continue
    checkKeywords(s, new Set([key, ...rootKeys]), at)
    const list = s[key]
    if (!Array.isArray(list) || list.length === 0) refuse(`${at}.${key} must be a non-empty array of schemas`)
    return { oneOf: list.map((sub, i) => walk(sub, `${at}.${key}[${i}]`, depth + 1, w)) }
  }

  if (s.enum !== undefined || s.const !== undefined) {
    // A `type` beside them only repeats what the values say.
    checkKeywords(s, new Set(['enum', 'const', 'type', ...rootKeys]), at)
    if (s.const !== undefined) {
      if (s.enum !== undefined) unsupported(`${at}: use enum or const, not both`)
      if (!primitive(s.const)) unsupported(`${at}.const must be a string, number, boolean or null`)
      spend(w, 1, typeof s.const === 'string' ? s.const.length : 0)
      return { const: s.const }
    }
    const values = s.enum
    if (!Array.isArray(values) || values.length === 0) refuse(`${at}.enum must be a non-empty array`)
    if (!values.every(primitive)) unsupported(`${at}.enum values must be strings, numbers, booleans or null`)
    spend(w, values.length, values.reduce<number>((n, v) => n + (typeof v === 'string' ? v.length : 0), 0))
    return { enum: values }
  }

  const type = s.type
  if (type === undefined) {
    unsupported(`${at} must declare type, enum, const, anyOf or $ref (a schema that allows any value is not supported)`)
  }
  const types = Array.isArray(type) ? type : [type]
  if (types.length === 0 || !types.every(t => typeof t === 'string' && TYPES.has(t))) {
    refuse(`${at}.type must be one of ${[...TYPES].join(', ')}, or a list of them`)
  }
  if (new Set(types).size !== types.length) refuse(`${at}.type lists a type twice`)
  checkKeywords(s, new Set(['type', ...rootKeys, ...types.flatMap(t => [...TYPE_KEYWORDS[t as string]])]), at)
  const variants = (types as string[]).map(t => typed(s, t, at, depth, w))
  return variants.length === 1 ? variants[0] : { oneOf: variants }
}

/** One `type` of a node, with only that type's keywords. */
function typed (s: JsonSchema, type: string, at: string, depth: number, w: Walk): JsonSchema {
  const out: JsonSchema = { type }
  if (type === 'object') {
    const props = s.properties
    if (props !== undefined && !isObject(props)) refuse(`${at}.properties must be an object`)
    const names = Object.keys(props ?? {})
    spend(w, names.length, names.reduce((n, k) => n + k.length, 0))
    if (props !== undefined) {
      out.properties = Object.fromEntries(names.map(k => [k, walk(props[k], `${at}.properties.${k}`, depth + 1, w)]))
    }
    const required = s.required
    if (required !== undefined) {
      if (!Array.isArray(required) || !required.every(r => typeof r === 'string')) refuse(`${at}.required must be an array of strings`)
      const missing = required.find(r => !names.includes(r))
      if (missing !== undefined) refuse(`${at}.required names '${missing}', which properties does not define`)
    }
    const extra = s.additionalProperties
    if (typeof extra === 'boolean') out.additionalProperties = extra
    else if (extra !== undefined) out.additionalProperties = walk(extra, `${at}.additionalProperties`, depth + 1, w)
  } else if (type === 'array') {
    if (s.prefixItems !== undefined) {
      // llama-server makes prefixItems an exact tuple and ignores them beside items: only
      // the tuple is enforced alike on both engines.
      if (s.items !== undefined || s.minItems !== undefined || s.maxItems !== undefined) unsupported(`${at}.prefixItems cannot be combined with items, minItems or maxItems`)
      if (!Array.isArray(s.prefixItems) || s.prefixItems.length === 0) refuse(`${at}.prefixItems must be a non-empty array of schemas`)
      out.prefixItems = s.prefixItems.map((sub, i) => walk(sub, `${at}.prefixItems[${i}]`, depth + 1, w))
      out.minItems = out.maxItems = s.prefixItems.length
    } else {
      if (s.items !== undefined) out.items = walk(s.items, `${at}.items`, depth + 1, w)
      boundPair(s, 'minItems', 'maxItems', at, out)
    }
  } else if (type === 'integer') {
    // Integers are at most 15 digits on both grammars (see json-grammar.ts), so bounds at or
    // beyond ±(10^15 - 1) hold whatever is written: zod's `.int()` sends ±MAX_SAFE_INTEGER.
    for (const [key, sign] of [['minimum', -1], ['exclusiveMinimum', -1], ['maximum', 1], ['exclusiveMaximum', 1]] as const) {
      const v = s[key]
      if (v === undefined) continue
      if (typeof v !== 'number' || !Number.isFinite(v)) refuse(`${at}.${key} must be a number`)
      if (v * sign < MAX_INTEGER + (key.startsWith('exclusive') ? 1 : 0)) {
        unsupported(`${at}.${key} is not supported: integer bounds narrower than ±${MAX_INTEGER} cannot be enforced by the grammar`)
      }
    }
  } else if (type === 'string') {
    boundPair(s, 'minLength', 'maxLength', at, out)
    if (s.format !== undefined) {
      if (typeof s.format !== 'string' || !STRING_FORMATS.has(s.format)) {
        unsupported(`${at}.format '${String(s.format)}' is not supported; only ${[...STRING_FORMATS].join(', ')}`)
      }
      if (out.minLength !== undefined || out.maxLength !== undefined) unsupported(`${at}: a string with a format cannot also bound its length`)
      out.format = s.format
    }
  }
  return out
}

/** Validates a JSON schema for structured output; returns it in node-llama-cpp's dialect. */
export function checkJsonSchema (schema: unknown): JsonSchema {
  if (!isObject(schema)) refuse('json_schema.schema must be a JSON schema object')
  const w: Walk = { nodes: 0, chars: 0, defs: new Set() }
  const rawDefs = { ...(isObject(schema.definitions) ? schema.definitions : {}), ...(isObject(schema.$defs) ? schema.$defs : {}) }
  for (const key of ['$defs', 'definitions']) {
    if (schema[key] !== undefined && !isObject(schema[key])) refuse(`${key} must be an object of schemas`)
  }
  for (const name of Object.keys(rawDefs)) {
    if (!DEF_NAME.test(name)) unsupported(`$defs name '${name.slice(0, 64)}' must be 1-64 letters, digits, '_', '.' or '-'`)
    w.defs.add(name)
  }
  spend(w, w.defs.size)
  const defs = Object.fromEntries(Object.entries(rawDefs).map(([name, def]) => [name, walk(def, `$defs.${name}`, 1, w)]))
  const root = walk(schema, 'schema', 0, w)
  // A definition that is only a `$ref`, followed round to itself, defines nothing: its grammar
  // rule would be left-recursive (`a ::= a`), which llama.cpp refuses to parse.
  for (const name of Object.keys(defs)) {
    const seen = new Set<string>()
    let at: string | undefined = name
    while (at !== undefined && !seen.has(at)) {
      seen.add(at)
      const ref: unknown = (defs[at] as { $ref?: unknown })?.$ref
      at = typeof ref === 'string' ? ref.slice('#/$defs/'.length) : undefined
    }
    if (at !== undefined) unsupported(`$defs.${name} refers through $ref only to itself ('${at}'): it defines no value`)
  }
  return w.defs.size > 0 ? { ...root, $defs: defs } : root
}

/**
 * Parses a request's `response_format`: `undefined` when absent or `{type: "text"}`, else the
 * validated format.
 */
export function parseResponseFormat (raw: unknown): ResponseFormat | undefined {
  if (raw === undefined || raw === null) return undefined
  if (!isObject(raw)) refuse('must be an object with a type')
  if (raw.type === 'text') return undefined
  if (raw.type === 'json_object') return { type: 'json_object' }
  if (raw.type !== 'json_schema') refuse(`type must be "text", "json_object" or "json_schema", not ${JSON.stringify(raw.type) ?? 'undefined'}`)
  const spec = raw.json_schema
  if (!isObject(spec)) refuse('json_schema must be an object with a name and a schema')
  if (typeof spec.name !== 'string' || !SCHEMA_NAME.test(spec.name)) refuse('json_schema.name must be 1-64 letters, digits, "_" or "-"')
  if (spec.strict !== undefined && spec.strict !== null && typeof spec.strict !== 'boolean') refuse('json_schema.strict must be a boolean')
  if (spec.schema === undefined || spec.schema === null) refuse('json_schema.schema is required')
  const grammarSchema = checkJsonSchema(spec.schema)
  return { type: 'json_schema', name: spec.name, schema: spec.schema as JsonSchema, strict: spec.strict === true, grammarSchema }
}

/** The schema llama-server builds its grammar from: `json_object` is any object, as OpenAI's mode is. */
export function upstreamSchema (format: ResponseFormat): JsonSchema {
  return format.type === 'json_object' ? { type: 'object' } : format.schema
}

/**
 * The `response_format` forwarded to llama-server's `/v1/chat/completions` (which turns it into a
 * grammar itself); `undefined` leaves the field out.
 */
export function upstreamChatFormat (format: ResponseFormat | undefined): Record<string, unknown> | undefined {
  if (format === undefined) return undefined
  if (format.type === 'json_object') return { type: 'json_object', schema: upstreamSchema(format) }
  return { type: 'json_schema', json_schema: { name: format.name, schema: format.schema, strict: format.strict } }
}
