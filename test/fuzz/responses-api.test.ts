/**
 * Fuzz: the Responses API. The pure mapping (`parseResponsesRequest`) takes random and hostile
 * bodies and either refuses them with a `BadRequestError` naming a parameter or yields a chat
 * body of string messages; the route on a real node's API (fastify.inject, no model in the mesh)
 * answers every request with a fitting status in OpenAI's error shape, never a 500, never a
 * polluted prototype.
 *
 *   node --import tsx --test test/fuzz/responses-api.test.ts   (FUZZ_SEED=<n> replays)
 */
import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import fc from 'fast-check'
import type { FastifyInstance, InjectOptions } from 'fastify'
import { parseResponsesRequest } from '../../src/api/responses-mapping.js'
import { BadRequestError } from '../../src/errors.js'
import { startFuzzApi, type FuzzApi } from '../support/fuzz-api-node.js'
import { check, checkAsync, deadline } from '../support/fuzz-harness.js'
import { hostileJsonText, hostileJsonValue, mutated } from '../support/fuzz-arbitraries.js'

const KEY = 'sk-fuzz-responses-0123456789'
const BODY_LIMIT = 64 * 1024
const STATUSES = new Set([200, 400, 401, 403, 404, 405, 413, 415, 429, 502, 503, 504])

const model = fc.oneof(fc.constantFrom('m1', '', '__proto__', 'constructor', 'toString'), fc.string({ maxLength: 300 }))
const text = fc.oneof(fc.string(), fc.constantFrom('', '\u0000', '\u202e'))
const part = fc.record({ type: fc.constantFrom('input_text', 'output_text', 'refusal', 'input_image', 'input_file', '__proto__', 'x'), text: fc.oneof(text, hostileJsonValue), refusal: text }, { requiredKeys: ['type'] })
const item = fc.record({
  type: fc.constantFrom('message', 'function_call', 'function_call_output', 'reasoning', 'item_reference', 'constructor', undefined),
  role: fc.constantFrom('user', 'system', 'developer', 'assistant', 'tool', '', '__proto__'),
  content: fc.oneof(text, fc.array(part, { maxLength: 3 }), hostileJsonValue)
}, { requiredKeys: [] })
const format = fc.record({ type: fc.constantFrom('text', 'json_object', 'json_schema', 'yaml'), name: fc.oneof(fc.constantFrom('ok', 'a b', ''), hostileJsonValue), schema: hostileJsonValue, strict: hostileJsonValue }, { requiredKeys: ['type'] })
const body = fc.record({
  model,
  input: fc.oneof(text, fc.array(item, { maxLength: 4 }), hostileJsonValue),
  instructions: fc.oneof(text, hostileJsonValue),
  max_output_tokens: fc.oneof(fc.integer(), fc.constantFrom(1e15, 0.5, -1, '10'), hostileJsonValue),
  temperature: fc.oneof(fc.double(), hostileJsonValue),
  top_p: hostileJsonValue,
  stream: fc.oneof(fc.boolean(), hostileJsonValue),
  store: fc.oneof(fc.boolean(), hostileJsonValue),
  metadata: fc.oneof(fc.dictionary(fc.string({ maxLength: 80 }), fc.oneof(text, hostileJsonValue), { maxKeys: 20 }), hostileJsonValue),
  text: fc.oneof(fc.record({ format, verbosity: fc.constantFrom('low', 'medium', null) }, { requiredKeys: [] }), hostileJsonValue),
  tools: hostileJsonValue,
  tool_choice: fc.oneof(fc.constantFrom('auto', 'none', 'required'), hostileJsonValue),
  previous_response_id: hostileJsonValue,
  reasoning: hostileJsonValue,
  include: hostileJsonValue
}, { requiredKeys: ['model'] })

const request = fc.record({
  body: fc.oneof(
    { arbitrary: body.map(v => JSON.stringify(v)), weight: 5 },
    { arbitrary: mutated(body).map(v => JSON.stringify(v) ?? ''), weight: 3 },
    { arbitrary: hostileJsonText.map(t => t.slice(0, 3 * BODY_LIMIT)), weight: 2 }
  ),
  auth: fc.constantFrom<Record<string, string>>({ authorization: `Bearer ${KEY}` }, { authorization: `Bearer ${KEY}` }, {}, { authorization: 'Bearer wrong' }),
  type: fc.constantFrom('application/json', 'application/json; charset=utf-8', 'text/plain', undefined),
  method: fc.constantFrom('POST', 'POST', 'POST', 'GET', 'PUT')
})

describe('fuzz: the Responses API', () => {
  let api: FuzzApi | undefined
  let app: FastifyInstance
  const seen = new Map<number, number>()

  before(async () => {
    api = await startFuzzApi('fuzz-responses', KEY, BODY_LIMIT)
    app = api.app
  })

  after(async () => {
    await api?.close()
    console.log(`# fuzz responses: statuses ${JSON.stringify(Object.fromEntries([...seen].sort()))}`)
  })

  it('maps or refuses every body with a BadRequestError naming a parameter', () => {
    check('parseResponsesRequest', fc.oneof(body, mutated(body), hostileJsonValue), 1000, raw => {
      let parsed
      try {
        parsed = parseResponsesRequest(raw, { maxOutputTokens: 512 })
      } catch (err) {
        assert.ok(err instanceof BadRequestError, String(err))
        assert.equal(typeof err.param, 'string', err.message)
        assert.ok(err.message.length > 0 && err.message.length < 400, err.message.slice(0, 500))
        assert.ok(err.param!.length <= 200, err.param!)
        return
      }
      const messages = parsed.body.messages as Array<{ role: string, content: unknown }>
      assert.ok(Array.isArray(messages) && messages.length > 0)
      for (const m of messages) {
        assert.ok(['user', 'system', 'assistant'].includes(m.role), m.role)
        assert.equal(typeof m.content, 'string')
      }
      assert.equal(parsed.body.stream, true)
      assert.equal(typeof parsed.model, 'string')
    })
  })

  it('answers random requests with a fitting status in OpenAI\'s error shape, never a 500', async () => {
    await checkAsync('responses requests', request, 1000, async r => {
      const headers: Record<string, string> = { ...r.auth }
      if (r.type !== undefined) headers['content-type'] = r.type
      const req: InjectOptions = { method: r.method as InjectOptions['method'], url: '/v1/responses', headers, ...(r.method !== 'GET' ? { payload: r.body } : {}) }
      const res = await deadline(app.inject(req), 20_000, r.method)
      seen.set(res.statusCode, (seen.get(res.statusCode) ?? 0) + 1)
      assert.ok(STATUSES.has(res.statusCode), `${r.method}: ${res.statusCode} ${res.body.slice(0, 300)}`)
      // No model is served here, so nothing may succeed.
      assert.ok(res.statusCode >= 400, res.body.slice(0, 300))
      const err = JSON.parse(res.body)
      assert.deepEqual(Object.keys(err), ['error'])
      assert.deepEqual(Object.keys(err.error).sort(), ['code', 'message', 'param', 'type'])
      assert.equal(typeof err.error.message, 'string')
    })
  })

  it('still serves after the run', async () => {
    const res = await app.inject({ method: 'POST', url: '/v1/responses', headers: { authorization: `Bearer ${KEY}` }, payload: { model: 'm1', input: 'hi' } })
    assert.equal(res.statusCode, 404)
    assert.equal(JSON.parse(res.body).error.code, 'model_not_found')
  })
})
