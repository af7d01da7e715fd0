/**
 * Fuzz: `response_format` schemas. Random schemas built from JSON Schema's keywords (the
 * supported ones and the refused ones, well- and ill-formed) and hostile JSON values: each is
 * either refused with a `BadRequestError` naming `response_format`, or accepted and then turned
 * into a grammar by node-llama-cpp (the checks let through nothing it cannot build), with the
 * grammar's integers kept safe.
 *
 *   node --import tsx --test test/fuzz/response-format.test.ts   (FUZZ_SEED=<n> replays)
 */
import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import fc from 'fast-check'
import { getLlama, type Llama } from 'node-llama-cpp'
import { BadRequestError } from '../../src/errors.js'
import { grammarFor } from '../../src/node/engines/json-grammar.js'
import { parseResponseFormat, type ResponseFormat } from '../../src/node/engines/response-format.js'
import { check, checkAsync, runs } from '../support/fuzz-harness.js'
import { hostileJsonValue } from '../support/fuzz-arbitraries.js'

const small = fc.integer({ min: -2, max: 6 })
const primitive = fc.oneof(fc.string({ maxLength: 6 }), fc.integer(), fc.boolean(), fc.constant(null))
const typeName = fc.constantFrom('object', 'array', 'string', 'number', 'integer', 'boolean', 'null', 'thing')

const schema: fc.Arbitrary<unknown> = fc.letrec<{ node: unknown }>(tie => ({
  node: fc.oneof(
    { depthSize: 'small', withCrossShrink: true },
    fc.record({ type: fc.oneof(typeName, fc.uniqueArray(typeName, { minLength: 1, maxLength: 3 })) }),
    fc.record({ enum: fc.array(primitive, { maxLength: 4 }), type: fc.constantFrom('string', 'integer') }, { requiredKeys: ['enum'] }),
    fc.record({ const: primitive }),
    fc.record({
      type: fc.constant('object'),
      properties: fc.dictionary(fc.constantFrom('a', 'b', 'c', 'd e', '__proto__', '"q"'), tie('node'), { maxKeys: 3 }),
      required: fc.array(fc.constantFrom('a', 'b', 'z'), { maxLength: 3 }),
      additionalProperties: fc.oneof(fc.boolean(), tie('node'))
    }, { requiredKeys: ['type'] }),
    fc.record({
      type: fc.constant('array'),
      items: tie('node'),
      prefixItems: fc.array(tie('node'), { maxLength: 2 }),
      minItems: small,
      maxItems: small
    }, { requiredKeys: ['type'] }),
    fc.record({ type: fc.constant('string'), minLength: small, maxLength: small, format: fc.constantFrom('date', 'time', 'date-time', 'email'), pattern: fc.constant('a+') }, { requiredKeys: ['type'] }),
    fc.record({ type: fc.constant('integer'), minimum: fc.constantFrom(0, -Number.MAX_SAFE_INTEGER), maximum: fc.constantFrom(10, Number.MAX_SAFE_INTEGER) }, { requiredKeys: ['type'] }),
    fc.record({ anyOf: fc.array(tie('node'), { maxLength: 3 }) }),
    fc.record({ oneOf: fc.array(tie('node'), { maxLength: 3 }) }),
    fc.record({ $ref: fc.constantFrom('#/$defs/a', '#/$defs/b', '#/definitions/a', '#', 'http://x') }),
    fc.record({ allOf: fc.array(tie('node'), { maxLength: 2 }) }),
    fc.constantFrom({}, true, false, null, { description: 'only a note' })
  )
})).node

/** A root schema, sometimes with $defs (which may refer to each other or themselves). */
const rootSchema = fc.record({
  root: schema,
  defs: fc.option(fc.dictionary(fc.constantFrom('a', 'b', 'bad name'), schema, { maxKeys: 2 }))
}).map(({ root, defs }) => (defs !== null && root !== null && typeof root === 'object' && !Array.isArray(root)) ? { ...root, $defs: defs } : root)

const format = fc.oneof(
  rootSchema.map(s => ({ type: 'json_schema', json_schema: { name: 'fuzz', schema: s, strict: true } })),
  fc.record({ type: fc.constantFrom('json_schema', 'json_object', 'text', 'yaml'), json_schema: fc.oneof(hostileJsonValue, fc.record({ name: fc.string({ maxLength: 70 }), schema: hostileJsonValue })) }, { requiredKeys: [] }),
  hostileJsonValue
)

/** Parses, asserting that a refusal is the typed one. */
function parse (raw: unknown): ResponseFormat | undefined | 'refused' {
  try {
    return parseResponseFormat(raw)
  } catch (err) {
    assert.ok(err instanceof BadRequestError, `not a BadRequestError: ${String(err)}`)
    assert.equal(err.param, 'response_format')
    assert.equal(err.status, 400)
    assert.ok(['invalid_request', 'unsupported_parameter'].includes(err.code), err.code)
    return 'refused'
  }
}

describe('fuzz: response_format', () => {
  let llama: Llama
  before(async () => { llama = await getLlama({ gpu: false, maxThreads: 1, build: 'never' }) })
  after(async () => { await llama?.dispose() })

  it('refuses with a typed 400 or accepts, for any value', () => {
    check('parseResponseFormat', format, runs(3000), raw => { parse(raw) })
  })

  it('every accepted schema becomes a grammar whose integers are safe', async () => {
    let accepted = 0
    await checkAsync('grammarFor', rootSchema, runs(300), async s => {
      const f = parse({ type: 'json_schema', json_schema: { name: 'fuzz', schema: s } })
      if (f === undefined || f === 'refused') return
      accepted++
      for (const use of ['chat', 'completion'] as const) {
        const grammar = await grammarFor(llama, f, use)
        assert.doesNotMatch(grammar.grammar, /integer-number-rule ::= .*[eE]/)
        assert.doesNotMatch(grammar.grammar, /\{0,15\}\)\)?\?$/m, 'no 16-digit exponent is left')
      }
    })
    console.log(`# accepted ${accepted}`)
    assert.ok(accepted > 20, `only ${accepted} schemas were accepted: the generator is too hostile to test the grammar side`)
  })
})
