/**
 * The Responses API mapping (src/api/responses-mapping.ts, requests) and output shapes
 * (src/api/responses-output.ts, objects and stream events): pure functions, driven directly.
 */
import { JsonPayload } from '../../src/node/inference-call.js'
import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { BadRequestError } from '../../src/errors.js'
import { parseResponsesRequest, RESPONSES_LIMITS } from '../../src/api/responses-mapping.js'
import { functionCallItem, outputMessage, responseId, responseObject, ResponseEventStream, statusOf, usageOf } from '../../src/api/responses-output.js'
import { responsesToolParam } from '../../src/api/responses-tools.js'
import { generationEvents, type GenerationEvent } from '../../src/api/inference-call.js'

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
    assert.deepEqual(p.echo, { previousResponseId: null, instructions: 'be brief', maxOutputTokens: 20, temperature: 0, topP: 0.5, metadata: { k: 'v' }, store: false, format: { type: 'text' }, user: null, safetyIdentifier: null, promptCacheKey: null, parallelToolCalls: true, tools: [], toolChoice: 'auto' })
  })

  it('passes json_object and json_schema formats to the engine as response_format', () => {
    assert.deepEqual(parseResponsesRequest({ ...base, text: { format: { type: 'json_object' } } }).body.response_format, { type: 'json_object' })
    const schema = { type: 'object', properties: { a: { type: 'string' } }, required: ['a'], additionalProperties: false }
    const p = parseResponsesRequest({ ...base, text: { format: { type: 'json_schema', name: 'thing', schema, strict: true } } })
    assert.deepEqual(p.body.response_format, { type: 'json_schema', json_schema: { name: 'thing', schema, strict: true } })
    assert.deepEqual(p.echo.format, { type: 'json_schema', name: 'thing', schema, strict: true })
  })

  it('refuses what needs hosted tools, storage or reasoning, naming the parameter', () => {
    refused({ ...base, tools: [{ type: 'web_search' }] }, 'tools[0].type', 'unsupported_parameter')
    refused({ ...base, tools: [{ type: 'function', name: 'f' }, { type: 'file_search', vector_store_ids: ['vs_1'] }] }, 'tools[1].type', 'unsupported_parameter')
    refused({ ...base, tool_choice: { type: 'web_search_preview' } }, 'tool_choice.type', 'unsupported_parameter')
    refused({ ...base, tool_choice: 'sometimes' }, 'tool_choice', 'invalid_value')
    refused({ ...base, tool_choice: 'required' }, 'tool_choice', 'invalid_value')
    refused({ ...base, tools: [], tool_choice: { type: 'function', name: 'f' } }, 'tool_choice', 'invalid_value')
    refused({ ...base, input: [{ type: 'web_search_call', id: 'ws_1' }] }, 'input[0].type', 'unsupported_parameter')
    refused({ ...base, previous_response_id: 'resp_1' }, 'previous_response_id', 'unsupported_parameter')
    refused({ ...base, conversation: 'conv_1' }, 'conversation', 'unsupported_parameter')
    refused({ ...base, background: true }, 'background', 'unsupported_parameter')
    refused({ ...base, reasoning: { effort: 'high' } }, 'reasoning', 'unsupported_parameter')
    refused({ ...base, include: ['message.output_text.logprobs'] }, 'include[0]', 'unsupported_parameter')
    refused({ ...base, top_logprobs: 3 }, 'top_logprobs', 'unsupported_parameter')
    refused({ ...base, truncation: 'auto' }, 'truncation', 'unsupported_parameter')
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

describe('function tools (issue 13)', () => {
  const parameters = { type: 'object', properties: { city: { type: 'string' } }, required: ['city'] }

  it('maps tools, tool_choice and parallel_tool_calls onto chat, and echoes them as OpenAI does', () => {
    const p = parseResponsesRequest({ ...base, tools: [{ type: 'function', name: 'get_weather', description: 'Weather', parameters, strict: true }, { type: 'function', name: 'now' }], tool_choice: { type: 'function', name: 'get_weather' }, parallel_tool_calls: false })
    assert.deepEqual(p.body.tools, [
      { type: 'function', function: { name: 'get_weather', description: 'Weather', parameters, strict: true } },
      { type: 'function', function: { name: 'now' } }
    ])
    assert.deepEqual(p.body.tool_choice, { type: 'function', function: { name: 'get_weather' } })
    assert.equal(p.body.parallel_tool_calls, false)
    assert.deepEqual(p.echo.tools, [
      { type: 'function', name: 'get_weather', description: 'Weather', parameters, strict: true },
      { type: 'function', name: 'now', description: null, parameters: null, strict: null }
    ])
    assert.deepEqual(p.echo.toolChoice, { type: 'function', name: 'get_weather' })
    for (const choice of ['auto', 'none', 'required'] as const) {
      const q = parseResponsesRequest({ ...base, tools: [{ type: 'function', name: 'f' }], tool_choice: choice })
      assert.equal(q.body.tool_choice, choice)
      assert.equal(q.echo.toolChoice, choice)
    }
    const plain = parseResponsesRequest(base)
    assert.equal('tools' in plain.body, false)
    assert.equal('tool_choice' in plain.body, false)
    assert.deepEqual(plain.echo.tools, [])
    assert.equal(plain.echo.toolChoice, 'auto')
  })

  it('maps function_call items to assistant tool_calls (parallel ones merged) and function_call_output to role tool', () => {
    const p = parseResponsesRequest({
      ...base,
      input: [
        { role: 'user', content: 'Weather in Paris and Rome?' },
        { type: 'function_call', id: 'fc_1', call_id: 'call_a', name: 'get_weather', arguments: '{"city":"Paris"}', status: 'completed' },
        { type: 'function_call', call_id: 'call_b', name: 'get_weather', arguments: '{"city":"Rome"}' },
        { type: 'function_call_output', call_id: 'call_a', output: '{"sky":"sunny"}' },
        { type: 'function_call_output', call_id: 'call_b', output: [{ type: 'input_text', text: 'rain' }] }
      ]
    })
    assert.deepEqual(p.body.messages, [
      { role: 'user', content: 'Weather in Paris and Rome?' },
      {
        role: 'assistant',
        content: null,
        tool_calls: [
          { id: 'call_a', type: 'function', function: { name: 'get_weather', arguments: '{"city":"Paris"}' } },
          { id: 'call_b', type: 'function', function: { name: 'get_weather', arguments: '{"city":"Rome"}' } }
        ]
      },
      { role: 'tool', tool_call_id: 'call_a', content: '{"sky":"sunny"}' },
      { role: 'tool', tool_call_id: 'call_b', content: 'rain' }
    ])
  })

  it('refuses malformed tools and tool items, naming the parameter', () => {
    refused({ ...base, tools: [{ type: 'function' }] }, 'tools[0].name', 'missing_required_parameter')
    refused({ ...base, tools: [{ type: 'function', name: 7 }] }, 'tools[0].name', 'invalid_type')
    refused({ ...base, tools: [{ type: 'function', name: 'f', parameters: 'x' }] }, 'tools[0].parameters', 'invalid_type')
    refused({ ...base, tools: ['f'] }, 'tools[0]', 'invalid_type')
    refused({ ...base, tool_choice: { type: 'function' } }, 'tool_choice.name', 'missing_required_parameter')
    refused({ ...base, input: [{ type: 'function_call', call_id: 'c', name: 'f' }] }, 'input[0].arguments', 'missing_required_parameter')
    refused({ ...base, input: [{ type: 'function_call', call_id: 'c', name: 'f', arguments: {} }] }, 'input[0].arguments', 'invalid_type')
    refused({ ...base, input: [{ type: 'function_call_output', output: 'x' }] }, 'input[0].call_id', 'missing_required_parameter')
    refused({ ...base, input: [{ type: 'function_call_output', call_id: 'c' }] }, 'input[0].output', 'missing_required_parameter')
    refused({ ...base, input: [{ type: 'function_call_output', call_id: 'c', output: [{ type: 'input_image' }] }] }, 'input[0].output[0].type', 'unsupported_parameter')
  })

  it('renames the engine\'s chat params to the Responses ones', () => {
    assert.equal(responsesToolParam('tools[3].function.name'), 'tools[3].name')
    assert.equal(responsesToolParam('tools[0].function.parameters'), 'tools[0].parameters')
    assert.equal(responsesToolParam('tools[0].function'), 'tools[0]')
    assert.equal(responsesToolParam('tool_choice.function.name'), 'tool_choice.name')
    assert.equal(responsesToolParam('messages[1]'), null)
  })

  it('puts a call in the whole response as a function_call item', () => {
    const echo = parseResponsesRequest({ ...base, tools: [{ type: 'function', name: 'f' }], tool_choice: 'required' }).echo
    const r = responseObject({ id: 'resp_1', createdAt: 1, model: 'm', status: 'completed', output: [functionCallItem('fc_1', 'completed', 'call_1', 'f', '{}')], usage: usageOf(1, 1), completedAt: 2 }, echo)
    assert.deepEqual(r.output, [{ id: 'fc_1', type: 'function_call', status: 'completed', call_id: 'call_1', name: 'f', arguments: '{}' }])
    assert.equal(r.tool_choice, 'required')
    assert.deepEqual(r.tools, [{ type: 'function', name: 'f', description: null, parameters: null, strict: null }])
  })

  it('streams a forced call: item added with empty arguments, argument deltas, done events, numbered in sequence', () => {
    const echo = parseResponsesRequest({ ...base, tools: [{ type: 'function', name: 'f' }] }).echo
    const s = new ResponseEventStream({ id: 'resp_1', createdAt: 100, model: 'm' }, echo, 'msg_1', true)
    const all = events(s.start() + s.callStart(0, 'call_1', 'f', 'fc_1') + s.callArguments(0, '{"a"') + s.callArguments(0, ':1}') + s.finish('tool_calls', usageOf(3, 2), 101))
    assert.deepEqual(all.map(e => e.type), [
      'response.created', 'response.in_progress', 'response.output_item.added',
      'response.function_call_arguments.delta', 'response.function_call_arguments.delta',
      'response.function_call_arguments.done', 'response.output_item.done', 'response.completed'
    ])
    assert.deepEqual(all.map(e => e.sequence_number), all.map((_, i) => i))
    assert.deepEqual(all[2].item, { id: 'fc_1', type: 'function_call', status: 'in_progress', call_id: 'call_1', name: 'f', arguments: '' })
    assert.deepEqual(all[3], { type: 'response.function_call_arguments.delta', item_id: 'fc_1', output_index: 0, delta: '{"a"', sequence_number: 3 })
    assert.equal(all[5].arguments, '{"a":1}')
    assert.equal(all[5].item_id, 'fc_1')
    assert.deepEqual(all[6].item, { id: 'fc_1', type: 'function_call', status: 'completed', call_id: 'call_1', name: 'f', arguments: '{"a":1}' })
    assert.deepEqual(all[7].response.output, [all[6].item])
  })

  it('streams text then two calls as three output items in order; a lazy stream with no output still ends with a message', () => {
    const echo = parseResponsesRequest({ ...base, tools: [{ type: 'function', name: 'f' }] }).echo
    const s = new ResponseEventStream({ id: 'resp_1', createdAt: 100, model: 'm' }, echo, 'msg_1', true)
    const all = events(s.start() + s.delta('ok') + s.callStart(0, 'call_1', 'f', 'fc_1') + s.callArguments(0, '{}') + s.callStart(1, 'call_2', 'f', 'fc_2') + s.callArguments(1, '{}') + s.finish('tool_calls', usageOf(3, 2), 101))
    const final = all[all.length - 1].response
    assert.deepEqual(final.output.map((i: any) => [i.type, i.id]), [['message', 'msg_1'], ['function_call', 'fc_1'], ['function_call', 'fc_2']])
    assert.deepEqual(all.filter(e => e.type === 'response.output_item.added').map(e => e.output_index), [0, 1, 2])
    assert.deepEqual(all.filter(e => e.type === 'response.function_call_arguments.delta').map(e => [e.item_id, e.output_index]), [['fc_1', 1], ['fc_2', 2]])
    const empty = new ResponseEventStream({ id: 'resp_2', createdAt: 100, model: 'm' }, echo, 'msg_2', true)
    const none = events(empty.start() + empty.finish('stop', usageOf(1, 0), 101))
    assert.deepEqual(none[none.length - 1].response.output, [{ id: 'msg_2', type: 'message', status: 'completed', role: 'assistant', content: [{ type: 'output_text', text: '', annotations: [], logprobs: [] }] }])
  })

  it('reads chat tool calls from streamed chunks and from a whole result', async () => {
    const collect = async (gen: AsyncGenerator<GenerationEvent>): Promise<GenerationEvent[]> => { const out: GenerationEvent[] = []; for await (const e of gen) out.push(e); return out }
    const chunk = (delta: Record<string, unknown>, finish: string | null = null): Record<string, unknown> => ({ choices: [{ index: 0, delta, finish_reason: finish }] })
    async function * chunks (): AsyncGenerator<JsonPayload> {
      for await (const c of objects()) yield JsonPayload.of(c)
    }
    async function * objects (): AsyncGenerator<Record<string, unknown>> {
      yield chunk({ role: 'assistant', content: 'ok' })
      yield chunk({ tool_calls: [{ index: 0, id: 'call_1', type: 'function', function: { name: 'f', arguments: '' } }] })
      yield chunk({ tool_calls: [{ index: 0, function: { arguments: '{"a"' } }] })
      yield chunk({ tool_calls: [{ index: 0, function: { arguments: ':1}' } }] }, 'tool_calls')
      yield { choices: [], usage: { prompt_tokens: 5, completion_tokens: 4, total_tokens: 9 } }
    }
    assert.deepEqual(await collect(generationEvents({ kind: 'stream', chunks: chunks() }, new AbortController().signal)), [
      { kind: 'text', text: 'ok' },
      { kind: 'tool_start', call: 0, id: 'call_1', name: 'f' },
      { kind: 'tool_args', call: 0, json: '{"a"' },
      { kind: 'tool_args', call: 0, json: ':1}' },
      { kind: 'end', finishReason: 'tool_calls', promptTokens: 5, completionTokens: 4 }
    ])
    const data = { choices: [{ index: 0, message: { role: 'assistant', content: null, tool_calls: [{ id: 'call_2', type: 'function', function: { name: 'g', arguments: '{}' } }] }, finish_reason: 'tool_calls' }], usage: { prompt_tokens: 2, completion_tokens: 3 } }
    assert.deepEqual(await collect(generationEvents({ kind: 'result', data: JsonPayload.fromBytes(Buffer.from(JSON.stringify(data))) }, new AbortController().signal)), [
      { kind: 'tool_start', call: 0, id: 'call_2', name: 'g' },
      { kind: 'tool_args', call: 0, json: '{}' },
      { kind: 'end', finishReason: 'tool_calls', promptTokens: 2, completionTokens: 3 }
    ])
  })
})
