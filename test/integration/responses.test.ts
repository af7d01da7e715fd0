/**
 * OpenAI's Responses API (`POST /v1/responses`) end to end, through the official `openai` SDK and
 * the Vercel AI SDK's `openai(model)` (which speaks Responses by default), against real node
 * processes over HTTP: entry node A has no model and an API key, host B serves the tiny GGUF model
 * with node-llama-cpp, so every call to A is routed across the mesh; one call goes to B directly.
 */
import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import path from 'node:path'
import OpenAI from 'openai'
import { createOpenAI } from '@ai-sdk/openai'
import { APICallError, generateObject, generateText, streamText } from 'ai'
import { zodTextFormat } from 'openai/helpers/zod'
import { z } from 'zod'
import { createTinyModel, TINY_MODEL } from '../support/tiny-model.js'
import { PARAMETERS, validArgs } from '../support/tool-fixtures.js'
import { assertShape } from '../support/shape.js'
import { getJson, startNode, stopNode, tempDir, waitFor, type NodeProcess } from '../support/cluster.js'

const MODEL = 'tiny-chat'
/** A model with room for node-llama-cpp's function documentation (as in tools-embedded.test.ts). */
const TOOLS_MODEL = 'tiny-tools-resp'
const KEY = 'sk-test-responses'


/** Every field OpenAI's API returns on a response object (the SDK adds `output_text`). */
const RESPONSE = {
  id: 'string', object: 'string', created_at: 'integer', status: 'string', background: 'boolean', completed_at: ['integer', 'null'],
  error: 'null', incomplete_details: ['object', 'null'], instructions: ['string', 'null'], max_output_tokens: ['integer', 'null'],
  max_tool_calls: 'null', model: 'string', output: 'array', parallel_tool_calls: 'boolean', previous_response_id: ['string', 'null'],
  prompt_cache_key: ['string', 'null'], reasoning: 'object', safety_identifier: ['string', 'null'], service_tier: 'string', store: 'boolean',
  temperature: 'number', text: 'object', tool_choice: ['string', 'object'], tools: 'array', top_logprobs: 'integer', top_p: 'number',
  truncation: 'string', usage: ['object', 'null'], user: ['string', 'null'], metadata: 'object'
} as const
const USAGE = { input_tokens: 'integer', input_tokens_details: 'object', output_tokens: 'integer', output_tokens_details: 'object', total_tokens: 'integer' } as const
const MESSAGE = { id: 'string', type: 'string', status: 'string', role: 'string', content: 'array' } as const
const TEXT_PART = { type: 'string', text: 'string', annotations: 'array', logprobs: 'array' } as const

/** Checks a finished response object (as the server sent it: no `output_text`). */
function assertResponse (r: any, status: 'completed' | 'incomplete', what: string): string {
  const { output_text: _sdkSide, ...raw } = r
  assertShape(raw, RESPONSE, what)
  assert.match(r.id, /^resp_[0-9a-f]{48}$/)
  assert.equal(r.object, 'response')
  assert.equal(r.status, status)
  assert.equal(r.model, MODEL)
  assertShape(r.usage, USAGE, `${what}.usage`)
  assert.deepEqual(r.usage.input_tokens_details, { cached_tokens: 0 })
  assert.deepEqual(r.usage.output_tokens_details, { reasoning_tokens: 0 })
  assert.equal(r.usage.total_tokens, r.usage.input_tokens + r.usage.output_tokens)
  assert.ok(r.usage.input_tokens > 0 && r.usage.output_tokens > 0, JSON.stringify(r.usage))
  assert.equal(r.output.length, 1)
  const msg = r.output[0]
  assertShape(msg, MESSAGE, `${what}.output[0]`)
  assert.match(msg.id, /^msg_/)
  assert.equal(msg.type, 'message')
  assert.equal(msg.role, 'assistant')
  assert.equal(msg.status, status)
  assert.equal(msg.content.length, 1)
  assertShape(msg.content[0], TEXT_PART, `${what}.output[0].content[0]`)
  assert.equal(msg.content[0].type, 'output_text')
  if (status === 'incomplete') assert.deepEqual(r.incomplete_details, { reason: 'max_output_tokens' })
  else assert.equal(r.incomplete_details, null)
  return msg.content[0].text
}

