/**
 * The Responses API mapping (src/api/responses-mapping.ts, requests) and output shapes
 * (src/api/responses-output.ts, objects and stream events): pure functions, driven directly.
 */
import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { BadRequestError } from '../../src/errors.js'
import { parseResponsesRequest, RESPONSES_LIMITS } from '../../src/api/responses-mapping.js'
import { outputMessage, responseId, responseObject, ResponseEventStream, statusOf, usageOf } from '../../src/api/responses-output.js'

const base = { model: 'm', input: 'hi' }

function refused (body: unknown, param: string, code?: string, opts: { maxOutputTokens?: number } = {}): void {
  assert.throws(() => parseResponsesRequest(body, opts), (err: unknown) => {
    assert.ok(err instanceof BadRequestError, String(err))
    assert.equal(err.status, 400)
    assert.equal(err.param, param, err.message)
    if (code !== undefined) assert.equal(err.code, code, err.message)
    assert.ok(err.message.length > 10)
    return true
  })
}

/** Splits SSE text into its events' data, checking each `event:` line matches the data's type. */
function events (text: string): any[] {
  return text.split('\n\n').filter(Boolean).map(block => {
    const [ev, data] = block.split('\n')
    const parsed = JSON.parse(data.replace(/^data: /, ''))
    assert.equal(ev, `event: ${String(parsed.type)}`)
    return parsed
  })
}

