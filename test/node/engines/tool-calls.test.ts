/**
 * Tool calling on the embedded engine with the tiny random-weight model: a forced choice
 * ("required" or a named function) is enforced by grammar, so whatever the weights pick the
 * reply is a call whose arguments validate against the function's parameters schema, in
 * OpenAI's exact shapes, streamed and not. A `role: "tool"` follow-up turn renders through the
 * model's template and generates.
 */
import assert from 'node:assert/strict'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, it } from 'node:test'
import { Ajv } from 'ajv'
import { getLlama, type Llama } from 'node-llama-cpp'
import {
  EmbeddedEngine,
  type ChatCompletionChunk,
  type ChatCompletionRequest
} from '../../../src/node/engines/index.js'
import { assertMatchesOpenAISchema } from '../../support/openai-schema.js'
import { createTinyModel } from '../../support/tiny-model.js'

/** See structured-output.test.ts: the tiny model's non-UTF-8 byte tokens, banned. */
const NO_BYTE_TOKENS = Object.fromEntries(Array.from({ length: 128 }, (_, b) => [String(3 + 128 + b), -100]))

const WEATHER = {
  type: 'object',
  properties: {
    city: { type: 'string', maxLength: 8 },
    days: { type: 'integer' }
  },
  required: ['city', 'days'],
  additionalProperties: false
}
const TIME = {
  type: 'object',
  properties: { zone: { type: 'string', enum: ['utc', 'local'] } },
  required: ['zone'],
  additionalProperties: false
}
const ajv = new Ajv({ strict: true })
const validators: Record<string, ReturnType<Ajv['compile']>> = {
  get_weather: ajv.compile(WEATHER),
  get_time: ajv.compile(TIME)
}

const TOOLS: ChatCompletionRequest['tools'] = [
  { type: 'function', function: { name: 'get_weather', parameters: WEATHER, strict: true } },
  { type: 'function', function: { name: 'get_time', parameters: TIME } }
]

function body (over: Partial<ChatCompletionRequest> = {}): ChatCompletionRequest {
  return { model: 'tiny', messages: [{ role: 'user', content: 'Weather?' }], max_tokens: 300, logit_bias: NO_BYTE_TOKENS, tools: TOOLS, ...over }
}

function assertCall (call: { id: string, type: string, function: { name: string, arguments: string } }, what: string, name?: string): void {
  assert.match(call.id, /^call_[A-Za-z0-9]{24}$/, what)
  assert.equal(call.type, 'function')
  if (name !== undefined) assert.equal(call.function.name, name, what)
  const validate = validators[call.function.name]
  assert.ok(validate !== undefined, `${what}: unknown function ${call.function.name}`)
  const args: unknown = JSON.parse(call.function.arguments)
  assert.ok(validate(args), `${what}: ${JSON.stringify(validate.errors)} in ${call.function.arguments}`)
}

interface Collected { calls: Array<{ id: string, type: string, function: { name: string, arguments: string } }>, finish: string | null, content: string, chunks: ChatCompletionChunk[] }

async function collect (chunks: AsyncIterable<ChatCompletionChunk>): Promise<Collected> {
  const out: Collected = { calls: [], finish: null, content: '', chunks: [] }
  for await (const chunk of chunks) {
    assertMatchesOpenAISchema('CreateChatCompletionStreamResponse', chunk)
    out.chunks.push(chunk)
    for (const c of chunk.choices) {
      out.content += c.delta.content ?? ''
      for (const d of c.delta.tool_calls ?? []) {
        if (d.id !== undefined) {
          assert.equal(d.index, out.calls.length, 'a new call takes the next index')
          assert.equal(d.type, 'function')
          assert.ok(d.function?.name !== undefined && d.function.name.length > 0, 'the first delta of a call names the function')
          out.calls.push({ id: d.id, type: 'function', function: { name: d.function.name, arguments: d.function.arguments ?? '' } })
        } else {
          assert.equal(d.function?.name, undefined, 'later deltas carry only argument text')
          out.calls[d.index].function.arguments += d.function?.arguments ?? ''
        }
      }
      out.finish = c.finish_reason ?? out.finish
    }
  }
  return out
}

let dir: string
let llama: Llama
let engine: EmbeddedEngine

before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'shepherd-tools-'))
  // node-llama-cpp's function documentation in the system prompt alone takes ~650 tokens.
  await createTinyModel(join(dir, 'tiny.gguf'), { addSpacePrefix: false, contextLength: 2048 })
  llama = await getLlama({ gpu: false, maxThreads: 1, build: 'never' })
  engine = new EmbeddedEngine({ modelsDirs: [dir], threads: 1, llama, keepAliveMs: Infinity })
})

after(async () => {
  await engine?.close()
  await llama?.dispose()
  if (dir !== undefined) await rm(dir, { recursive: true, force: true })
})

