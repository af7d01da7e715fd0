/**
 * Checks values against the OpenAI API's own JSON schemas (the subset in
 * test/fixtures/openai/schemas.json, from openai/openai-openapi). The spec is OpenAPI 3.0, so
 * `nullable: true` is rewritten to JSON Schema's `anyOf [..., null]` before Ajv sees it.
 */
import assert from 'node:assert/strict'
import { readFileSync } from 'node:fs'
import { Ajv, type ValidateFunction } from 'ajv'

const SCHEMA_ID = 'openai'

type Json = null | boolean | number | string | Json[] | { [key: string]: Json }

/** Rewrites every `{ ..., nullable: true }` as `{ anyOf: [{ ... }, { type: 'null' }] }`. */
export function convertNullable (node: Json): Json {
  if (Array.isArray(node)) return node.map(convertNullable)
  if (node === null || typeof node !== 'object') return node
  const out: Record<string, Json> = {}
  for (const [key, value] of Object.entries(node)) {
    if (key !== 'nullable') out[key] = convertNullable(value)
  }
  return node.nullable === true ? { anyOf: [out, { type: 'null' }] } : out
}

let ajv: Ajv | undefined
const validators = new Map<string, ValidateFunction>()

function load (): Ajv {
  if (ajv !== undefined) return ajv
  const raw = JSON.parse(readFileSync(new URL('../fixtures/openai/schemas.json', import.meta.url), 'utf8')) as Json
  // strict: false lets the spec's own keywords (example, x-oaiMeta, x-stainless-const) through;
  // formats such as `unixtime` are OpenAI's labels, not checkable formats.
  ajv = new Ajv({ strict: false, validateFormats: false, allErrors: true })
  ajv.addSchema(convertNullable(raw) as object, SCHEMA_ID)
  return ajv
}

/** Throws an AssertionError listing every violation when `value` does not match `schemaName`. */
export function assertMatchesOpenAISchema (schemaName: string, value: unknown): void {
  let validate = validators.get(schemaName)
  if (validate === undefined) {
    const instance = load()
    const ref = `${SCHEMA_ID}#/components/schemas/${schemaName}`
    if (instance.getSchema(ref) === undefined) throw new Error(`No OpenAI schema named '${schemaName}'`)
    validate = instance.compile({ $ref: ref })
    validators.set(schemaName, validate)
  }
  if (validate(value)) return
  const problems = (validate.errors ?? []).map(e => `${e.instancePath === '' ? '(root)' : e.instancePath} ${e.message ?? ''} ${JSON.stringify(e.params)}`)
  assert.fail(`value does not match OpenAI schema ${schemaName}:\n  ${problems.join('\n  ')}\nvalue: ${JSON.stringify(value).slice(0, 2000)}`)
}
