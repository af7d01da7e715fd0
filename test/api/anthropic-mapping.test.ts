/**
 * The Anthropic Messages mapping (src/api/anthropic-mapping.ts) and the stop-sequence scanner it
 * relies on (src/node/engines/stop-scanner.ts): pure functions, driven directly.
 */
import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { BadRequestError, ShepherdError } from '../../src/errors.js'
import { toolUseBlock } from '../../src/api/anthropic-tools.js'
import { generationEvents } from '../../src/api/inference-call.js'
import { anthropicError, errorTypeOf, messageId, messageObject, parseMessagesRequest, stopReasonOf, streamEnd, streamStart, textDelta, usageOf } from '../../src/api/anthropic-mapping.js'
import { StopScanner } from '../../src/node/engines/stop-scanner.js'
import { JsonPayload } from '../../src/node/inference-call.js'

const base = { model: 'm', max_tokens: 32, messages: [{ role: 'user', content: 'hi' }] }

function refused (body: unknown, param: RegExp | string, opts: { maxOutputTokens?: number } = {}): void {
  assert.throws(() => parseMessagesRequest(body, opts), (err: unknown) => {
    assert.ok(err instanceof BadRequestError, String(err))
    assert.equal(err.status, 400)
    if (typeof param === 'string') assert.equal(err.param, param)
    else assert.match(err.message, param)
    return true
  })
}