/** Raw HTTP, for the exact bytes and for what no client sends. */
async function post (url: string, body: string, headers: Record<string, string> = {}): Promise<{ status: number, text: string, json: any, type: string | null }> {
  const res = await fetch(url, { method: 'POST', headers: { 'content-type': 'application/json', ...headers }, body })
  const text = await res.text()
  let json: any
  try { json = JSON.parse(text) } catch { json = undefined }
  return { status: res.status, text, json, type: res.headers.get('content-type') }
}

describe('Responses API across the mesh', () => {
  const nodes: NodeProcess[] = []
  let a: NodeProcess, b: NodeProcess
  let client: OpenAI
  const auth = { authorization: `Bearer ${KEY}` }
  const ask = { model: MODEL, input: 'Hello there', temperature: 0, max_output_tokens: 24 }

  before(async () => {
    const dir = await tempDir('shepherd-models-resp-')
    await createTinyModel(path.join(dir, `${MODEL}.gguf`))
    a = await startNode({ name: 'entry-a', args: ['--api-key', KEY] })
    nodes.push(a)
    b = await startNode({ name: 'host-b', args: ['--bootstrap', `/ip4/127.0.0.1/tcp/${a.p2pPort}`, '--engine', 'embedded', '--threads', '1', '--keep-alive-ms', '60000', '--models-dir', dir] })
    nodes.push(b)
    client = new OpenAI({ baseURL: `${a.api}/v1`, apiKey: KEY, maxRetries: 0 })
    await waitFor('A to see B\'s model', async () => (await client.models.list()).data.some(m => m.id === MODEL), 15_000)
  })

  after(async () => { await Promise.all(nodes.map(async n => await stopNode(n, 'SIGKILL'))) })

  it('answers in OpenAI\'s exact shape, routed to the host, the same text as chat completions', async () => {
    const { data: r, response: http } = await client.responses.create({ ...ask, instructions: 'Be brief.', metadata: { run: 'r1' }, store: false }).withResponse()
    const text = assertResponse(r, r.status === 'incomplete' ? 'incomplete' : 'completed', 'response')
    assert.equal(r.output_text, text, 'the SDK assembles output_text from output')
    assert.ok(text.length > 0)
    assert.equal(r.instructions, 'Be brief.')
    assert.deepEqual(r.metadata, { run: 'r1' })
    assert.equal((r as any).store, false)
    assert.equal(r.max_output_tokens, 24)
    assert.equal(r.temperature, 0)
    assert.deepEqual(r.text, { format: { type: 'text' }, verbosity: 'medium' })
    assert.ok(r.usage!.output_tokens <= 24)
    assert.ok(Math.abs(r.created_at - Date.now() / 1000) < 120)
    assert.notEqual(http.headers.get('x-shepherd-host'), null)
    assert.notEqual(http.headers.get('x-shepherd-host'), '')
    // The same prompt through chat completions: the same engine call, so the same greedy text.
    const chat = await client.chat.completions.create({ model: MODEL, messages: [{ role: 'system', content: 'Be brief.' }, { role: 'user', content: 'Hello there' }], temperature: 0, top_p: 1, max_tokens: 24 })
    assert.equal(chat.choices[0].message.content, text)
    assert.equal(chat.usage!.prompt_tokens, r.usage!.input_tokens)
    // Items with parts and a developer message reach the model as the same conversation.
    const items = await client.responses.create({ model: MODEL, temperature: 0, max_output_tokens: 24, input: [{ role: 'developer', content: 'Be brief.' }, { type: 'message', role: 'user', content: [{ type: 'input_text', text: 'Hello' }, { type: 'input_text', text: ' there' }] }] })
    assert.equal(items.output_text, text)
  })

  it('streams the exact event sequence, and the SDK\'s stream helper assembles the same response', async () => {
    const whole = await client.responses.create(ask)
    const events: any[] = []
    for await (const ev of await client.responses.create({ ...ask, stream: true })) events.push(ev)
    const types = events.map(e => e.type)
    const end = whole.status === 'completed' ? 'response.completed' : 'response.incomplete'
    assert.deepEqual(types.slice(0, 4), ['response.created', 'response.in_progress', 'response.output_item.added', 'response.content_part.added'])
    assert.deepEqual(types.slice(-4), ['response.output_text.done', 'response.content_part.done', 'response.output_item.done', end])
    const deltas = events.slice(4, -4)
    assert.ok(deltas.length > 0 && deltas.every(e => e.type === 'response.output_text.delta'), types.join(','))
    assert.deepEqual(events.map(e => e.sequence_number), events.map((_, i) => i))
    const msgId = events[2].item.id
    for (const d of deltas) assertShape(d, { type: 'string', item_id: 'string', output_index: 'integer', content_index: 'integer', delta: 'string', logprobs: 'array', sequence_number: 'integer' }, 'delta')
    assert.ok(deltas.every(d => d.item_id === msgId && d.output_index === 0 && d.content_index === 0))
    const text = deltas.map(d => d.delta).join('')
    assert.equal(text, whole.output_text)
    assert.equal(events.at(-4).text, text)
    assert.equal(events.at(-3).part.text, text)
    assert.equal(events.at(-2).item.content[0].text, text)
    const final = events.at(-1).response
    assertResponse(final, whole.status as 'completed' | 'incomplete', 'final event')
    assert.equal(final.id, events[0].response.id)
    assert.equal(final.output[0].id, msgId)
    assert.deepEqual(final.usage, whole.usage)
    assert.equal(events[0].response.status, 'in_progress')
    assert.equal(events[0].response.usage, null)
    // The helper: typed delta events with snapshots, and the final response.
    const stream = client.responses.stream(ask)
    let snapshot = ''
    stream.on('response.output_text.delta', ev => { snapshot = ev.snapshot })
    const done = await stream.finalResponse()
    assert.equal(done.output_text, text)
    assert.equal(snapshot, text)
    assert.deepEqual(done.usage, whole.usage)
    // The raw bytes: named events, each data line repeating its type.
    const raw = await post(`${a.api}/v1/responses`, JSON.stringify({ ...ask, stream: true }), auth)
    assert.equal(raw.type, 'text/event-stream')
    assert.match(raw.text, /^event: response\.created\ndata: \{"type":"response\.created"/)
    const names = [...raw.text.matchAll(/^event: ([\w.]+)$/gm)].map(m => m[1])
    assert.deepEqual(names, types)
  })

  it('stops at max_output_tokens as incomplete, whole and streamed', async () => {
    const short = await client.responses.create({ ...ask, max_output_tokens: 3 })
    assertResponse(short, 'incomplete', 'short')
    assert.equal(short.usage!.output_tokens, 3)
    const events: any[] = []
    for await (const ev of await client.responses.create({ ...ask, max_output_tokens: 3, stream: true })) events.push(ev)
    const last = events.at(-1)
    assert.equal(last.type, 'response.incomplete')
    assertResponse(last.response, 'incomplete', 'streamed short')
    assert.equal(last.response.output_text ?? last.response.output[0].content[0].text, short.output_text)
    assert.equal(events.at(-2).item.status, 'incomplete')
  })

  it('passes text.format json_schema to the engine: valid JSON, or the engine\'s 400 naming text.format', async (t) => {
    // Bounded (enum, boolean), so a grammar closes the JSON well within the output limit.
    const schema = { type: 'object', properties: { answer: { type: 'string', enum: ['yes', 'no'] }, sure: { type: 'boolean' } }, required: ['answer', 'sure'], additionalProperties: false }
    let r: Awaited<ReturnType<typeof client.responses.create>> & { output_text: string }
    try {
      r = await client.responses.create({ ...ask, max_output_tokens: 400, text: { format: { type: 'json_schema', name: 'reply', schema, strict: true } } })
    } catch (err: any) {
      // An engine without structured output: its refusal, named as a Responses client knows it.
      assert.ok(err instanceof OpenAI.BadRequestError, String(err))
      assert.equal(err.param, 'text.format')
      assert.match(err.message, /text\.format/)
      assert.doesNotMatch(err.message, /response_format/)
      t.diagnostic(`the engine refused json_schema: ${String(err.message)}`)
      return
    }
    assert.equal(r.status, 'completed')
    const parsed = JSON.parse(r.output_text)
    assert.ok(['yes', 'no'].includes(parsed.answer), r.output_text)
    assert.equal(typeof parsed.sure, 'boolean')
    assert.deepEqual(r.text?.format, { type: 'json_schema', name: 'reply', schema, strict: true })
    t.diagnostic(`the engine honoured json_schema: ${r.output_text}`)
    // The SDK's own structured-output path: a zod schema in, a typed object out.
    const typed = await client.responses.parse({ ...ask, max_output_tokens: 400, text: { format: zodTextFormat(z.object({ answer: z.enum(['yes', 'no']), sure: z.boolean() }), 'reply') } })
    assert.ok(typed.output_parsed != null && ['yes', 'no'].includes(typed.output_parsed.answer), typed.output_text)
    assert.equal(typeof typed.output_parsed.sure, 'boolean')
  })

  it('answers on the host directly too (the local path)', async () => {
    const local = new OpenAI({ baseURL: `${b.api}/v1`, apiKey: 'unused', maxRetries: 0 })
    const r = await local.responses.create({ ...ask, max_output_tokens: 4 })
    assert.equal(r.output[0].type, 'message')
    assert.ok(r.output_text.length > 0)
  })

  it('serves the Vercel AI SDK\'s openai(model), which speaks the Responses API', async () => {
    const provider = createOpenAI({ baseURL: `${a.api}/v1`, apiKey: KEY })
    const whole = await client.responses.create({ ...ask, max_output_tokens: 16 })
    const res = await generateText({ model: provider(MODEL), prompt: 'Hello there', temperature: 0, maxOutputTokens: 16, maxRetries: 0 })
    assert.equal(res.text, whole.output_text)
    assert.equal(res.usage.inputTokens, whole.usage!.input_tokens)
    assert.equal(res.usage.outputTokens, whole.usage!.output_tokens)
    assert.equal(res.finishReason, whole.status === 'completed' ? 'stop' : 'length')
    assert.match(res.response.id, /^resp_/)
    const streamed = streamText({ model: provider(MODEL), prompt: 'Hello there', temperature: 0, maxOutputTokens: 16, maxRetries: 0 })
    assert.equal(await streamed.text, whole.output_text)
    // Structured output through the same provider (text.format json_schema), where the engine has it.
    let obj
    try {
      obj = await generateObject({ model: provider(MODEL), schema: z.object({ answer: z.enum(['yes', 'no']), sure: z.boolean() }), prompt: 'Are you sure?', maxOutputTokens: 400, maxRetries: 0 })
    } catch (err: any) {
      assert.ok(APICallError.isInstance(err), String(err))
      assert.equal(err.statusCode, 400)
      assert.match(err.message, /text\.format/)
      return
    }
    assert.ok(['yes', 'no'].includes(obj.object.answer))
    assert.equal(typeof obj.object.sure, 'boolean')
  })

  it('refuses hostile and unsupported requests in OpenAI\'s error shape, and keeps serving', async () => {
    const refused = async (p: Promise<unknown>, status: number, param: string | null, message: RegExp): Promise<void> => {
      await assert.rejects(p, (err: any) => {
        assert.equal(err.status, status, String(err))
        assertShape(err.error, { message: 'string', type: 'string', param: ['string', 'null'], code: ['string', 'null'] }, 'error')
        assert.equal(err.param, param, err.message)
        assert.match(err.message, message)
        return true
      })
    }
    await refused(client.responses.create({ ...ask, tools: [{ type: 'web_search' }] }), 400, 'tools[0].type', /only function tools/)
    await refused(client.responses.create({ ...ask, tools: [{ type: 'file_search', vector_store_ids: ['vs_1'] }] }), 400, 'tools[0].type', /file_search/)
    await refused(client.responses.create({ ...ask, previous_response_id: 'resp_123' }), 404, 'previous_response_id', /Previous response with id 'resp_123' not found/)
    await refused(client.responses.create({ ...ask, input: [{ type: 'computer_call_output', call_id: 'c1', output: { type: 'computer_screenshot' } }] as any }), 400, 'input[0].type', /computer_call_output/)
    await refused(client.responses.create({ ...ask, input: [{ role: 'user', content: [{ type: 'input_image', image_url: 'http://x/y.png', detail: 'auto' }] }] }), 400, 'input[0].content[0].type', /input_image/)
    await refused(client.responses.create({ ...ask, max_output_tokens: TINY_MODEL.contextLength + 1 }), 400, 'max_output_tokens', /maximum/)
    await refused(client.responses.create({ ...ask, model: 'nope' }), 404, 'model', /nope/)
    await refused(client.responses.create({ ...ask, model: 'nope', stream: true }), 404, 'model', /nope/)
    await refused(client.responses.retrieve('resp_123'), 404, 'response_id', /No response found with id 'resp_123'/)
    await refused(new OpenAI({ baseURL: `${a.api}/v1`, apiKey: 'wrong', maxRetries: 0 }).responses.create(ask), 401, null, /API key/)
    const cases: Array<[string, string, string | null]> = [
      ['truncated JSON', '{"model":', null],
      ['an array body', '[1]', null],
      ['input a number', JSON.stringify({ ...ask, input: 42 }), 'input'],
      ['input an object', JSON.stringify({ ...ask, input: { role: 'user' } }), 'input'],
      ['model a number', JSON.stringify({ ...ask, model: 7 }), 'model'],
      ['huge input array', JSON.stringify({ ...ask, input: Array.from({ length: 5000 }, () => ({ role: 'user', content: 'x' })) }), 'input'],
      ['huge content array', JSON.stringify({ ...ask, input: [{ role: 'user', content: Array.from({ length: 2000 }, () => ({ type: 'input_text', text: 'x' })) }] }), 'input[0].content'],
      ['unknown item type', JSON.stringify({ ...ask, input: [{ type: 'telepathy', content: 'x' }] }), 'input[0].type'],
      ['unknown part type', JSON.stringify({ ...ask, input: [{ role: 'user', content: [{ type: 'smell' }] }] }), 'input[0].content[0].type'],
      ['tool role', JSON.stringify({ ...ask, input: [{ role: 'tool', content: 'x' }] }), 'input[0].role'],
      ['text part not a string', JSON.stringify({ ...ask, input: [{ role: 'user', content: [{ type: 'input_text', text: { $gt: 1 } }] }] }), 'input[0].content[0].text'],
      ['unknown parameter', JSON.stringify({ ...ask, frobnicate: true }), 'frobnicate'],
      ['temperature too high', JSON.stringify({ ...ask, temperature: 9 }), 'temperature'],
      ['max_output_tokens huge', JSON.stringify({ ...ask, max_output_tokens: 1e15 }), 'max_output_tokens'],
      ['stream a string', JSON.stringify({ ...ask, stream: 'yes' }), 'stream'],
      ['bad format type', JSON.stringify({ ...ask, text: { format: { type: 'yaml' } } }), 'text.format.type'],
      ['metadata value an object', JSON.stringify({ ...ask, metadata: { a: { b: 1 } } }), 'metadata.a'],
      ['prototype pollution', '{"model":"tiny-chat","input":"x","max_output_tokens":2,"__proto__":{"admin":true}}', null]
    ]
    for (const [what, body, param] of cases) {
      const res = await post(`${a.api}/v1/responses`, body, auth)
      if (what === 'prototype pollution') {
        // fastify strips __proto__ (onProtoPoisoning: 'remove'): an ordinary request.
        assert.equal(res.status, 200, `${what}: ${res.text}`)
        continue
      }
      assert.equal(res.status, 400, `${what}: ${res.text}`)
      assertShape(res.json, { error: 'object' }, what)
      assertShape(res.json.error, { message: 'string', type: 'string', param: ['string', 'null'], code: ['string', 'null'] }, what)
      assert.equal(res.json.error.type, 'invalid_request_error', what)
      if (param !== null) assert.equal(res.json.error.param, param, `${what}: ${res.text}`)
    }
    const still = await client.responses.create({ ...ask, max_output_tokens: 2 })
    assert.equal(still.object, 'response')
    assert.ok(await getJson(`${a.api}/healthz`) != null)
  })

  it('ends a stream whose host dies mid-answer with an error event, and keeps serving', async (t) => {
    // A third node serves a model of its own, so the entry node has no other host to turn to.
    const dir = await tempDir('shepherd-models-resp-doomed-')
    await createTinyModel(path.join(dir, 'tiny-doomed.gguf'))
    const c = await startNode({ name: 'host-c', args: ['--bootstrap', `/ip4/127.0.0.1/tcp/${a.p2pPort}`, '--engine', 'embedded', '--threads', '1', '--models-dir', dir] })
    nodes.push(c)
    await waitFor('A to see C\'s model', async () => (await client.models.list()).data.some(m => m.id === 'tiny-doomed'), 15_000)
    await client.responses.create({ model: 'tiny-doomed', input: 'warm up', max_output_tokens: 1 })
    const events: any[] = []
    const started = Date.now()
    for await (const ev of await client.responses.create({ model: 'tiny-doomed', input: 'Go on and on', max_output_tokens: 480, stream: true })) {
      events.push(ev)
      if (ev.type === 'response.created') c.child.kill('SIGKILL')
    }
    const types = events.map(e => e.type)
    assert.equal(types[0], 'response.created')
    assert.ok(!types.includes('response.completed') && !types.includes('response.incomplete'), `the answer finished before the kill landed (${Date.now() - started} ms): ${types.length} events`)
    const last = events.at(-1)
    assert.equal(last.type, 'error', types.slice(-3).join(','))
    assertShape(last, { type: 'string', code: ['string', 'null'], message: 'string', param: ['string', 'null'], sequence_number: 'integer' }, 'error event')
    assert.equal(last.sequence_number, events.length - 1)
    t.diagnostic(`after ${events.length - 1} events: ${JSON.stringify(last)}`)
    const r = await client.responses.create({ ...ask, max_output_tokens: 3 })
    assert.equal(r.object, 'response')
    assert.equal(a.child.exitCode, null)
  })

  it('survives clients that leave in the middle of a stream', async () => {
    for (let i = 0; i < 3; i++) {
      const ac = new AbortController()
      const res = await fetch(`${a.api}/v1/responses`, { method: 'POST', headers: { 'content-type': 'application/json', ...auth }, body: JSON.stringify({ model: MODEL, input: 'Go on and on', max_output_tokens: 400, stream: true }), signal: ac.signal })
      assert.equal(res.status, 200)
      const reader = res.body!.getReader()
      await reader.read()
      ac.abort()
      await reader.cancel().catch(() => {})
    }
    const r = await client.responses.create({ ...ask, max_output_tokens: 3 })
    assert.equal(r.object, 'response')
    assert.equal(b.child.exitCode, null)
    assert.equal(a.child.exitCode, null)
  })
})

/** The Responses function tools through the mesh (issue 13): forced calls, streamed, and a second turn. */
describe('Responses API function tools across the mesh (embedded engine)', () => {
  const nodes: NodeProcess[] = []
  let client: OpenAI
  const tools: OpenAI.Responses.FunctionTool[] = [{ type: 'function', name: 'get_weather', description: 'The weather in a city', parameters: PARAMETERS as unknown as Record<string, unknown>, strict: false }]
  const QUESTION = 'What is the weather in Paris?'
  // A named tool_choice is enforced by grammar, so the call is valid whatever the random weights pick;
  // temperature 0 keeps the run the same every time (Responses has no seed or logit_bias).
  const forced = { model: TOOLS_MODEL, input: QUESTION, tools, tool_choice: { type: 'function' as const, name: 'get_weather' }, temperature: 0, max_output_tokens: 200 }
  const CALL = { id: 'string', type: 'string', status: 'string', call_id: 'string', name: 'string', arguments: 'string' } as const

  before(async () => {
    const dir = await tempDir('shepherd-models-resp-tools-')
    await createTinyModel(path.join(dir, `${TOOLS_MODEL}.gguf`), { addSpacePrefix: false, contextLength: 2048 })
    const a = await startNode({ name: 'resp-tools-a' })
    nodes.push(a)
    nodes.push(await startNode({ name: 'resp-tools-b', args: ['--bootstrap', `/ip4/127.0.0.1/tcp/${a.p2pPort}`, '--engine', 'embedded', '--threads', '1', '--models-dir', dir] }))
    client = new OpenAI({ baseURL: `${a.api}/v1`, apiKey: 'unused', maxRetries: 0 })
    await waitFor('A to see B\'s model', async () => (await client.models.list()).data.some(m => m.id === TOOLS_MODEL), 15_000)
  })

  after(async () => { await Promise.all(nodes.map(async n => await stopNode(n, 'SIGKILL'))) })

  it('a named tool_choice gives a function_call item whose arguments validate; its output is accepted in a second turn', async () => {
    const r = await client.responses.create(forced)
    const { output_text: _sdkSide, ...raw } = r as any
    assertShape(raw, RESPONSE, 'response')
    assert.equal(r.status, 'completed', JSON.stringify(r.output))
    assert.deepEqual(r.tool_choice, { type: 'function', name: 'get_weather' })
    assert.deepEqual(r.tools, [{ type: 'function', name: 'get_weather', description: 'The weather in a city', parameters: PARAMETERS, strict: false }])
    const calls = r.output.filter(i => i.type === 'function_call')
    assert.equal(calls.length, 1, JSON.stringify(r.output))
    const call = calls[0]
    assertShape(call, CALL, 'function_call')
    assert.match(call.id ?? '', /^fc_[0-9a-f]{48}$/)
    assert.match(call.call_id, /^call_/)
    assert.equal(call.name, 'get_weather')
    assert.equal(call.status, 'completed')
    assert.ok(validArgs(JSON.parse(call.arguments)), `${JSON.stringify(validArgs.errors)} in ${call.arguments}`)

    // The agent loop as the SDK documents it: the call item sent back as it came, then the tool's result.
    const second = await client.responses.create({
      model: TOOLS_MODEL,
      tools,
      temperature: 0,
      max_output_tokens: 16,
      input: [{ role: 'user', content: QUESTION }, call, { type: 'function_call_output', call_id: call.call_id, output: JSON.stringify({ sky: 'sunny' }) }]
    })
    assert.ok(second.status === 'completed' || second.status === 'incomplete', second.status)
    assert.ok(second.output.length > 0)
    assert.ok((second.usage?.input_tokens ?? 0) > (r.usage?.input_tokens ?? 0), 'the second turn holds the call and its result')
  })

  it('streamed: function_call added with empty arguments, argument deltas, done events, numbered in sequence', async () => {
    const events: any[] = []
    for await (const ev of await client.responses.create({ ...forced, stream: true })) events.push(ev)
    assert.deepEqual(events.map(e => e.sequence_number), events.map((_, i) => i))
    const types = events.map(e => e.type)
    assert.deepEqual(types.slice(0, 3), ['response.created', 'response.in_progress', 'response.output_item.added'], types.join(','))
    assert.equal(types.at(-1), 'response.completed', types.slice(-3).join(','))
    const added = events[2]
    assertShape(added.item, CALL, 'added item')
    assert.equal(added.item.type, 'function_call')
    assert.equal(added.item.arguments, '')
    assert.equal(added.item.name, 'get_weather')
    const deltas = events.filter(e => e.type === 'response.function_call_arguments.delta')
    assert.ok(deltas.length > 1, `arguments came in ${deltas.length} delta(s)`)
    for (const d of deltas) {
      assertShape(d, { type: 'string', item_id: 'string', output_index: 'integer', delta: 'string', sequence_number: 'integer' }, 'delta')
      assert.equal(d.item_id, added.item.id)
      assert.equal(d.output_index, added.output_index)
    }
    const done = events.find(e => e.type === 'response.function_call_arguments.done')
    assert.equal(done.item_id, added.item.id)
    assert.equal(done.arguments, deltas.map(d => d.delta).join(''))
    assert.ok(validArgs(JSON.parse(done.arguments)), done.arguments)
    const itemDone = events.find(e => e.type === 'response.output_item.done')
    assert.deepEqual(itemDone.item, { ...added.item, status: 'completed', arguments: done.arguments })
    const final = events.at(-1).response
    assert.deepEqual(final.output, [itemDone.item])
    assert.ok(final.usage.input_tokens > 0)
    assert.equal(types.includes('response.output_text.delta'), false, 'a forced call writes no text')
  })

  it('hostile tools: the engine\'s refusals name the Responses parameter, and the node keeps serving', async () => {
    const param = async (p: Promise<unknown>): Promise<string | null | undefined> => await p.then(() => undefined, (err: any) => { assert.equal(err.status, 400, String(err)); return err.param })
    // The engine's own checks, renamed from chat's `tools[0].function.name` / `tool_choice.function.name`.
    assert.equal(await param(client.responses.create({ ...forced, tools: [{ type: 'function', name: 'bad name', parameters: null, strict: false }], tool_choice: 'auto' })), 'tools[0].name')
    assert.equal(await param(client.responses.create({ ...forced, tool_choice: { type: 'function', name: 'not_offered' } })), 'tool_choice')
    assert.equal(await param(client.responses.create({ ...forced, tools: Array.from({ length: 10_000 }, (_, i) => ({ ...tools[0], name: `t${i}` })), tool_choice: 'auto' })), 'tools')
    assert.equal(await param(client.responses.create({ ...forced, tools: [{ type: 'web_search' }] })), 'tools[0].type')
    const ok = await client.responses.create({ model: TOOLS_MODEL, input: QUESTION, max_output_tokens: 2 })
    assert.equal(ok.object, 'response')
  })
})
