import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import { BadRequestError } from '../../../src/errors.js'
import { SAMPLING_DEFAULTS } from '../../../src/node/engines/constants.js'
import { parseChatRequest, parseCompletionRequest, parseEmbeddingRequest } from '../../../src/node/engines/openai-request.js'
import { decodeEmbedding, encodeEmbedding, normalizeVector } from '../../../src/node/engines/openai-response.js'

function rejects (fn: () => unknown, param: string | null, code = 'invalid_request'): void {
  assert.throws(fn, (err: BadRequestError) => err instanceof BadRequestError && err.param === param && err.code === code)
}

describe('parseChatRequest', () => {
  it('normalizes messages and applies sampling defaults', () => {
    const req = parseChatRequest({
      model: 'm',
      messages: [
        { role: 'developer', content: 'be brief' },
        { role: 'user', content: [{ type: 'text', text: 'a' }, { type: 'text', text: 'b' }] },
        { role: 'assistant', content: null }
      ]
    })
    assert.deepEqual(req.messages, [
      { role: 'system', content: 'be brief' },
      { role: 'user', content: 'a\nb' },
      { role: 'assistant', content: '' }
    ])
    assert.equal(req.sampling.temperature, SAMPLING_DEFAULTS.temperature)
    assert.equal(req.sampling.topP, SAMPLING_DEFAULTS.topP)
    assert.equal(req.sampling.maxTokens, undefined)
    assert.equal(req.sampling.seed, undefined)
    assert.deepEqual(req.sampling.stop, [])
    assert.equal(req.includeUsage, false)
    assert.equal(req.keepAliveMs, undefined)
  })

  it('reads the parameters it honours; null means absent', () => {
    const req = parseChatRequest({
      model: 'm',
      messages: [{ role: 'user', content: 'x' }],
      temperature: 0,
      top_p: 0.5,
      seed: -1,
      stop: 'END',
      max_tokens: 10,
      max_completion_tokens: 5,
      stream_options: { include_usage: true },
      keep_alive: '30s',
      frequency_penalty: null,
      tools: []
    })
    assert.equal(req.sampling.temperature, 0)
    assert.equal(req.sampling.topP, 0.5)
    assert.equal(req.sampling.seed, 2 ** 32 - 1)
    assert.deepEqual(req.sampling.stop, ['END'])
    assert.equal(req.sampling.maxTokens, 5, 'max_completion_tokens wins')
    assert.equal(req.sampling.frequencyPenalty, 0)
    assert.equal(req.includeUsage, true)
    assert.equal(req.keepAliveMs, 30_000)
  })

  it('rejects what it cannot honour, naming the parameter', () => {
    const ok = { model: 'm', messages: [{ role: 'user', content: 'x' }] }
    rejects(() => parseChatRequest(null), null)
    rejects(() => parseChatRequest([]), null)
    rejects(() => parseChatRequest({ ...ok, model: '' }), 'model')
    rejects(() => parseChatRequest({ ...ok, messages: 'hi' }), 'messages')
    rejects(() => parseChatRequest({ ...ok, messages: [{ role: 'tool', content: 'x' }] }), 'messages[0].tool_call_id')
    rejects(() => parseChatRequest({ ...ok, messages: [{ role: 'critic', content: 'x' }] }), 'messages[0].role')
    rejects(() => parseChatRequest({ ...ok, messages: [{ role: 'user', content: [{ type: 'image_url', image_url: {} }] }] }), 'messages[0].content', 'unsupported_parameter')
    rejects(() => parseChatRequest({ ...ok, temperature: -1 }), 'temperature')
    rejects(() => parseChatRequest({ ...ok, top_p: 'high' }), 'top_p')
    rejects(() => parseChatRequest({ ...ok, max_tokens: 1.5 }), 'max_tokens')
    rejects(() => parseChatRequest({ ...ok, max_tokens: 5, max_completion_tokens: -1 }), 'max_completion_tokens')
    rejects(() => parseChatRequest({ ...ok, seed: 0.5 }), 'seed')
    rejects(() => parseChatRequest({ ...ok, stop: Array(17).fill('x') }), 'stop')
    rejects(() => parseChatRequest({ ...ok, n: 3 }), 'n', 'unsupported_parameter')
    rejects(() => parseChatRequest({ ...ok, tools: [{ type: 'function' }] }), 'tools[0].function')
    assert.deepEqual(parseChatRequest({ ...ok, response_format: { type: 'json_object' } }).responseFormat, { type: 'json_object' })
    assert.equal(parseChatRequest({ ...ok, response_format: { type: 'text' } }).responseFormat, undefined)
    rejects(() => parseChatRequest({ ...ok, response_format: { type: 'xml' } }), 'response_format')
    rejects(() => parseChatRequest({ ...ok, grammar: 'root ::= "a"' }), 'grammar', 'unsupported_parameter')
    rejects(() => parseCompletionRequest({ model: 'm', prompt: 'p', json_schema: {} }), 'json_schema', 'unsupported_parameter')
    rejects(() => parseChatRequest({ ...ok, logprobs: true }), 'logprobs', 'unsupported_parameter')
    rejects(() => parseChatRequest({ ...ok, stream_options: { include_usage: 'yes' } }), 'include_usage')
  })
})