describe('parseResponsesRequest', () => {
  it('maps a string input onto one user message, with OpenAI\'s default sampling and usage on', () => {
    const p = parseResponsesRequest(base)
    assert.equal(p.model, 'm')
    assert.equal(p.stream, false)
    assert.deepEqual(p.body, { model: 'm', messages: [{ role: 'user', content: 'hi' }], temperature: 1, top_p: 1, stream: true, stream_options: { include_usage: true } })
    assert.equal(p.echo.store, true)
    assert.deepEqual(p.echo.format, { type: 'text' })
  })

  it('maps instructions, items of every role, text parts and sampling', () => {
    const p = parseResponsesRequest({
      model: 'm',
      instructions: 'be brief',
      input: [
        { role: 'developer', content: 'dev rule' },
        { type: 'message', role: 'user', content: [{ type: 'input_text', text: 'a' }, { type: 'input_text', text: 'b' }] },
        { type: 'message', id: 'msg_1', status: 'completed', role: 'assistant', content: [{ type: 'output_text', text: 'c', annotations: [] }] },
        { role: 'system', content: 'sys' },
        { role: 'user', content: 'd' }
      ],
      max_output_tokens: 20,
      temperature: 0,
      top_p: 0.5,
      stream: true,
      store: false,
      metadata: { k: 'v' },
      tools: [],
      tool_choice: 'auto',
      include: ['reasoning.encrypted_content'],
      text: { format: { type: 'text' } }
    })
    assert.deepEqual(p.body.messages, [
      { role: 'system', content: 'be brief' },
      { role: 'system', content: 'dev rule' },
      { role: 'user', content: 'ab' },
      { role: 'assistant', content: 'c' },
      { role: 'system', content: 'sys' },
      { role: 'user', content: 'd' }
    ])
    assert.equal(p.body.max_tokens, 20)
    assert.equal(p.body.temperature, 0)
    assert.equal(p.body.top_p, 0.5)
    assert.equal(p.body.response_format, undefined)
    assert.equal(p.stream, true)
    assert.deepEqual(p.echo, { instructions: 'be brief', maxOutputTokens: 20, temperature: 0, topP: 0.5, metadata: { k: 'v' }, store: false, format: { type: 'text' }, user: null, safetyIdentifier: null, promptCacheKey: null, parallelToolCalls: true })
  })

  it('passes json_object and json_schema formats to the engine as response_format', () => {
    assert.deepEqual(parseResponsesRequest({ ...base, text: { format: { type: 'json_object' } } }).body.response_format, { type: 'json_object' })
    const schema = { type: 'object', properties: { a: { type: 'string' } }, required: ['a'], additionalProperties: false }
    const p = parseResponsesRequest({ ...base, text: { format: { type: 'json_schema', name: 'thing', schema, strict: true } } })
    assert.deepEqual(p.body.response_format, { type: 'json_schema', json_schema: { name: 'thing', schema, strict: true } })
    assert.deepEqual(p.echo.format, { type: 'json_schema', name: 'thing', schema, strict: true })
  })

  it('refuses what needs tools, storage or reasoning, naming the parameter', () => {
    refused({ ...base, tools: [{ type: 'function', name: 'f', parameters: {} }] }, 'tools', 'unsupported_parameter')
    refused({ ...base, tool_choice: 'required' }, 'tool_choice', 'unsupported_parameter')
    refused({ ...base, previous_response_id: 'resp_1' }, 'previous_response_id', 'unsupported_parameter')
    refused({ ...base, conversation: 'conv_1' }, 'conversation', 'unsupported_parameter')
    refused({ ...base, background: true }, 'background', 'unsupported_parameter')
    refused({ ...base, reasoning: { effort: 'high' } }, 'reasoning', 'unsupported_parameter')
    refused({ ...base, include: ['message.output_text.logprobs'] }, 'include[0]', 'unsupported_parameter')
    refused({ ...base, top_logprobs: 3 }, 'top_logprobs', 'unsupported_parameter')
    refused({ ...base, truncation: 'auto' }, 'truncation', 'unsupported_parameter')
    refused({ ...base, input: [{ type: 'function_call_output', call_id: 'c', output: 'x' }] }, 'input[0].type', 'unsupported_parameter')
    refused({ ...base, input: [{ type: 'item_reference', id: 'msg_1' }] }, 'input[0].type', 'unsupported_parameter')
    refused({ ...base, input: [{ role: 'user', content: [{ type: 'input_image', image_url: 'http://x' }] }] }, 'input[0].content[0].type', 'unsupported_parameter')
    refused({ ...base, text: { verbosity: 'high' } }, 'text.verbosity', 'unsupported_parameter')
  })

  it('refuses wrong types, unknown fields and oversized inputs in OpenAI\'s words', () => {
    refused(null, 'body')
    refused([], 'body')
    refused({ input: 'x' }, 'model', 'missing_required_parameter')
    refused({ model: 'm' }, 'input', 'missing_required_parameter')
    refused({ model: 7, input: 'x' }, 'model', 'invalid_type')
    refused({ model: '', input: 'x' }, 'model')
    refused({ ...base, input: 42 }, 'input', 'invalid_type')
    refused({ ...base, input: [] }, 'input', 'empty_array')
    refused({ ...base, input: Array.from({ length: RESPONSES_LIMITS.maxInputItems + 1 }, () => 'x') }, 'input', 'array_above_max_length')
    refused({ ...base, input: ['x'] }, 'input[0]', 'invalid_type')
    refused({ ...base, input: [{ role: 'tool', content: 'x' }] }, 'input[0].role', 'invalid_value')
    refused({ ...base, input: [{ role: 'user' }] }, 'input[0].content', 'missing_required_parameter')
    refused({ ...base, input: [{ role: 'user', content: 5 }] }, 'input[0].content', 'invalid_type')
    refused({ ...base, input: [{ role: 'user', content: [{ type: 'input_text', text: 5 }] }] }, 'input[0].content[0].text', 'invalid_type')
    refused({ ...base, input: [{ role: 'user', content: [{ type: 'bogus' }] }] }, 'input[0].content[0].type', 'invalid_value')
    refused({ ...base, input: [{ type: 'bogus_item' }] }, 'input[0].type', 'invalid_value')
    refused({ ...base, input: [{ role: 'user', content: Array.from({ length: RESPONSES_LIMITS.maxContentParts + 1 }, () => ({ type: 'input_text', text: 'x' })) }] }, 'input[0].content', 'array_above_max_length')
    refused({ ...base, frobnicate: 1 }, 'frobnicate', 'unknown_parameter')
    refused({ ...base, stream: 'yes' }, 'stream', 'invalid_type')
    refused({ ...base, store: 1 }, 'store', 'invalid_type')
    refused({ ...base, instructions: ['x'] }, 'instructions', 'invalid_type')
    refused({ ...base, temperature: 3 }, 'temperature')
    refused({ ...base, temperature: 'hot' }, 'temperature', 'invalid_type')
    refused({ ...base, top_p: -1 }, 'top_p')
    refused({ ...base, max_output_tokens: 0 }, 'max_output_tokens')
    refused({ ...base, max_output_tokens: 1.5 }, 'max_output_tokens', 'invalid_type')
    refused({ ...base, max_output_tokens: 5000 }, 'max_output_tokens', undefined, { maxOutputTokens: 4096 })
    refused({ ...base, metadata: 'x' }, 'metadata', 'invalid_type')
    refused({ ...base, metadata: { a: 1 } }, 'metadata.a', 'invalid_type')
    refused({ ...base, metadata: Object.fromEntries(Array.from({ length: 17 }, (_, i) => [`k${i}`, 'v'])) }, 'metadata')
    refused({ ...base, metadata: { k: 'v'.repeat(513) } }, 'metadata.k')
    refused({ ...base, text: 'json' }, 'text', 'invalid_type')
    refused({ ...base, text: { format: { type: 'xml' } } }, 'text.format.type', 'invalid_value')
    refused({ ...base, text: { format: { type: 'json_schema', schema: {} } } }, 'text.format.name', 'missing_required_parameter')
    refused({ ...base, text: { format: { type: 'json_schema', name: 'a b', schema: {} } } }, 'text.format.name')
    refused({ ...base, text: { format: { type: 'json_schema', name: 'ok' } } }, 'text.format.schema', 'invalid_type')
    refused({ ...base, text: { other: 1 } }, 'text.other', 'unknown_parameter')
    refused({ ...base, tools: 'all' }, 'tools', 'invalid_type')
  })

  it('keeps error messages and params short whatever the client sends', () => {
    const huge = 'x'.repeat(100_000)
    const cases: unknown[] = [
      { ...base, include: [Array.from({ length: 5000 }, (_, i) => i)] },
      { ...base, [huge]: 1 },
      { ...base, text: { [huge]: 1 } },
      { ...base, input: [{ role: huge, content: 'x' }] },
      { ...base, input: [{ type: huge }] },
      { ...base, input: [{ role: 'user', content: [{ type: huge }] }] },
      { ...base, text: { format: { type: huge } } }
    ]
    for (const body of cases) {
      assert.throws(() => parseResponsesRequest(body), (err: unknown) => {
        assert.ok(err instanceof BadRequestError)
        assert.ok(err.message.length < 400, err.message.slice(0, 200))
        assert.ok((err.param ?? '').length <= 100, err.param ?? '')
        return true
      })
    }
  })
})

