/**
 * Validation of the tool fields of a chat request (tool-request.ts through parseChatRequest)
 * and the model-free parts of tool calling (tool-calls.ts): the forced-call grammar schema and
 * the streaming scanner. Hostile requests (10,000 tools, a huge schema, bad names) are refused
 * with a 400 naming the parameter, fast.
 */
import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import { BadRequestError } from '../../../src/errors.js'
import { REQUEST_LIMITS } from '../../../src/node/engines/constants.js'
import { parseChatRequest } from '../../../src/node/engines/openai-request.js'
import { chatCompletion } from '../../../src/node/engines/openai-response.js'
import { chatHistory, forcedCallSchema, ToolCallCollector, ToolCallScanner } from '../../../src/node/engines/tool-calls.js'

const ok = { model: 'm', messages: [{ role: 'user', content: 'x' }] }
const PARAMS = { type: 'object', properties: { city: { type: 'string' } }, required: ['city'], additionalProperties: false }
const tool = (name: string, parameters: unknown = PARAMS, extra: Record<string, unknown> = {}): unknown =>
  ({ type: 'function', function: { name, parameters, ...extra } })

function rejects (fn: () => unknown, param: string | RegExp, code = 'invalid_request'): void {
  assert.throws(fn, (err: BadRequestError) => {
    assert.ok(err instanceof BadRequestError, String(err))
    if (typeof param === 'string') assert.equal(err.param, param, err.message)
    else assert.match(err.param ?? '', param, err.message)
    assert.equal(err.code, code, err.message)
    return true
  })
}