describe('tool calls on the embedded engine', () => {
  it('tool_choice "required": a valid call, content null, finish_reason tool_calls', async () => {
    for (const seed of [1, 2, 3]) {
      const res = await engine.chat(body({ seed, tool_choice: 'required', parallel_tool_calls: false }))
      assertMatchesOpenAISchema('CreateChatCompletionResponse', res)
      const choice = res.choices[0]
      assert.equal(choice.finish_reason, 'tool_calls', `seed ${seed}: ${JSON.stringify(choice.message)}`)
      assert.equal(choice.message.content, null)
      assert.equal(choice.message.tool_calls?.length, 1)
      assertCall(choice.message.tool_calls[0], `seed ${seed}`)
    }
  })

  it('a named function: exactly that call; streamed, the deltas concatenate to the same call', async () => {
    const choice = { type: 'function' as const, function: { name: 'get_weather' } }
    const res = await engine.chat(body({ seed: 4, tool_choice: choice }))
    const call = res.choices[0].message.tool_calls?.[0]
    assert.ok(call !== undefined)
    assertCall(call, 'named', 'get_weather')
    assert.equal(res.choices[0].finish_reason, 'tool_calls')

    const streamed = await collect(engine.chatStream(body({ seed: 4, stream: true, tool_choice: choice })))
    assert.equal(streamed.finish, 'tool_calls')
    assert.equal(streamed.content, '')
    assert.equal(streamed.calls.length, 1)
    assertCall(streamed.calls[0], 'streamed', 'get_weather')
    assert.equal(streamed.calls[0].function.arguments, call.function.arguments, 'the same fixed run, streamed and not')
    assert.equal(streamed.chunks.at(-1)?.choices[0].finish_reason, 'tool_calls')
    assert.deepEqual(streamed.chunks.at(-1)?.choices[0].delta, {}, 'the last chunk only finishes')
  })

  it('"required" with parallel calls: one or more valid calls, each with its own id', async () => {
    const res = await engine.chat(body({ seed: 5, tool_choice: 'required', max_tokens: 600 }))
    const calls = res.choices[0].message.tool_calls ?? []
    assert.equal(res.choices[0].finish_reason, 'tool_calls', JSON.stringify(res.choices[0].message))
    assert.ok(calls.length >= 1)
    calls.forEach((c, i) => { assertCall(c, `call ${i}`) })
    assert.equal(new Set(calls.map(c => c.id)).size, calls.length)
    const streamed = await collect(engine.chatStream(body({ seed: 5, stream: true, tool_choice: 'required', max_tokens: 600 })))
    assert.deepEqual(streamed.calls.map(c => [c.function.name, c.function.arguments]), calls.map(c => [c.function.name, c.function.arguments]))
  })

  it('legacy functions + function_call {name}: enforced like tools, answered in the legacy shape', async () => {
    const legacy: ChatCompletionRequest = {
      model: 'tiny',
      messages: [{ role: 'user', content: 'time?' }],
      max_tokens: 200,
      seed: 6,
      logit_bias: NO_BYTE_TOKENS,
      functions: [{ name: 'get_time', parameters: TIME }],
      function_call: { name: 'get_time' }
    }
    const res = await engine.chat(legacy)
    assertMatchesOpenAISchema('CreateChatCompletionResponse', res)
    const { message, finish_reason: finish } = res.choices[0]
    assert.equal(finish, 'function_call')
    assert.equal(message.tool_calls, undefined)
    assert.ok(message.function_call !== undefined)
    assertCall({ id: 'call_' + 'x'.repeat(24), type: 'function', function: message.function_call }, 'legacy', 'get_time')
    let name = ''
    let args = ''
    let streamedFinish: string | null = null
    for await (const chunk of engine.chatStream({ ...legacy, stream: true })) {
      assertMatchesOpenAISchema('CreateChatCompletionStreamResponse', chunk)
      const c = chunk.choices[0]
      assert.equal(c.delta.tool_calls, undefined)
      name += c.delta.function_call?.name ?? ''
      args += c.delta.function_call?.arguments ?? ''
      streamedFinish = c.finish_reason ?? streamedFinish
    }
    assert.equal(streamedFinish, 'function_call')
    assert.deepEqual({ name, arguments: args }, message.function_call, 'the same fixed run, streamed')
  })

  it('a role "tool" follow-up turn renders and generates; "auto" and "none" answer', async () => {
    const first = await engine.chat(body({ seed: 7, tool_choice: 'required', parallel_tool_calls: false }))
    const call = first.choices[0].message.tool_calls?.[0]
    assert.ok(call !== undefined)
    const history: ChatCompletionRequest['messages'] = [
      { role: 'user', content: 'Weather?' },
      { role: 'assistant', content: null, tool_calls: [call] },
      { role: 'tool', tool_call_id: call.id, content: '{"temperature": 21}' }
    ]
    for (const toolChoice of ['auto', 'none'] as const) {
      const res = await engine.chat(body({ seed: 8, max_tokens: 20, messages: history, tool_choice: toolChoice }))
      const choice = res.choices[0]
      assert.ok(['stop', 'length', 'tool_calls'].includes(choice.finish_reason), `${toolChoice}: ${choice.finish_reason}`)
      if (choice.finish_reason === 'tool_calls') choice.message.tool_calls?.forEach(c => { assertCall(c, toolChoice) })
      else assert.equal(typeof choice.message.content, 'string')
    }
    // The result is rendered into the prompt: a longer result, a longer prompt.
    const short = await engine.chat(body({ seed: 8, max_tokens: 1, messages: history, tool_choice: 'none' }))
    const longer = history.map(m => m.role === 'tool' ? { ...m, content: '{"temperature": 21, "sky": "clear and bright all day"}' } : m)
    const long = await engine.chat(body({ seed: 8, max_tokens: 1, messages: longer, tool_choice: 'none' }))
    assert.ok(long.usage.prompt_tokens >= short.usage.prompt_tokens + 15, `${long.usage.prompt_tokens} vs ${short.usage.prompt_tokens}`)
    // A forced call after the results works too (an agent loop's next step).
    const again = await engine.chat(body({ seed: 9, messages: history, tool_choice: 'required', parallel_tool_calls: false }))
    assertCall(again.choices[0].message.tool_calls?.[0] ?? { id: '', type: '', function: { name: '', arguments: '' } }, 'after results')
  })
})