describe('parseCompletionRequest', () => {
  it('takes a string, a one-item list or token ids; max_tokens defaults to 16', () => {
    assert.equal(parseCompletionRequest({ model: 'm', prompt: 'hi' }).prompt, 'hi')
    assert.equal(parseCompletionRequest({ model: 'm', prompt: ['hi'] }).prompt, 'hi')
    assert.deepEqual(parseCompletionRequest({ model: 'm', prompt: [1, 2, 3] }).prompt, [1, 2, 3])
    assert.deepEqual(parseCompletionRequest({ model: 'm', prompt: [[4, 5]] }).prompt, [4, 5])
    assert.equal(parseCompletionRequest({ model: 'm', prompt: 'hi' }).sampling.maxTokens, 16)
    assert.equal(parseCompletionRequest({ model: 'm', prompt: 'hi', max_tokens: 3, echo: true }).echo, true)
  })

  it('rejects several prompts, suffix and bad prompts', () => {
    rejects(() => parseCompletionRequest({ model: 'm', prompt: ['a', 'b'] }), 'prompt', 'unsupported_parameter')
    rejects(() => parseCompletionRequest({ model: 'm', prompt: 'a', suffix: 'z' }), 'suffix', 'unsupported_parameter')
    rejects(() => parseCompletionRequest({ model: 'm', prompt: 5 }), 'prompt')
    rejects(() => parseCompletionRequest({ model: 'm', prompt: [1.5] }), 'prompt')
  })
})

describe('parseEmbeddingRequest', () => {
  it('takes strings, string lists and token arrays', () => {
    assert.deepEqual(parseEmbeddingRequest({ model: 'm', input: 'a' }).inputs, ['a'])
    assert.deepEqual(parseEmbeddingRequest({ model: 'm', input: ['a', 'b'] }).inputs, ['a', 'b'])
    assert.deepEqual(parseEmbeddingRequest({ model: 'm', input: [7, 8] }).inputs, [[7, 8]])
    assert.equal(parseEmbeddingRequest({ model: 'm', input: 'a' }).encoding, 'float')
    assert.equal(parseEmbeddingRequest({ model: 'm', input: 'a', encoding_format: 'base64' }).encoding, 'base64')
  })

  it('rejects empty inputs and unknown encodings', () => {
    rejects(() => parseEmbeddingRequest({ model: 'm', input: '' }), 'input')
    rejects(() => parseEmbeddingRequest({ model: 'm', input: [] }), 'input')
    rejects(() => parseEmbeddingRequest({ model: 'm', input: ['a', 3] }), 'input')
    rejects(() => parseEmbeddingRequest({ model: 'm', input: 'a', encoding_format: 'hex' }), 'encoding_format')
  })
})

describe('embedding encoding', () => {
  it('normalizes to unit length in float32 and round-trips through base64', () => {
    const v = normalizeVector([3, 4, 0.1])
    assert.ok(Math.abs(Math.hypot(...v) - 1) < 1e-6)
    assert.ok(v.every(x => Math.fround(x) === x))
    assert.deepEqual(decodeEmbedding(encodeEmbedding(v, 'base64') as string), v)
    assert.equal(Buffer.from(encodeEmbedding(v, 'base64') as string, 'base64').length, 12)
  })
})