describe('parseMessagesRequest', () => {
  it('maps system (string or blocks), text blocks and sampling onto an OpenAI chat body', () => {
    const p = parseMessagesRequest({
      ...base,
      system: [{ type: 'text', text: 'be brief' }, { type: 'text', text: 'be kind', cache_control: { type: 'ephemeral' } }],
      messages: [
        { role: 'user', content: [{ type: 'text', text: 'a' }, { type: 'text', text: 'b' }] },
        { role: 'assistant', content: 'c' },
        { role: 'user', content: 'd' }
      ],
      temperature: 0.5,
      top_p: 0.9,
      top_k: 20,
      stop_sequences: ['END'],
      metadata: { user_id: 'u1' },
      stream: true
    })
    assert.equal(p.model, 'm')
    assert.equal(p.stream, true)
    assert.deepEqual(p.stops, ['END'])
    assert.deepEqual(p.body, {
      model: 'm',
      messages: [{ role: 'system', content: 'be brief\nbe kind' }, { role: 'user', content: 'a\nb' }, { role: 'assistant', content: 'c' }, { role: 'user', content: 'd' }],
      temperature: 0.5,
      top_p: 0.9,
      top_k: 20,
      max_tokens: 32,
      stream: true,
      stream_options: { include_usage: true }
    })
    // Stops are matched by the API layer, never handed to the engine (which cannot say which fired).
    assert.equal('stop' in p.body, false)
  })

  it('defaults to Anthropic\'s temperature 1 and a whole (non-streamed) answer', () => {
    const p = parseMessagesRequest(base)
    assert.equal(p.body.temperature, 1)
    assert.equal(p.stream, false)
    assert.deepEqual(p.stops, [])
  })

  it('refuses what it cannot honour, naming the field', () => {
    refused({ ...base, max_tokens: undefined }, /max_tokens: Field required/)
    refused({ ...base, max_tokens: 0 }, 'max_tokens')
    refused({ ...base, max_tokens: 1.5 }, 'max_tokens')
    refused({ ...base, max_tokens: '10' }, 'max_tokens')
    refused({ ...base, max_tokens: 1e12 }, /maximum allowed/)
    refused({ ...base, max_tokens: 5000 }, /5000 > 2048/, { maxOutputTokens: 2048 })
    refused({ ...base, messages: [] }, 'messages')
    refused({ ...base, messages: 'hi' }, 'messages')
    refused({ ...base, messages: [{ role: 'system', content: 'x' }] }, 'messages.0.role')
    refused({ ...base, messages: [{ role: 'user' }] }, 'messages.0.content')
    refused({ ...base, messages: [{ role: 'user', content: [{ type: 'image', source: {} }] }] }, /type 'image' are not supported/)
    refused({ ...base, messages: [{ role: 'assistant', content: [{ type: 'tool_result', tool_use_id: 'x' }] }] }, /tool_result only in user turns/)
    refused({ ...base, messages: [{ role: 'user', content: [{ type: 'tool_use', id: 'x', name: 'f', input: {} }] }] }, /tool_use only in assistant turns/)
    refused({ ...base, messages: [{ role: 'assistant', content: [{ type: 'tool_use', id: 'x', name: 'f', input: 'str' }] }] }, 'messages.0.content.0.input')
    refused({ ...base, messages: [{ role: 'user', content: [{ type: 'tool_result' }] }] }, 'messages.0.content.0.tool_use_id')
    refused({ ...base, messages: [{ role: 'user', content: [{ type: 'tool_result', tool_use_id: 'x', content: [{ type: 'image', source: {} }] }] }] }, /type 'image' are not supported/)
    refused({ ...base, messages: [{ role: 'user', content: [{ type: 'text', text: 3 }] }] }, 'messages.0.content.0.text')
    refused({ ...base, tools: { name: 'f' } }, 'tools')
    refused({ ...base, tools: [{ type: 'web_search_20250305', name: 'web_search' }] }, 'tools.0.type')
    refused({ ...base, tools: [{ type: 'bash_20250124', name: 'bash' }] }, /server tool 'bash_20250124' is not supported/)
    refused({ ...base, tools: [{ input_schema: { type: 'object' } }] }, 'tools.0.name')
    refused({ ...base, tools: [{ name: 'f' }] }, 'tools.0.input_schema')
    refused({ ...base, tool_choice: { type: 'sometimes' } }, 'tool_choice.type')
    refused({ ...base, tool_choice: { type: 'tool' } }, 'tool_choice.name')
    refused({ ...base, tool_choice: { type: 'any', disable_parallel_tool_use: 'yes' } }, 'tool_choice.disable_parallel_tool_use')
    refused({ ...base, thinking: { type: 'enabled', budget_tokens: 1024 } }, 'thinking')
    refused({ ...base, temperature: 1.5 }, 'temperature')
    refused({ ...base, top_p: -1 }, 'top_p')
    refused({ ...base, top_k: 2.5 }, 'top_k')
    refused({ ...base, stop_sequences: 'END' }, 'stop_sequences')
    refused({ ...base, stop_sequences: ['  '] }, 'stop_sequences')
    refused({ ...base, stop_sequences: Array(65).fill('x') }, 'stop_sequences')
    refused({ ...base, stream: 'yes' }, 'stream')
    refused({ ...base, model: '' }, 'model')
    refused({ ...base, frequency_penalty: 1 }, /Extra inputs are not permitted/)
    refused([base], /dictionary/)
    refused(null, /dictionary/)
  })

  it('accepts an empty tools list and disabled thinking (they ask for nothing)', () => {
    assert.doesNotThrow(() => parseMessagesRequest({ ...base, tools: [], thinking: { type: 'disabled' } }))
  })

  it('maps tools and tool_choice onto chat tools', () => {
    const schema = { type: 'object', properties: { city: { type: 'string' } }, required: ['city'] }
    const tools = [{ name: 'get_weather', description: 'The weather', input_schema: schema }, { type: 'custom', name: 'f', input_schema: { type: 'object' } }]
    const p = parseMessagesRequest({ ...base, tools, tool_choice: { type: 'tool', name: 'get_weather', disable_parallel_tool_use: true } })
    assert.equal(p.tools, true)
    assert.deepEqual(p.body.tools, [
      { type: 'function', function: { name: 'get_weather', description: 'The weather', parameters: schema } },
      { type: 'function', function: { name: 'f', parameters: { type: 'object' } } }
    ])
    assert.deepEqual(p.body.tool_choice, { type: 'function', function: { name: 'get_weather' } })
    assert.equal(p.body.parallel_tool_calls, false)
    const choice = (c: unknown): unknown => { const b = parseMessagesRequest({ ...base, tools, tool_choice: c }).body; return [b.tool_choice, b.parallel_tool_calls] }
    assert.deepEqual(choice({ type: 'auto' }), ['auto', undefined])
    assert.deepEqual(choice({ type: 'any', disable_parallel_tool_use: false }), ['required', true])
    assert.deepEqual(choice({ type: 'none' }), ['none', undefined])
    const plain = parseMessagesRequest(base)
    assert.equal(plain.tools, false)
    assert.equal('tools' in plain.body, false)
    assert.equal('tool_choice' in plain.body, false)
  })

  it('maps tool_use and tool_result blocks onto tool_calls and tool messages', () => {
    const p = parseMessagesRequest({
      ...base,
      messages: [
        { role: 'user', content: 'Weather in Paris and Rome?' },
        { role: 'assistant', content: [{ type: 'text', text: 'Checking.' }, { type: 'tool_use', id: 'toolu_1', name: 'get_weather', input: { city: 'Paris' } }, { type: 'tool_use', id: 'toolu_2', name: 'get_weather', input: { city: 'Rome' } }] },
        { role: 'user', content: [{ type: 'text', text: 'Thanks!' }, { type: 'tool_result', tool_use_id: 'toolu_1', content: 'sunny' }, { type: 'tool_result', tool_use_id: 'toolu_2', content: [{ type: 'text', text: 'no' }, { type: 'text', text: 'data' }], is_error: true }] },
        { role: 'assistant', content: [{ type: 'tool_use', id: 'toolu_3', name: 'f', input: {} }] },
        { role: 'user', content: [{ type: 'tool_result', tool_use_id: 'toolu_3' }] }
      ]
    })
    assert.deepEqual(p.body.messages, [
      { role: 'user', content: 'Weather in Paris and Rome?' },
      { role: 'assistant', content: 'Checking.', tool_calls: [{ id: 'toolu_1', type: 'function', function: { name: 'get_weather', arguments: '{"city":"Paris"}' } }, { id: 'toolu_2', type: 'function', function: { name: 'get_weather', arguments: '{"city":"Rome"}' } }] },
      { role: 'tool', tool_call_id: 'toolu_1', content: 'sunny' },
      { role: 'tool', tool_call_id: 'toolu_2', content: 'Error: no\ndata' },
      { role: 'user', content: 'Thanks!' },
      { role: 'assistant', content: null, tool_calls: [{ id: 'toolu_3', type: 'function', function: { name: 'f', arguments: '{}' } }] },
      { role: 'tool', tool_call_id: 'toolu_3', content: '' }
    ])
  })

  it('count_tokens needs no max_tokens and generates one token', () => {
    const p = parseMessagesRequest({ model: 'm', messages: base.messages }, { forCount: true })
    assert.equal(p.body.max_tokens, 1)
  })
})