describe('tool fields of a chat request', () => {
  it('parses tools, tool_choice and parallel_tool_calls', () => {
    const req = parseChatRequest({ ...ok, tools: [tool('get_weather', PARAMS, { description: 'd', strict: true }), { type: 'function', function: { name: 'noargs' } }] })
    assert.equal(req.tools?.length, 2)
    assert.deepEqual(req.toolChoice, { type: 'auto' })
    assert.equal(req.parallelToolCalls, true)
    assert.deepEqual(req.tools?.[0], { name: 'get_weather', description: 'd', parameters: PARAMS, grammarParameters: { type: 'object', properties: { city: { type: 'string' } }, additionalProperties: false }, strict: true })
    assert.deepEqual(req.tools?.[1].parameters, { type: 'object', properties: {} }, 'no parameters: no arguments')
    const forced = parseChatRequest({ ...ok, tools: [tool('a')], tool_choice: { type: 'function', function: { name: 'a' } }, parallel_tool_calls: false })
    assert.deepEqual(forced.toolChoice, { type: 'function', name: 'a' })
    assert.equal(forced.parallelToolCalls, false)
    assert.deepEqual(parseChatRequest({ ...ok, tools: [tool('a')], tool_choice: 'required' }).toolChoice, { type: 'required' })
    const none = parseChatRequest({ ...ok, tool_choice: 'none' })
    assert.equal(none.tools, undefined)
    assert.equal(none.toolChoice, undefined, '"none" without tools is allowed and means nothing')
    assert.equal(parseChatRequest({ ...ok, tools: [] }).tools, undefined)
  })

  it('maps legacy functions and function_call onto tools', () => {
    const req = parseChatRequest({ ...ok, functions: [{ name: 'f', parameters: PARAMS }], function_call: { name: 'f' } })
    assert.equal(req.tools?.[0].name, 'f')
    assert.deepEqual(req.toolChoice, { type: 'function', name: 'f' })
    assert.equal(req.parallelToolCalls, false, 'legacy function calling makes one call')
    assert.equal(req.legacyFunctions, true)
    assert.equal(parseChatRequest({ ...ok, tools: [tool('a')] }).legacyFunctions, undefined)
    assert.deepEqual(parseChatRequest({ ...ok, functions: [{ name: 'f' }], function_call: 'none' }).toolChoice, { type: 'none' })
  })

  it('takes assistant tool_calls and tool results in the history', () => {
    const call = { id: 'call_1', type: 'function', function: { name: 'f', arguments: '{"city":"x"}' } }
    const req = parseChatRequest({
      model: 'm',
      tools: [tool('f')],
      messages: [
        { role: 'user', content: 'x' },
        { role: 'assistant', content: null, tool_calls: [call] },
        { role: 'tool', tool_call_id: 'call_1', content: [{ type: 'text', text: '42' }] },
        { role: 'assistant', function_call: { name: 'f', arguments: '{}' } },
        { role: 'function', name: 'f', content: 'r' }
      ]
    })
    assert.deepEqual(req.messages[1], { role: 'assistant', content: '', toolCalls: [call] })
    assert.deepEqual(req.messages[2], { role: 'tool', content: '42', toolCallId: 'call_1' })
    assert.deepEqual(req.messages[4], { role: 'tool', content: 'r', name: 'f' })
    // node-llama-cpp's history: the results attach to the calls of one model response.
    const history = chatHistory(req.messages)
    assert.equal(history.length, 2)
    assert.deepEqual(history[1], {
      type: 'model',
      response: [
        { type: 'functionCall', name: 'f', params: { city: 'x' }, result: 42, startsNewChunk: true },
        { type: 'functionCall', name: 'f', params: {}, result: 'r', startsNewChunk: true }
      ]
    })
  })

  it('refuses bad tools with a 400 naming the parameter', () => {
    rejects(() => parseChatRequest({ ...ok, tools: 'x' }), 'tools')
    rejects(() => parseChatRequest({ ...ok, tools: [{ type: 'retrieval' }] }), 'tools[0].type', 'unsupported_parameter')
    rejects(() => parseChatRequest({ ...ok, tools: [tool('bad name')] }), 'tools[0].function.name')
    rejects(() => parseChatRequest({ ...ok, tools: [tool('x'.repeat(65))] }), 'tools[0].function.name')
    rejects(() => parseChatRequest({ ...ok, tools: [tool('a'), tool('a')] }), 'tools')
    rejects(() => parseChatRequest({ ...ok, tools: [tool('a', { type: 'string' })] }), 'tools[0].function.parameters')
    rejects(() => parseChatRequest({ ...ok, tools: [tool('a', [])] }), 'tools[0].function.parameters')
    rejects(() => parseChatRequest({ ...ok, tools: [tool('a', PARAMS, { description: 5 })] }), 'tools[0].function.description')
    rejects(() => parseChatRequest({ ...ok, tools: [tool('a', { type: 'object', properties: { s: { type: 'string', pattern: 'a+' } } }, { strict: true })] }),
      'tools[0].function.parameters', 'unsupported_parameter')
    rejects(() => parseChatRequest({ ...ok, tools: [tool('a')], tool_choice: 'always' }), 'tool_choice')
    rejects(() => parseChatRequest({ ...ok, tools: [tool('a')], tool_choice: { type: 'function', function: { name: 'b' } } }), 'tool_choice')
    rejects(() => parseChatRequest({ ...ok, tool_choice: 'required' }), 'tool_choice')
    rejects(() => parseChatRequest({ ...ok, tools: [tool('a')], parallel_tool_calls: 'yes' }), 'parallel_tool_calls')
    rejects(() => parseChatRequest({ ...ok, tools: [tool('a')], functions: [{ name: 'b' }] }), 'functions')
    rejects(() => parseChatRequest({ ...ok, tools: [tool('a')], tool_choice: 'required', response_format: { type: 'json_object' } }), 'response_format', 'unsupported_parameter')
    rejects(() => parseChatRequest({ ...ok, messages: [{ role: 'assistant', tool_calls: [{ id: 1 }] }] }), 'messages[0].tool_calls[0]')
    rejects(() => parseChatRequest({ ...ok, messages: [{ role: 'user', content: 'x' }, { role: 'tool', tool_call_id: 'nope', content: 'r' }] }), 'messages[1]')
  })

  it('a non-strict tool keeps schema keywords the grammar cannot enforce out of its grammar only', () => {
    const params = { type: 'object', properties: { n: { type: 'integer', minimum: 1 }, pattern: { type: 'string', pattern: '^a', format: 'email' } } }
    const [t] = parseChatRequest({ ...ok, tools: [tool('a', params)] }).tools ?? []
    assert.deepEqual(t.parameters, params, 'forwarded as given')
    assert.deepEqual(t.grammarParameters, { type: 'object', properties: { n: { type: 'integer' }, pattern: { type: 'string' } } }, 'a property named "pattern" stays')
    // MCP- and pydantic-style schemas: a typeless property, a one-item allOf around a $ref.
    const mcp = { type: 'object', properties: { q: { description: 'anything' }, r: { allOf: [{ $ref: '#/$defs/R' }], description: 'r' } }, $defs: { R: { type: 'string', enum: ['a'] } } }
    const [m] = parseChatRequest({ ...ok, tools: [tool('m', mcp)] }).tools ?? []
    assert.deepEqual(m.grammarParameters, { type: 'object', properties: { q: { oneOf: [{ type: 'string' }, { type: 'number' }, { type: 'boolean' }, { type: 'null' }] }, r: { $ref: '#/$defs/R' } }, $defs: { R: { enum: ['a'] } } })
    rejects(() => parseChatRequest({ ...ok, tools: [tool('m', mcp, { strict: true })] }), 'tools[0].function.parameters', 'unsupported_parameter')
  })

  it('hostile: 10,000 tools, a huge schema, a deep schema: 400 fast', () => {
    const start = performance.now()
    rejects(() => parseChatRequest({ ...ok, tools: Array.from({ length: 10_000 }, (_, i) => tool(`t${i}`)) }), 'tools')
    const wide = { type: 'object', properties: Object.fromEntries(Array.from({ length: 50_000 }, (_, i) => [`p${i}`, { type: 'string' }])) }
    rejects(() => parseChatRequest({ ...ok, tools: [tool('a', wide)] }), 'tools[0].function.parameters')
    let deep: Record<string, unknown> = { type: 'string' }
    for (let i = 0; i < 5000; i++) deep = { type: 'object', properties: { x: deep } }
    rejects(() => parseChatRequest({ ...ok, tools: [tool('a', deep)] }), 'tools[0].function.parameters')
    rejects(() => parseChatRequest({ ...ok, tools: [tool('a', PARAMS, { description: 'd'.repeat(REQUEST_LIMITS.maxToolDescriptionChars + 1) })] }), 'tools[0].function.description')
    rejects(() => parseChatRequest({ ...ok, messages: [{ role: 'assistant', tool_calls: Array(10_000).fill({ id: 'c', function: { name: 'f', arguments: '{}' } }) }] }), 'messages[0].tool_calls')
    const elapsed = performance.now() - start
    assert.ok(elapsed < 2000, `refusals took ${elapsed} ms`)
  })
})

