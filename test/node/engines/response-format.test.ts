import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import { BadRequestError } from '../../../src/errors.js'
import { REQUEST_LIMITS } from '../../../src/node/engines/constants.js'
import { fixNumberRules } from '../../../src/node/engines/json-grammar.js'
import { checkJsonSchema, parseResponseFormat, upstreamChatFormat, upstreamSchema } from '../../../src/node/engines/response-format.js'

function refused (schema: unknown, code: string, pattern: RegExp): void {
  assert.throws(() => parseResponseFormat({ type: 'json_schema', json_schema: { name: 'x', schema } }), (err: unknown) => {
    assert.ok(err instanceof BadRequestError, String(err))
    assert.equal(err.param, 'response_format')
    assert.equal(err.code, code)
    assert.equal(err.type, 'invalid_request_error')
    assert.match(err.message, pattern)
    return true
  })
}

/** A schema nested `depth` levels through object properties. */
function nested (depth: number): Record<string, unknown> {
  let s: Record<string, unknown> = { type: 'string' }
  for (let i = 0; i < depth; i++) s = { type: 'object', properties: { a: s }, required: ['a'], additionalProperties: false }
  return s
}

const PERSON = {
  type: 'object',
  title: 'Person',
  properties: {
    color: { type: 'string', enum: ['red', 'green'], description: 'a color' },
    count: { type: 'integer' },
    tags: { type: 'array', items: { type: 'string', maxLength: 8 }, maxItems: 3 },
    nick: { type: ['string', 'null'] },
    pet: { anyOf: [{ $ref: '#/$defs/pet' }, { type: 'null' }] },
    when: { type: 'string', format: 'date' },
    pair: { type: 'array', prefixItems: [{ type: 'number' }, { const: 'x' }] }
  },
  required: ['color', 'count', 'tags', 'nick', 'pet', 'when', 'pair'],
  additionalProperties: false,
  $defs: { pet: { type: 'object', properties: { name: { type: 'string' } }, required: ['name'], additionalProperties: false } }
}