describe('Anthropic output shapes', () => {
  it('builds a message, its stop reasons and ids', () => {
    assert.match(messageId(), /^msg_[A-Za-z0-9]{24}$/)
    assert.equal(stopReasonOf('length', undefined), 'max_tokens')
    assert.equal(stopReasonOf('stop', undefined), 'end_turn')
    assert.equal(stopReasonOf('stop', 'END'), 'stop_sequence')
    assert.equal(stopReasonOf('tool_calls', undefined), 'tool_use')
    assert.deepEqual(toolUseBlock('call_abc', 'f', '{"city":"Paris"}'), { type: 'tool_use', id: 'toolu_abc', name: 'f', input: { city: 'Paris' } })
    assert.deepEqual(toolUseBlock('toolu_x', 'f', ''), { type: 'tool_use', id: 'toolu_x', name: 'f', input: {} })
    assert.throws(() => toolUseBlock('call_1', 'f', '[1]'), (err: unknown) => err instanceof ShepherdError && err.status === 502)
    assert.throws(() => toolUseBlock('call_1', 'f', '{"a":'), (err: unknown) => err instanceof ShepherdError && err.status === 502)
    assert.deepEqual(messageObject({ id: 'msg_1', model: 'm', text: '', stopReason: 'tool_use', stopSequence: null, usage: usageOf(3, 1), blocks: [toolUseBlock('call_1', 'f', '{}')] }).content, [{ type: 'tool_use', id: 'toolu_1', name: 'f', input: {} }])
    assert.deepEqual(messageObject({ id: 'msg_1', model: 'm', text: 'hey', stopReason: 'end_turn', stopSequence: null, usage: usageOf(3, 1) }), {
      id: 'msg_1', type: 'message', role: 'assistant', model: 'm', content: [{ type: 'text', text: 'hey' }], stop_reason: 'end_turn', stop_sequence: null,
      usage: { input_tokens: 3, output_tokens: 1, cache_creation_input_tokens: 0, cache_read_input_tokens: 0 }
    })
  })

  it('streams the exact event sequence', () => {
    const text = streamStart('msg_1', 'm') + textDelta('a') + streamEnd('stop_sequence', 'END', usageOf(4, 2))
    const events = text.trim().split('\n\n').map(block => {
      const [ev, data] = block.split('\n')
      const parsed = JSON.parse(data.replace(/^data: /, ''))
      assert.equal(ev, `event: ${String(parsed.type)}`)
      return parsed
    })
    assert.deepEqual(events.map(e => e.type), ['message_start', 'content_block_start', 'ping', 'content_block_delta', 'content_block_stop', 'message_delta', 'message_stop'])
    assert.deepEqual(events[0].message.content, [])
    assert.equal(events[0].message.stop_reason, null)
    assert.deepEqual(events[1].content_block, { type: 'text', text: '' })
    assert.deepEqual(events[3].delta, { type: 'text_delta', text: 'a' })
    assert.deepEqual(events[5], { type: 'message_delta', delta: { stop_reason: 'stop_sequence', stop_sequence: 'END' }, usage: { input_tokens: 4, output_tokens: 2 } })
  })

  it('reads chat tool calls, streamed and whole, as tool events', async () => {
    async function * objects (): AsyncGenerator<Record<string, unknown>> {
      yield { choices: [{ index: 0, delta: { role: 'assistant', content: 'Hm' } }] }
      yield { choices: [{ index: 0, delta: { tool_calls: [{ index: 0, id: 'call_a', type: 'function', function: { name: 'f', arguments: '' } }] } }] }
      yield { choices: [{ index: 0, delta: { tool_calls: [{ index: 0, function: { arguments: '{"x":' } }] } }] }
      yield { choices: [{ index: 0, delta: { tool_calls: [{ index: 0, function: { arguments: '1}' } }] } }] }
      yield { choices: [{ index: 0, delta: { tool_calls: [{ index: 1, id: 'call_b', type: 'function', function: { name: 'g', arguments: '{}' } }] } }] }
      yield { choices: [{ index: 0, delta: {}, finish_reason: 'tool_calls' }] }
      yield { choices: [], usage: { prompt_tokens: 7, completion_tokens: 5 } }
    }
    // Chunks and results travel as JsonPayloads: values from a local engine, bytes from a relay.
    async function * chunks (): AsyncGenerator<JsonPayload> {
      for await (const c of objects()) yield JsonPayload.of(c)
    }
    const read = async (reply: any): Promise<unknown[]> => { const out: unknown[] = []; for await (const ev of generationEvents(reply, new AbortController().signal)) out.push(ev); return out }
    assert.deepEqual(await read({ kind: 'stream', chunks: chunks() }), [
      { kind: 'text', text: 'Hm' },
      { kind: 'tool_start', call: 0, id: 'call_a', name: 'f' },
      { kind: 'tool_args', call: 0, json: '{"x":' },
      { kind: 'tool_args', call: 0, json: '1}' },
      { kind: 'tool_start', call: 1, id: 'call_b', name: 'g' },
      { kind: 'tool_args', call: 1, json: '{}' },
      { kind: 'end', finishReason: 'tool_calls', promptTokens: 7, completionTokens: 5 }
    ])
    const whole = { choices: [{ message: { role: 'assistant', content: null, tool_calls: [{ id: 'call_a', type: 'function', function: { name: 'f', arguments: '{"x":1}' } }] }, finish_reason: 'tool_calls' }], usage: { prompt_tokens: 3, completion_tokens: 2 } }
    assert.deepEqual(await read({ kind: 'result', data: JsonPayload.fromBytes(Buffer.from(JSON.stringify(whole))) }), [
      { kind: 'tool_start', call: 0, id: 'call_a', name: 'f' },
      { kind: 'tool_args', call: 0, json: '{"x":1}' },
      { kind: 'end', finishReason: 'tool_calls', promptTokens: 3, completionTokens: 2 }
    ])
  })

  it('opens no text block up front when tools are offered', () => {
    const text = streamStart('msg_1', 'm', false) + streamEnd('tool_use', null, usageOf(4, 2), null)
    const types = text.trim().split('\n\n').map(block => JSON.parse(block.split('\n')[1].replace(/^data: /, '')).type)
    assert.deepEqual(types, ['message_start', 'ping', 'message_delta', 'message_stop'])
  })

  it('maps statuses onto Anthropic error types', () => {
    assert.deepEqual(anthropicError(400, 'bad'), { type: 'error', error: { type: 'invalid_request_error', message: 'bad' } })
    assert.equal(errorTypeOf(401), 'authentication_error')
    assert.equal(errorTypeOf(403), 'permission_error')
    assert.equal(errorTypeOf(404), 'not_found_error')
    assert.equal(errorTypeOf(413), 'request_too_large')
    assert.equal(errorTypeOf(415), 'invalid_request_error')
    assert.equal(errorTypeOf(429), 'rate_limit_error')
    assert.equal(errorTypeOf(500), 'api_error')
    assert.equal(errorTypeOf(503), 'overloaded_error')
    assert.equal(errorTypeOf(504), 'timeout_error')
  })
})

