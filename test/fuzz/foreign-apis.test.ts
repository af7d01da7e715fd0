/**
 * Fuzz: the Ollama and Anthropic routes of a real node's API (fastify.inject) take random and
 * hostile bodies and headers, and always answer with a fitting status in their own API's error
 * shape: `{"error": "..."}` (Ollama) or `{"type":"error","error":{type,message}}` (Anthropic),
 * never a 500, never a polluted prototype.
 */
import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import fc from 'fast-check'
import type { FastifyInstance, InjectOptions } from 'fastify'
import { startFuzzApi, type FuzzApi } from '../support/fuzz-api-node.js'
import { checkAsync, deadline } from '../support/fuzz-harness.js'
import { hostileJsonText, hostileJsonValue, mutated } from '../support/fuzz-arbitraries.js'

const KEY = 'sk-fuzz-foreign-0123456789'
const BODY_LIMIT = 64 * 1024
const STATUSES = new Set([200, 400, 401, 403, 404, 405, 413, 415, 429, 502, 503, 504])

const model = fc.oneof(fc.constantFrom('m1', 'm1:latest', '', '__proto__', 'constructor', 'toString'), fc.string({ maxLength: 300 }))
const text = fc.oneof(fc.string(), fc.constantFrom('', '\u0000', '\u202e'))
const options = fc.dictionary(fc.constantFrom('temperature', 'top_p', 'seed', 'num_predict', 'stop', 'num_ctx', 'mirostat', '__proto__', 'x'), hostileJsonValue, { maxKeys: 4 })
const ollamaMsg = fc.record({ role: fc.constantFrom('user', 'system', 'assistant', 'tool', ''), content: fc.oneof(text, hostileJsonValue) }, { requiredKeys: ['role'] })
const block = fc.record({ type: fc.constantFrom('text', 'image', 'tool_use', 'tool_result', '__proto__'), text: fc.oneof(text, hostileJsonValue) }, { requiredKeys: ['type'] })
const claudeMsg = fc.record({ role: fc.constantFrom('user', 'assistant', 'system'), content: fc.oneof(text, fc.array(block, { maxLength: 3 }), hostileJsonValue) }, { requiredKeys: ['role'] })

type Api = 'ollama' | 'anthropic'
const ROUTES: Array<{ api: Api, url: string, body: fc.Arbitrary<unknown> }> = [
  { api: 'ollama', url: '/api/chat', body: fc.record({ model, messages: fc.array(ollamaMsg, { maxLength: 3 }), stream: fc.oneof(fc.boolean(), hostileJsonValue), options, format: fc.oneof(fc.constantFrom('json', '', 'yaml'), hostileJsonValue), keep_alive: fc.oneof(fc.constantFrom('5m', 0, -1, '-1s', 'forever'), hostileJsonValue), tools: hostileJsonValue }, { requiredKeys: ['model'] }) },
  { api: 'ollama', url: '/api/generate', body: fc.record({ model, prompt: fc.oneof(text, hostileJsonValue), system: text, raw: fc.oneof(fc.boolean(), hostileJsonValue), stream: fc.boolean(), options, context: hostileJsonValue, suffix: text }, { requiredKeys: ['model'] }) },
  { api: 'ollama', url: '/api/embed', body: fc.record({ model, input: fc.oneof(text, fc.array(text, { maxLength: 3 }), hostileJsonValue), truncate: hostileJsonValue, dimensions: hostileJsonValue, options }, { requiredKeys: ['model'] }) },
  { api: 'ollama', url: '/api/embeddings', body: fc.record({ model, prompt: fc.oneof(text, hostileJsonValue) }, { requiredKeys: ['model'] }) },
  { api: 'ollama', url: '/api/show', body: fc.record({ model, name: model, verbose: hostileJsonValue }, { requiredKeys: [] }) },
  { api: 'anthropic', url: '/v1/messages', body: fc.record({ model, max_tokens: fc.oneof(fc.integer(), fc.constantFrom(1e15, 0.5, -1, '10'), hostileJsonValue), messages: fc.oneof(fc.array(claudeMsg, { maxLength: 3 }), hostileJsonValue), system: fc.oneof(text, fc.array(block, { maxLength: 2 }), hostileJsonValue), stop_sequences: fc.oneof(fc.array(text, { maxLength: 3 }), hostileJsonValue), temperature: hostileJsonValue, stream: fc.oneof(fc.boolean(), hostileJsonValue), tools: hostileJsonValue, metadata: hostileJsonValue }, { requiredKeys: ['model'] }) },
  { api: 'anthropic', url: '/v1/messages/count_tokens', body: fc.record({ model, messages: fc.oneof(fc.array(claudeMsg, { maxLength: 3 }), hostileJsonValue), system: hostileJsonValue }, { requiredKeys: [] }) }
]