describe('parseResponseFormat', () => {
  it('takes text (as nothing), json_object and json_schema', () => {
    assert.equal(parseResponseFormat(undefined), undefined)
    assert.equal(parseResponseFormat(null), undefined)
    assert.equal(parseResponseFormat({ type: 'text' }), undefined)
    assert.deepEqual(parseResponseFormat({ type: 'json_object' }), { type: 'json_object' })
    const f = parseResponseFormat({ type: 'json_schema', json_schema: { name: 'person', schema: PERSON, strict: true } })
    assert.ok(f?.type === 'json_schema')
    assert.equal(f.name, 'person')
    assert.equal(f.strict, true)
    assert.equal(f.schema, PERSON, 'the schema as given is kept for llama-server')
  })

  it("rewrites the schema into node-llama-cpp's dialect", () => {
    assert.deepEqual(checkJsonSchema(PERSON), {
      type: 'object',
      properties: {
        color: { enum: ['red', 'green'] },
        count: { type: 'integer' },
        tags: { type: 'array', items: { type: 'string', maxLength: 8 }, maxItems: 3 },
        nick: { oneOf: [{ type: 'string' }, { type: 'null' }] },
        pet: { oneOf: [{ $ref: '#/$defs/pet' }, { type: 'null' }] },
        when: { type: 'string', format: 'date' },
        pair: { type: 'array', prefixItems: [{ type: 'number' }, { const: 'x' }], minItems: 2, maxItems: 2 }
      },
      additionalProperties: false,
      $defs: { pet: { type: 'object', properties: { name: { type: 'string' } }, additionalProperties: false } }
    })
    // `definitions` (older drafts, zod-to-json-schema) becomes $defs.
    assert.deepEqual(checkJsonSchema({ $ref: '#/definitions/a', definitions: { a: { type: 'boolean' } } }), { $ref: '#/$defs/a', $defs: { a: { type: 'boolean' } } })
  })

  it('refuses malformed formats with the parameter named', () => {
    assert.throws(() => parseResponseFormat('json'), (e: BadRequestError) => e.param === 'response_format')
    assert.throws(() => parseResponseFormat({ type: 'yaml' }), /"text", "json_object" or "json_schema"/)
    assert.throws(() => parseResponseFormat({ type: 'json_schema' }), /json_schema must be an object/)
    assert.throws(() => parseResponseFormat({ type: 'json_schema', json_schema: { schema: PERSON } }), /name/)
    assert.throws(() => parseResponseFormat({ type: 'json_schema', json_schema: { name: 'a b', schema: PERSON } }), /name/)
    assert.throws(() => parseResponseFormat({ type: 'json_schema', json_schema: { name: 'x' } }), /schema is required/)
    assert.throws(() => parseResponseFormat({ type: 'json_schema', json_schema: { name: 'x', schema: PERSON, strict: 'yes' } }), /strict/)
    refused({ type: 'object', properties: { a: { type: 'string' } }, required: ['b'] }, 'invalid_request', /required names 'b'/)
    refused({ type: 'thing' }, 'invalid_request', /type must be one of/)
    refused({ type: 'array', items: { type: 'string' }, maxItems: 10_000 }, 'invalid_request', /maxItems must be an integer from 0 to 1000/)
    refused({ type: 'string', minLength: 5, maxLength: 2 }, 'invalid_request', /minLength is greater/)
    refused({ $ref: '#/$defs/missing' }, 'invalid_request', /does not define/)
  })

  it('refuses what a grammar cannot enforce, naming the keyword', () => {
    refused({ type: 'string', pattern: '^a+$' }, 'unsupported_parameter', /schema\.pattern is not supported/)
    refused({ type: 'string', format: 'email' }, 'unsupported_parameter', /format 'email'/)
    refused({ type: 'integer', minimum: 1 }, 'unsupported_parameter', /minimum is not supported: integer bounds narrower/)
    refused({ type: 'number', maximum: 1e300 }, 'unsupported_parameter', /maximum is not supported: numeric bounds/)
    // zod's .int() bounds hold for every integer the grammar writes: accepted.
    assert.deepEqual(checkJsonSchema({ type: 'integer', minimum: -Number.MAX_SAFE_INTEGER, maximum: Number.MAX_SAFE_INTEGER }), { type: 'integer' })
    refused({ allOf: [{ type: 'object' }] }, 'unsupported_parameter', /allOf/)
    refused({ type: 'object', properties: { a: {} } }, 'unsupported_parameter', /schema\.properties\.a must declare type/)
    refused({ type: 'object', properties: { a: true } }, 'unsupported_parameter', /boolean schemas/)
    refused({ type: 'object', minProperties: 1 }, 'unsupported_parameter', /minProperties/)
    refused({ type: 'object', properties: { a: { type: 'string', nullable: true } } }, 'unsupported_parameter', /nullable/)
    refused({ $ref: 'https://example.com/s.json' }, 'unsupported_parameter', /\$ref must point into/)
    refused({ type: 'array', prefixItems: [{ type: 'string' }], items: { type: 'string' } }, 'unsupported_parameter', /prefixItems cannot be combined/)
    refused({ type: 'object', properties: { a: { type: 'object', $defs: { x: { type: 'string' } } } } }, 'unsupported_parameter', /only at the schema's root/)
    // Found by the fuzzer: a definition that is only a $ref to itself (or round a chain) defines
    // no value; llama.cpp cannot parse its grammar (`a ::= a`). Recursion through content stays fine.
    refused({ $ref: '#/definitions/a', $defs: { a: { $ref: '#/$defs/a' } } }, 'unsupported_parameter', /\$defs\.a refers through \$ref only to itself/)
    refused({ $ref: '#/$defs/a', $defs: { a: { $ref: '#/$defs/b' }, b: { $ref: '#/$defs/a' } } }, 'unsupported_parameter', /refers through \$ref only to itself/)
    assert.doesNotThrow(() => checkJsonSchema({ $ref: '#/$defs/n', $defs: { n: { type: 'object', properties: { next: { anyOf: [{ $ref: '#/$defs/n' }, { type: 'null' }] } } } } }))
  })

  it('refuses a deeply nested or huge schema quickly, before any grammar is built', () => {
    assert.doesNotThrow(() => checkJsonSchema(nested(REQUEST_LIMITS.maxSchemaDepth)))
    // 100,000 levels: JSON.parse builds it; the check stops at the limit instead of recursing.
    const deep = JSON.parse('{"type":"object","properties":{"a":'.repeat(100_000) + '{"type":"string"}' + '}}'.repeat(100_000))
    let started = performance.now()
    refused(deep, 'invalid_request', /nests deeper than 32 levels/)
    assert.ok(performance.now() - started < 1000)

    const wide = { type: 'object', properties: Object.fromEntries(Array.from({ length: 100_000 }, (_, i) => [`p${i}`, { type: 'string' }])) }
    started = performance.now()
    refused(wide, 'invalid_request', /too large/)
    assert.ok(performance.now() - started < 1000)
    refused({ enum: Array.from({ length: REQUEST_LIMITS.maxSchemaNodes + 1 }, (_, i) => i) }, 'invalid_request', /too large/)
    refused({ enum: ['x'.repeat(REQUEST_LIMITS.maxSchemaChars + 1)] }, 'invalid_request', /too long/)
  })
})

describe('upstream (llama-server) forms', () => {
  it('sends json_object as any object and json_schema as given', () => {
    const obj = parseResponseFormat({ type: 'json_object' })
    assert.ok(obj !== undefined)
    assert.deepEqual(upstreamChatFormat(obj), { type: 'json_object', schema: { type: 'object' } })
    assert.deepEqual(upstreamSchema(obj), { type: 'object' })
    const f = parseResponseFormat({ type: 'json_schema', json_schema: { name: 'p', schema: PERSON } })
    assert.ok(f !== undefined)
    assert.deepEqual(upstreamChatFormat(f), { type: 'json_schema', json_schema: { name: 'p', schema: PERSON, strict: false } })
    assert.equal(upstreamChatFormat(undefined), undefined)
  })
})

describe('fixNumberRules', () => {
  it('keeps integers safe (15 digits, no exponent) and fraction exponents to 2 digits', () => {
    const gbnf = [
      'root ::= "{" integer-number-rule "}"',
      'integer-number-rule ::= "-"? ("0" | [1-9] [0-9]{0,15}) ([eE] [-+]? ("0" | [1-9] [0-9]{0,15}))?',
      'fractional-number-rule ::= "-"? ("0" | [1-9] [0-9]{0,15}) ("." [0-9]{1,16})? ([eE] [-+]? ("0" | [1-9] [0-9]{0,15}))?'
    ].join('\n')
    assert.deepEqual(fixNumberRules(gbnf).split('\n'), [
      'root ::= "{" integer-number-rule "}"',
      'integer-number-rule ::= "-"? ("0" | [1-9] [0-9]{0,14})',
      'fractional-number-rule ::= "-"? ("0" | [1-9] [0-9]{0,15}) ("." [0-9]{1,16})? ([eE] [-+]? [0-9]{1,2})?'
    ])
    assert.throws(() => fixNumberRules('integer-number-rule ::= [0-9]+'), /number rule changed/)
  })
})