describe('response objects and events', () => {
  const echo = parseResponsesRequest({ ...base, instructions: 'i', max_output_tokens: 8, metadata: { a: 'b' } }).echo

  it('builds a whole response with every field the SDK types list, and incomplete on a length stop', () => {
    const id = responseId()
    assert.match(id, /^resp_[0-9a-f]{48}$/)
    const done = responseObject({ id, createdAt: 100, model: 'm', status: 'completed', output: [outputMessage('msg_1', 'completed', 'hello')], usage: usageOf(3, 2), completedAt: 101 }, echo)
    for (const k of ['id', 'created_at', 'error', 'incomplete_details', 'instructions', 'metadata', 'model', 'object', 'output', 'parallel_tool_calls', 'temperature', 'tool_choice', 'tools', 'top_p']) assert.ok(k in done, k)
    assert.equal(done.object, 'response')
    assert.equal(done.status, 'completed')
    assert.equal(done.completed_at, 101)
    assert.equal(done.incomplete_details, null)
    assert.equal(done.instructions, 'i')
    assert.equal(done.max_output_tokens, 8)
    assert.deepEqual(done.metadata, { a: 'b' })
    assert.deepEqual(done.output, [{ id: 'msg_1', type: 'message', status: 'completed', role: 'assistant', content: [{ type: 'output_text', text: 'hello', annotations: [], logprobs: [] }] }])
    assert.deepEqual(done.usage, { input_tokens: 3, input_tokens_details: { cached_tokens: 0 }, output_tokens: 2, output_tokens_details: { reasoning_tokens: 0 }, total_tokens: 5 })
    assert.equal('output_text' in done, false, 'output_text is computed by the SDKs')
    assert.equal(statusOf('length'), 'incomplete')
    assert.equal(statusOf('stop'), 'completed')
    const cut = responseObject({ id, createdAt: 100, model: 'm', status: 'incomplete', output: [], usage: usageOf(1, 8) }, echo)
    assert.deepEqual(cut.incomplete_details, { reason: 'max_output_tokens' })
    assert.equal(cut.completed_at, null)
  })

  it('streams the exact event sequence, numbered from 0, with the text repeated whole at the end', () => {
    const s = new ResponseEventStream({ id: 'resp_1', createdAt: 100, model: 'm' }, echo, 'msg_1')
    const all = events(s.start() + s.delta('Hel') + s.delta('lo') + s.finish('stop', usageOf(3, 2), 101))
    assert.deepEqual(all.map(e => e.type), [
      'response.created', 'response.in_progress', 'response.output_item.added', 'response.content_part.added',
      'response.output_text.delta', 'response.output_text.delta',
      'response.output_text.done', 'response.content_part.done', 'response.output_item.done', 'response.completed'
    ])
    assert.deepEqual(all.map(e => e.sequence_number), all.map((_, i) => i))
    assert.equal(all[0].response.status, 'in_progress')
    assert.deepEqual(all[0].response.output, [])
    assert.equal(all[0].response.usage, null)
    assert.deepEqual(all[2].item, { id: 'msg_1', type: 'message', status: 'in_progress', role: 'assistant', content: [] })
    assert.deepEqual(all[4], { type: 'response.output_text.delta', item_id: 'msg_1', output_index: 0, content_index: 0, delta: 'Hel', logprobs: [], sequence_number: 4 })
    assert.equal(all[6].text, 'Hello')
    assert.equal(all[7].part.text, 'Hello')
    assert.equal(all[8].item.status, 'completed')
    assert.equal(all[9].response.status, 'completed')
    assert.equal(all[9].response.output[0].content[0].text, 'Hello')
    assert.equal(all[9].response.usage.total_tokens, 5)
  })

  it('ends with response.incomplete on a length stop, and an error event numbered in sequence', () => {
    const s = new ResponseEventStream({ id: 'resp_1', createdAt: 100, model: 'm' }, echo, 'msg_1')
    const cut = events(s.start() + s.delta('x') + s.finish('length', usageOf(1, 1), 101))
    const last = cut[cut.length - 1]
    assert.equal(last.type, 'response.incomplete')
    assert.deepEqual(last.response.incomplete_details, { reason: 'max_output_tokens' })
    assert.equal(cut[cut.length - 2].item.status, 'incomplete')
    const f = new ResponseEventStream({ id: 'resp_2', createdAt: 100, model: 'm' }, echo, 'msg_2')
    const failed = events(f.start() + f.delta('x') + f.error('timeout', 'took too long'))
    assert.deepEqual(failed[failed.length - 1], { type: 'error', code: 'timeout', message: 'took too long', param: null, sequence_number: 5 })
  })
})