describe('forced calls', () => {
  it('the grammar schema: name const + arguments, oneOf per tool, an array with parallel calls, $defs hoisted', () => {
    const withDefs = { type: 'object', properties: { p: { $ref: '#/$defs/P' } }, $defs: { P: { type: 'string' } } }
    const tools = parseChatRequest({ ...ok, tools: [tool('a'), tool('b', withDefs)] }).tools ?? []
    const one = forcedCallSchema(tools, { type: 'function', name: 'a' }, true)
    assert.deepEqual(one, {
      type: 'object',
      properties: { name: { const: 'a' }, arguments: tools[0].grammarParameters },
      required: ['name', 'arguments'],
      additionalProperties: false
    })
    const many = forcedCallSchema(tools, { type: 'required' }, true)
    assert.equal(many.type, 'array')
    assert.equal(many.minItems, 1)
    assert.equal(many.maxItems, REQUEST_LIMITS.maxParallelToolCalls)
    const variants = (many.items as { oneOf: Array<{ properties: { arguments: unknown } }> }).oneOf
    assert.equal(variants.length, 2)
    assert.deepEqual(variants[1].properties.arguments, { type: 'object', properties: { p: { $ref: '#/$defs/t1_P' } } })
    assert.deepEqual(many.$defs, { t1_P: { type: 'string' } })
    assert.equal(forcedCallSchema(tools, { type: 'required' }, false).oneOf !== undefined, true)
  })

  it('the scanner cuts streamed JSON into OpenAI deltas at any split', () => {
    const text = '[{"name": "a", "arguments": {"s": "x}\\"{", "n": [1, {"k": 2}]}}, {"name":"b","arguments":{}}]'
    for (const size of [1, 2, 3, 7, text.length]) {
      const scanner = new ToolCallScanner(true)
      const deltas = []
      for (let i = 0; i < text.length; i += size) deltas.push(...scanner.feed(text.slice(i, i + size)))
      assert.deepEqual(scanner.calls.map(c => [c.function.name, c.function.arguments]), [['a', '{"s": "x}\\"{", "n": [1, {"k": 2}]}'], ['b', '{}']])
      const starts = deltas.filter(d => d.id !== undefined)
      assert.deepEqual(starts.map(d => [d.index, d.function?.name, d.function?.arguments]), [[0, 'a', ''], [1, 'b', '']])
      assert.equal(starts[0].id, scanner.calls[0].id)
      for (const index of [0, 1]) {
        const args = deltas.filter(d => d.index === index && d.id === undefined).map(d => d.function?.arguments).join('')
        assert.equal(args, scanner.calls[index].function.arguments, `split ${size}`)
      }
    }
    const single = new ToolCallScanner(false)
    single.feed('{"name": "f", "arguments": {"a": 1}}')
    assert.deepEqual(single.calls.map(c => c.function.arguments), ['{"a": 1}'])
  })

  it('the collector of node-llama-cpp calls: streamed params, or {} for a call without any', () => {
    const c = new ToolCallCollector(undefined)
    const d1 = c.params({ callIndex: 0, functionName: 'f', paramsChunk: '{"a":' })
    const d2 = c.params({ callIndex: 0, functionName: 'f', paramsChunk: ' 1}' })
    assert.equal(d1[0].id?.startsWith('call_'), true)
    assert.deepEqual(d2, [{ index: 0, function: { arguments: ' 1}' } }])
    const { calls, deltas } = c.finish([{ functionName: 'f', params: { a: 1 } }, { functionName: 'g', params: undefined }])
    assert.deepEqual(calls.map(x => [x.function.name, x.function.arguments]), [['f', '{"a": 1}'], ['g', '{}']])
    assert.deepEqual(deltas.map(d => [d.index, d.function?.name, d.function?.arguments]), [[1, 'g', ''], [1, undefined, '{}']])
  })

  it('a response with calls: content null, tool_calls, finish_reason tool_calls', () => {
    const call = { id: 'call_x', type: 'function' as const, function: { name: 'f', arguments: '{}' } }
    const res = chatCompletion({ id: 'chatcmpl-1', created: 1, model: 'm' }, { text: '', reasoning: '', finishReason: 'tool_calls', promptTokens: 1, completionTokens: 1, toolCalls: [call] })
    assert.deepEqual(res.choices[0], { index: 0, message: { role: 'assistant', content: null, refusal: null, tool_calls: [call] }, logprobs: null, finish_reason: 'tool_calls' })
    const plain = chatCompletion({ id: 'chatcmpl-1', created: 1, model: 'm' }, { text: 'hi', reasoning: '', finishReason: 'stop', promptTokens: 1, completionTokens: 1 })
    assert.equal(plain.choices[0].message.content, 'hi')
    assert.equal('tool_calls' in plain.choices[0].message, false)
  })
})