describe('StopScanner', () => {
  const run = (stops: string[], pieces: string[]): { out: string, stop?: string } => {
    const s = new StopScanner(stops)
    let out = ''
    for (const p of pieces) {
      const r = s.push(p)
      out += r.emit
      if (r.stop !== undefined) return { out, stop: r.stop }
    }
    return { out: out + s.flush() }
  }

  it('finds a stop split across pieces and never emits any of it', () => {
    assert.deepEqual(run(['is a'], ['Th', 'is', ' ', 'a test']), { out: 'Th', stop: 'is a' })
    assert.deepEqual(run(['END'], ['abc E', 'N', 'Dxyz']), { out: 'abc ', stop: 'END' })
  })

  it('holds back only a possible start of a stop, and releases it when it is not one', () => {
    const s = new StopScanner(['END'])
    assert.deepEqual(s.push('abcE'), { emit: 'abc' })
    assert.deepEqual(s.push('x'), { emit: 'Ex' })
    assert.deepEqual(s.push('EN'), { emit: '' })
    assert.equal(s.flush(), 'EN')
  })

  it('takes the earliest of several stops and passes text through without stops', () => {
    assert.deepEqual(run(['zz', 'b'], ['a b zz']), { out: 'a ', stop: 'b' })
    assert.deepEqual(run([], ['a', 'b']), { out: 'ab' })
    assert.deepEqual(run(['q'], ['a', 'b']), { out: 'ab' })
  })

  it('handles text with repeated prefixes of the stop', () => {
    assert.deepEqual(run(['aab'], ['a', 'a', 'a', 'b']), { out: 'a', stop: 'aab' })
  })
})