const request = fc.constantFrom(...ROUTES).chain(route => fc.record({
  route: fc.constant(route),
  body: fc.oneof(
    { arbitrary: route.body.map(v => JSON.stringify(v)), weight: 5 },
    { arbitrary: mutated(route.body).map(v => JSON.stringify(v) ?? ''), weight: 3 },
    { arbitrary: hostileJsonText.map(t => t.slice(0, 3 * BODY_LIMIT)), weight: 2 }
  ),
  auth: fc.constantFrom<Record<string, string>>({ authorization: `Bearer ${KEY}` }, { 'x-api-key': KEY }, {}, { 'x-api-key': 'wrong' }),
  type: fc.constantFrom('application/json', 'application/json; charset=utf-8', 'text/plain', 'application/x-www-form-urlencoded', undefined),
  method: fc.constantFrom('POST', 'POST', 'POST', 'GET', 'PUT')
}))

function assertOllamaError (body: any, where: string): void {
  assert.ok(body != null && typeof body === 'object' && !Array.isArray(body), `${where}: ${JSON.stringify(body)}`)
  assert.deepEqual(Object.keys(body), ['error'], where)
  assert.equal(typeof body.error, 'string', where)
}

function assertAnthropicError (body: any, where: string): void {
  assert.ok(body != null && typeof body === 'object' && !Array.isArray(body), `${where}: ${JSON.stringify(body)}`)
  assert.deepEqual(Object.keys(body).sort(), ['error', 'type'], where)
  assert.equal(body.type, 'error', where)
  assert.deepEqual(Object.keys(body.error).sort(), ['message', 'type'], where)
  assert.equal(typeof body.error.message, 'string', where)
  assert.match(body.error.type, /^(invalid_request_error|authentication_error|permission_error|not_found_error|request_too_large|rate_limit_error|api_error|overloaded_error|timeout_error)$/, where)
}

describe('fuzz: Ollama and Anthropic routes (fastify.inject)', () => {
  let api: FuzzApi | undefined
  let app: FastifyInstance
  const seen = new Map<string, number>()

  before(async () => {
    api = await startFuzzApi('fuzz-foreign', KEY, BODY_LIMIT)
    app = api.app
  })

  after(async () => {
    await api?.close()
    console.log(`# fuzz foreign apis: statuses ${JSON.stringify(Object.fromEntries([...seen].sort()))}`)
  })

  it('answers random requests with a fitting status in each API\'s own error shape, never a 500', async () => {
    await checkAsync('foreign api requests', request, 1500, async r => {
      const headers: Record<string, string> = { ...r.auth }
      if (r.type !== undefined) headers['content-type'] = r.type
      const req: InjectOptions = { method: r.method as InjectOptions['method'], url: r.route.url, headers, ...(r.method !== 'GET' ? { payload: r.body } : {}) }
      const where = `${r.method} ${r.route.url}`
      const res = await deadline(app.inject(req), 20_000, where)
      seen.set(`${r.route.api} ${res.statusCode}`, (seen.get(`${r.route.api} ${res.statusCode}`) ?? 0) + 1)
      assert.ok(STATUSES.has(res.statusCode), `${where}: ${res.statusCode} ${res.body.slice(0, 300)}`)
      if (res.statusCode < 400) return
      const body = JSON.parse(res.body)
      // Unknown method/route pairs are the server's 404/405, in the OpenAI shape: not ours to reshape.
      if (r.method !== 'POST') return
      if (r.route.api === 'ollama') assertOllamaError(body, `${where} → ${res.statusCode}`)
      else assertAnthropicError(body, `${where} → ${res.statusCode}`)
    })
  })

  it('still serves after the run', async () => {
    const res = await app.inject({ url: '/api/version', headers: { authorization: `Bearer ${KEY}` } })
    assert.equal(res.statusCode, 200)
    assert.match(JSON.parse(res.body).version, /^\d+\.\d+\.\d+$/)
    assert.equal((await app.inject({ url: '/', headers: { authorization: `Bearer ${KEY}` } })).body, 'Ollama is running')
  })
})
