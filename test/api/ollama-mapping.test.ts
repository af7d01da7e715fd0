/** The Ollama mapping (src/api/ollama-mapping.ts): pure functions, driven directly. */
import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { OllamaToolCalls } from '../../src/api/ollama-tools.js'
import { BadRequestError } from '../../src/errors.js'
import {
  chatFinal, chatLine, detailsOf, doneReasonOf, embedResult, generateFinal, mapOptions, parseOllamaChat, parseOllamaEmbed,
  parseOllamaGenerate, psEntry, resolveModelName, showResult, tagsEntry
} from '../../src/api/ollama-mapping.js'
import type { MeshModel } from '../../src/scheduler/index.js'

function refused (fn: () => unknown, param: string): void {
  assert.throws(fn, (err: unknown) => {
    assert.ok(err instanceof BadRequestError, String(err))
    assert.equal(err.param, param)
    return true
  })
}

const model: MeshModel = { name: 'tiny', fingerprint: 'ab'.repeat(32), chosenBy: 'only', hosts: [], conflicts: [], sizeBytes: 1234, architecture: 'llama', quantization: 'F16', contextLength: 256 }

describe('Ollama requests', () => {
  it('maps /api/chat onto a streamed OpenAI chat body, streaming by default', () => {
    const p = parseOllamaChat({
      model: 'tiny:latest',
      messages: [{ role: 'system', content: 's' }, { role: 'user', content: 'u' }, { role: 'assistant' }],
      keep_alive: '10m',
      options: { temperature: 0.2, top_p: 0.5, top_k: 7, seed: 9, num_predict: 12, stop: ['x'], num_ctx: 4096, num_thread: 2, mirostat: 0 }
    }, n => resolveModelName(n, k => k === 'tiny'))
    assert.equal(p.model, 'tiny')
    assert.equal(p.stream, true)
    assert.deepEqual(p.body, {
      model: 'tiny',
      keep_alive: '10m',
      temperature: 0.2,
      top_p: 0.5,
      top_k: 7,
      seed: 9,
      max_tokens: 12,
      stop: ['x'],
      stream: true,
      stream_options: { include_usage: true },
      messages: [{ role: 'system', content: 's' }, { role: 'user', content: 'u' }, { role: 'assistant', content: '' }]
    })
    assert.equal(parseOllamaChat({ model: 'tiny', messages: [], stream: false }).stream, false)
  })

  it('maps format onto response_format for the engine to honour or refuse', () => {
    assert.deepEqual(parseOllamaChat({ model: 'm', messages: [], format: 'json' }).body.response_format, { type: 'json_object' })
    const schema = { type: 'object', properties: { a: { type: 'string' } } }
    assert.deepEqual(parseOllamaChat({ model: 'm', messages: [], format: schema }).body.response_format, { type: 'json_schema', json_schema: { name: 'format', schema, strict: true } })
    refused(() => parseOllamaChat({ model: 'm', messages: [], format: 'yaml' }), 'format')
  })

  it('maps tools, assistant tool_calls (object arguments) and tool results paired by name onto OpenAI chat', () => {
    const tools = [{ type: 'function', function: { name: 'get_weather', description: 'd', parameters: { type: 'object', properties: { city: { type: 'string' } } } } }]
    const p = parseOllamaChat({
      model: 'm',
      tools,
      tool_choice: 'required',
      messages: [
        { role: 'user', content: 'weather?' },
        { role: 'assistant', content: '', tool_calls: [{ function: { name: 'get_weather', arguments: { city: 'Paris' } } }, { id: 'call_given', function: { name: 'other', arguments: {} } }] },
        { role: 'tool', tool_name: 'other', content: 'o' },
        { role: 'tool', tool_name: 'get_weather', content: 'sunny' }
      ]
    })
    assert.deepEqual(p.body.tools, tools)
    assert.equal(p.body.tool_choice, 'required')
    assert.deepEqual(p.body.messages, [
      { role: 'user', content: 'weather?' },
      { role: 'assistant', content: null, tool_calls: [
        { id: 'call_m1c0', type: 'function', function: { name: 'get_weather', arguments: '{"city":"Paris"}' } },
        { id: 'call_given', type: 'function', function: { name: 'other', arguments: '{}' } }
      ] },
      { role: 'tool', content: 'o', tool_call_id: 'call_given' },
      { role: 'tool', content: 'sunny', tool_call_id: 'call_m1c0' }
    ])
    // A second result for an answered call has nothing left to answer.
    refused(() => parseOllamaChat({ model: 'm', messages: [{ role: 'assistant', content: '', tool_calls: [{ function: { name: 'f', arguments: {} } }] }, { role: 'tool', tool_name: 'f', content: '1' }, { role: 'tool', tool_name: 'f', content: '2' }] }), 'messages[2]')
  })

  it('gathers streamed call pieces into whole Ollama calls with object arguments', () => {
    const calls = new OllamaToolCalls()
    assert.equal(calls.take({ kind: 'text', text: 'x' }), false)
    calls.take({ kind: 'tool_start', call: 0, id: 'call_a', name: 'get_weather' })
    calls.take({ kind: 'tool_args', call: 0, json: '{"city":' })
    calls.take({ kind: 'tool_args', call: 0, json: '"Paris"}' })
    calls.take({ kind: 'tool_start', call: 1, id: 'call_b', name: 'cut' })
    calls.take({ kind: 'tool_args', call: 1, json: '{"a":' })
    assert.deepEqual(calls.list(), [
      { id: 'call_a', function: { index: 0, name: 'get_weather', arguments: { city: 'Paris' } } },
      { id: 'call_b', function: { index: 1, name: 'cut', arguments: {} } }
    ])
  })

  it('refuses what it cannot honour, naming the field', () => {
    refused(() => parseOllamaChat({ messages: [] }), 'model')
    refused(() => parseOllamaChat({ model: 'm' }), 'messages')
    refused(() => parseOllamaChat({ model: 'm', messages: [{ role: 'robot', content: 'x' }] }), 'messages[0].role')
    // A tool result must answer a call of the assistant message before it.
    refused(() => parseOllamaChat({ model: 'm', messages: [{ role: 'tool', content: 'x' }] }), 'messages[0]')
    refused(() => parseOllamaChat({ model: 'm', messages: [{ role: 'user', content: 5 }] }), 'messages[0].content')
    refused(() => parseOllamaChat({ model: 'm', messages: [{ role: 'user', content: 'x', images: ['aGk='] }] }), 'messages[0].images')
    refused(() => parseOllamaChat({ model: 'm', messages: [], tools: { name: 'f' } }), 'tools')
    refused(() => parseOllamaChat({ model: 'm', messages: [], tools: [{ type: 'function' }] }), 'tools[0].function')
    refused(() => parseOllamaChat({ model: 'm', messages: [{ role: 'assistant', content: '', tool_calls: [{ function: { arguments: {} } }] }] }), 'messages[0].tool_calls[0].function.name')
    refused(() => parseOllamaChat({ model: 'm', messages: [], think: true }), 'think')
    refused(() => parseOllamaChat({ model: 'm', messages: [], stream: 'no' }), 'stream')
    refused(() => mapOptions({ temperature: 'hot' }), 'options.temperature')
    refused(() => mapOptions({ num_predict: 0 }), 'options.num_predict')
    refused(() => mapOptions({ num_predict: 1e20 }), 'options.num_predict')
    refused(() => mapOptions({ num_predict: 2.5 }), 'options.num_predict')
    refused(() => mapOptions({ stop: [1] }), 'options.stop')
    refused(() => mapOptions({ mirostat: 2 }), 'options.mirostat')
    refused(() => mapOptions({ warp_drive: 1 }), 'options.warp_drive')
    refused(() => mapOptions([1]), 'options')
    refused(() => parseOllamaGenerate({ model: 'm', prompt: 'x', context: [1, 2] }), 'context')
    refused(() => parseOllamaGenerate({ model: 'm', prompt: 'x', suffix: 'y' }), 'suffix')
    refused(() => parseOllamaGenerate({ model: 'm', prompt: 7 }), 'prompt')
    refused(() => parseOllamaEmbed({ model: 'm', input: [] }, false), 'input')
    refused(() => parseOllamaEmbed({ model: 'm', input: ['a', 3] }, false), 'input')
    refused(() => parseOllamaEmbed({ model: 'm' }, true), 'prompt')
    refused(() => parseOllamaEmbed({ model: 'm', input: 'a', options: { temperature: 1 } }, false), 'options')
  })

  it('leaves no limit to the engine for num_predict -1 and -2', () => {
    assert.deepEqual(mapOptions({ num_predict: -1 }), {})
    assert.deepEqual(mapOptions({ num_predict: -2 }), {})
  })

  it('maps /api/generate: templated, raw, and an empty prompt that only loads or unloads', () => {
    const chat = parseOllamaGenerate({ model: 'm', prompt: 'p', system: 's' })
    assert.equal(chat.kind, 'chat')
    assert.deepEqual(chat.body.messages, [{ role: 'system', content: 's' }, { role: 'user', content: 'p' }])
    const raw = parseOllamaGenerate({ model: 'm', prompt: 'p', raw: true, options: { num_predict: 5 }, stream: false })
    assert.equal(raw.kind, 'completion')
    assert.equal(raw.stream, false)
    assert.equal(raw.body.prompt, 'p')
    assert.equal(raw.body.max_tokens, 5)
    assert.equal(parseOllamaGenerate({ model: 'm', prompt: 'p', raw: true }).body.max_tokens, 1 << 20, 'no 16-token default of the completions API')
    const load = parseOllamaGenerate({ model: 'm' })
    assert.equal(load.kind, 'load')
    assert.equal(load.unload, false)
    assert.equal(load.body.max_tokens, 1)
    assert.equal(parseOllamaGenerate({ model: 'm', keep_alive: 0 }).unload, true)
  })

  it('maps /api/embed and the legacy /api/embeddings', () => {
    assert.deepEqual(parseOllamaEmbed({ model: 'm', input: ['a', 'b'], truncate: true, keep_alive: 5 }, false).body, { model: 'm', input: ['a', 'b'], encoding_format: 'float', keep_alive: 5 })
    assert.deepEqual(parseOllamaEmbed({ model: 'm', prompt: 'a' }, true).body, { model: 'm', input: 'a', encoding_format: 'float' })
  })

  it('resolves :latest onto the mesh\'s untagged names, and leaves unknown names alone', () => {
    assert.equal(resolveModelName('tiny:latest', n => n === 'tiny'), 'tiny')
    assert.equal(resolveModelName('tiny', n => n === 'tiny'), 'tiny')
    assert.equal(resolveModelName('other:latest', n => n === 'tiny'), 'other:latest')
    assert.equal(resolveModelName('tiny:7b', n => n === 'tiny'), 'tiny:7b')
  })
})

describe('Ollama answers', () => {
  it('builds chat and generate lines with nanosecond stats', () => {
    const stats = { totalNs: 30, promptNs: 10, evalNs: 20, promptTokens: 4, evalTokens: 2 }
    assert.deepEqual(chatLine('m', 't', 'a'), { model: 'm', created_at: 't', message: { role: 'assistant', content: 'a' }, done: false })
    assert.deepEqual(chatFinal('m', 't', '', 'stop', stats), {
      model: 'm', created_at: 't', message: { role: 'assistant', content: '' }, done_reason: 'stop', done: true,
      total_duration: 30, load_duration: 0, prompt_eval_count: 4, prompt_eval_duration: 10, eval_count: 2, eval_duration: 20
    })
    assert.equal(generateFinal('m', 't', 'x', 'length', stats).response, 'x')
    assert.deepEqual(generateFinal('m', 't', '', 'load', null), { model: 'm', created_at: 't', response: '', done: true, done_reason: 'load' })
    assert.equal(doneReasonOf('length'), 'length')
    assert.equal(doneReasonOf('stop'), 'stop')
  })

  it('orders embeddings by index', () => {
    const out = embedResult('m', { data: [{ index: 1, embedding: [2] }, { index: 0, embedding: [1] }], usage: { prompt_tokens: 3 } }, 5)
    assert.deepEqual(out, { model: 'm', embeddings: [[1], [2]], total_duration: 5, load_duration: 0, prompt_eval_count: 3 })
  })

  it('describes models as tags, ps and show do', () => {
    assert.deepEqual(tagsEntry(model, 'T'), { name: 'tiny', model: 'tiny', modified_at: 'T', size: 1234, digest: 'ab'.repeat(32), details: detailsOf(model) })
    assert.deepEqual(detailsOf(model), { parent_model: '', format: 'gguf', family: 'llama', families: ['llama'], parameter_size: '', quantization_level: 'F16' })
    assert.equal(psEntry(model, 'E').expires_at, 'E')
    const show = showResult(model, 'T')
    assert.deepEqual(show.model_info, { 'general.architecture': 'llama', 'llama.context_length': 256 })
    assert.deepEqual(show.capabilities, ['completion', 'tools', 'embedding'])
  })
})
