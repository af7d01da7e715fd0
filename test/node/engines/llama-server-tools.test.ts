/**
 * Tool calling, every choice and logprobs on the llama-server engine (issue 13), with the real
 * llama-server build (scripts/build-llama-server.sh, cached per machine) on the tiny
 * random-weight model: whatever its weights pick, a forced call (`tool_choice` "required" or a
 * named function) is a valid call whose arguments validate against the tool's parameters.
 */
import assert from 'node:assert/strict'
import { execFile } from 'node:child_process'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { dirname, join, resolve } from 'node:path'
import { after, before, describe, it } from 'node:test'
import { fileURLToPath } from 'node:url'
import { promisify } from 'node:util'
import { Ajv } from 'ajv'
import type { ChatCompletionChunk, ChatCompletionRequest } from '../../../src/node/engines/index.js'
import { LlamaServerEngine } from '../../../src/node/engines/llama-server.js'
import { ChatStreamMapper, parseForcedCall, toChatCompletion } from '../../../src/node/engines/llama-tools.js'
import { parseChatRequest } from '../../../src/node/engines/openai-request.js'
import { BadRequestError } from '../../../src/errors.js'
import { parseLlamacppVersion } from '../../../src/node/resources/index.js'
import { assertMatchesOpenAISchema } from '../../support/openai-schema.js'
import { createTinyModel } from '../../support/tiny-model.js'

const execFileAsync = promisify(execFile)
const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..', '..')

/** Byte tokens 0x80-0xFF make text that is not UTF-8 (see structured-output.test.ts). */
const NO_BYTE_TOKENS = Object.fromEntries(Array.from({ length: 128 }, (_, b) => [String(3 + 128 + b), -100]))

const WEATHER = {
  type: 'object',
  properties: {
    city: { type: 'string', maxLength: 12 },
    days: { type: 'integer' },
    unit: { type: 'string', enum: ['c', 'f'] }
  },
  required: ['city', 'days', 'unit'],
  additionalProperties: false
} as const
const TIME = { type: 'object', properties: { zone: { type: 'string', maxLength: 8 } }, required: ['zone'], additionalProperties: false } as const

const ajv = new Ajv({ strict: true })
const VALIDATORS: Record<string, ReturnType<typeof ajv.compile>> = { get_weather: ajv.compile(WEATHER), get_time: ajv.compile(TIME) }

const TOOLS: NonNullable<ChatCompletionRequest['tools']> = [
  { type: 'function', function: { name: 'get_weather', description: 'The weather in a city', parameters: WEATHER } },
  { type: 'function', function: { name: 'get_time', description: 'The time in a zone', parameters: TIME } }
]

function body (over: Partial<ChatCompletionRequest> = {}): ChatCompletionRequest {
  return { model: 'tiny', messages: [{ role: 'user', content: 'What is the weather in Paris?' }], max_tokens: 300, logit_bias: NO_BYTE_TOKENS, tools: TOOLS, ...over }
}

function assertValidCall (name: string, args: string, what: string): void {
  let value: unknown
  assert.doesNotThrow(() => { value = JSON.parse(args) }, `${what}: arguments are not JSON: ${args}`)
  const validate = VALIDATORS[name]
  assert.ok(validate !== undefined, `${what}: unknown function ${name}`)
  assert.ok(validate(value), `${what}: ${JSON.stringify(validate.errors)} in ${args}`)
}

/** The tool calls a stream carries, assembled as the OpenAI SDK does it, with its finish reason. */
async function assemble (chunks: AsyncIterable<ChatCompletionChunk>): Promise<{ calls: Array<{ id: string, name: string, args: string }>, content: string, finish: string | null, firstHasId: boolean, pieces: number }> {
  const calls: Array<{ id: string, name: string, args: string }> = []
  let content = ''
  let finish: string | null = null
  let firstHasId = true
  let pieces = 0
  for await (const chunk of chunks) {
    assertMatchesOpenAISchema('CreateChatCompletionStreamResponse', chunk)
    for (const c of chunk.choices) {
      content += c.delta.content ?? ''
      for (const t of c.delta.tool_calls ?? []) {
        if (calls[t.index] === undefined) {
          if (t.id === undefined || t.type !== 'function' || t.function?.name === undefined) firstHasId = false
          calls[t.index] = { id: t.id ?? '', name: t.function?.name ?? '', args: '' }
        }
        if (t.function?.arguments !== undefined && t.function.arguments !== '') pieces++
        calls[t.index].args += t.function?.arguments ?? ''
      }
      finish = c.finish_reason ?? finish
    }
  }
  return { calls, content, finish, firstHasId, pieces }
}

let dir: string
let engine: LlamaServerEngine

before(async () => {
  const built = await execFileAsync('bash', [join(ROOT, 'scripts', 'build-llama-server.sh')], { cwd: ROOT, maxBuffer: 256 * 1024 * 1024 })
  const binary = built.stdout.trim().split('\n').at(-1) ?? ''
  const version = await execFileAsync(binary, ['--version'])
  const build = parseLlamacppVersion(`${version.stdout}\n${version.stderr}`, binary)
  assert.ok(build !== null)
  dir = await mkdtemp(join(tmpdir(), 'shepherd-llama-tools-'))
  // Without a space after special tokens: llama-server's grammars begin with the generation
  // prompt and fail on "<|im_start|>" + " assistant" (see TinyModelOptions.addSpacePrefix).
  await createTinyModel(join(dir, 'tiny.gguf'), { addSpacePrefix: false })
  engine = new LlamaServerEngine({ builds: [build], modelsDirs: [dir], threads: 1, contextSize: 1024, parallel: 1, keepAliveMs: Infinity, loadTimeoutMs: 60_000 })
})

after(async () => {
  await engine?.close()
  if (dir !== undefined) await rm(dir, { recursive: true, force: true })
})

describe('tool calling on the llama-server engine (real llama-server, tiny model)', () => {
  it('starts llama-server with --jinja', async () => {
    await engine.chat(body({ tools: undefined, max_tokens: 2 }))
    assert.ok(engine.logs('tiny').some(l => l.includes('[shepherd] starting') && l.includes('--jinja')), engine.logs('tiny').slice(0, 3).join('\n'))
  })

  it('tool_choice "required": every seed gives one valid call, in OpenAI\'s shape', async () => {
    for (const seed of [1, 2, 3, 4, 5]) {
      const res = await engine.chat(body({ seed, tool_choice: 'required' }))
      assertMatchesOpenAISchema('CreateChatCompletionResponse', res)
      assert.equal(res.choices.length, 1)
      const choice = res.choices[0]
      assert.equal(choice.finish_reason, 'tool_calls', `seed ${seed}: ${JSON.stringify(choice.message)}`)
      assert.equal(choice.message.content, null)
      assert.equal(choice.message.tool_calls?.length, 1)
      const call = choice.message.tool_calls[0]
      assert.match(call.id, /^call_[A-Za-z0-9]{24}$/)
      assert.equal(call.type, 'function')
      assertValidCall(call.function.name, call.function.arguments, `seed ${seed}`)
      assert.equal(choice.logprobs, null)
    }
  })

  it('a named function is the one called', async () => {
    for (const seed of [1, 2]) {
      const res = await engine.chat(body({ seed, tool_choice: { type: 'function', function: { name: 'get_time' } } }))
      const call = res.choices[0].message.tool_calls?.[0]
      assert.equal(call?.function.name, 'get_time')
      assertValidCall('get_time', call.function.arguments, `named, seed ${seed}`)
    }
  })

  it('streamed: id, type and name first, then argument deltas that assemble to the same valid call', async () => {
    for (const seed of [6, 7]) {
      const streamed = await assemble(engine.chatStream(body({ seed, stream: true, tool_choice: 'required', stream_options: { include_usage: true } })))
      assert.equal(streamed.finish, 'tool_calls')
      assert.equal(streamed.calls.length, 1)
      assert.ok(streamed.firstHasId, 'the first delta of a call names it')
      assert.match(streamed.calls[0].id, /^call_/)
      assert.equal(streamed.content, '')
      assert.ok(streamed.pieces > 1, `arguments came in ${streamed.pieces} piece(s), not streamed`)
      assertValidCall(streamed.calls[0].name, streamed.calls[0].args, `streamed seed ${seed}`)
      const whole = await engine.chat(body({ seed, tool_choice: 'required' }))
      assert.equal(whole.choices[0].message.tool_calls?.[0].function.arguments, streamed.calls[0].args, 'the same fixed run, streamed and not')
    }
  })

  it('a follow-up turn with the call and its role "tool" result is answered (auto), streamed and not', async () => {
    const first = await engine.chat(body({ seed: 1, tool_choice: 'required' }))
    const call = first.choices[0].message.tool_calls?.[0]
    assert.ok(call !== undefined)
    const messages: ChatCompletionRequest['messages'] = [
      { role: 'user', content: 'What is the weather in Paris?' },
      { role: 'assistant', content: null, tool_calls: [call] },
      { role: 'tool', tool_call_id: call.id, content: '{"sky":"sunny"}' }
    ]
    const res = await engine.chat(body({ seed: 2, max_tokens: 20, messages, tool_choice: 'auto' }))
    assertMatchesOpenAISchema('CreateChatCompletionResponse', res)
    assert.ok(['stop', 'length', 'tool_calls'].includes(res.choices[0].finish_reason))
    assert.ok(res.usage.prompt_tokens > 20, 'the history, call and result included, reached the model')
    const streamed = await assemble(engine.chatStream(body({ seed: 2, max_tokens: 20, messages, tool_choice: 'auto', stream: true })))
    assert.ok(streamed.finish !== null)
    // Without tools too (the history still holds a call), and with tool_choice "none".
    assert.equal((await engine.chat(body({ seed: 2, max_tokens: 5, messages, tool_choice: 'none' }))).object, 'chat.completion')
    assert.equal((await engine.chat(body({ seed: 2, max_tokens: 5, messages, tools: undefined }))).object, 'chat.completion')
  })

  it('legacy functions + function_call {name}: answered with message.function_call, streamed and not', async () => {
    const legacy = body({ tools: undefined, seed: 4, functions: [TOOLS[0].function], function_call: { name: 'get_weather' } })
    const res = await engine.chat(legacy)
    assertMatchesOpenAISchema('CreateChatCompletionResponse', res)
    const msg = res.choices[0].message as { function_call?: { name: string, arguments: string }, tool_calls?: unknown }
    assert.equal(res.choices[0].finish_reason, 'function_call')
    assert.equal(msg.tool_calls, undefined)
    assert.equal(msg.function_call?.name, 'get_weather')
    assertValidCall('get_weather', msg.function_call.arguments, 'legacy')
    let args = ''
    let finish: string | null = null
    for await (const chunk of engine.chatStream({ ...legacy, stream: true })) {
      const c = chunk.choices[0] as { delta: { function_call?: { arguments?: string } }, finish_reason: string | null } | undefined
      args += c?.delta.function_call?.arguments ?? ''
      finish = c?.finish_reason ?? finish
    }
    assert.equal(finish, 'function_call')
    assert.equal(args, msg.function_call.arguments)
  })

  it('logprobs / top_logprobs are passed through in OpenAI\'s shape, streamed and not', async () => {
    const res = await engine.chat(body({ tools: undefined, seed: 3, max_tokens: 6, logprobs: true, top_logprobs: 2 }))
    assertMatchesOpenAISchema('CreateChatCompletionResponse', res)
    const content = res.choices[0].logprobs?.content ?? []
    assert.equal(content.length, res.usage.completion_tokens, 'one entry per generated token')
    for (const t of content) {
      assert.ok(t.logprob <= 0 && t.top_logprobs.length === 2, JSON.stringify(t))
      assert.ok(!('id' in t), 'llama-server\'s token ids are not OpenAI fields')
    }
    assert.equal(content.map(t => t.token).join(''), res.choices[0].message.content)
    let streamedTokens = 0
    for await (const chunk of engine.chatStream(body({ tools: undefined, seed: 3, max_tokens: 6, logprobs: true, top_logprobs: 2, stream: true }))) {
      assertMatchesOpenAISchema('CreateChatCompletionStreamResponse', chunk)
      streamedTokens += chunk.choices[0]?.logprobs?.content?.length ?? 0
    }
    assert.equal(streamedTokens, content.length)
    // Without logprobs asked, none come.
    assert.equal((await engine.chat(body({ tools: undefined, seed: 3, max_tokens: 2 }))).choices[0].logprobs, null)
    const refused = (param: string) => (err: unknown) => err instanceof BadRequestError && err.status === 400 && err.param === param
    await assert.rejects(engine.chat(body({ top_logprobs: 2 })), refused('top_logprobs'), 'top_logprobs needs logprobs: true')
    await assert.rejects(engine.chat(body({ logprobs: true, top_logprobs: 21 })), refused('top_logprobs'))
    // An engine that cannot (the embedded one parses without the capability) refuses rather than ignores.
    assert.throws(() => parseChatRequest(body({ logprobs: true })), refused('logprobs'))
    assert.throws(() => parseChatRequest(body({ top_logprobs: 3 })), refused('top_logprobs'))
  })

  it('n > 1 is refused with a 400 naming n (llama-server generates one choice per request)', async () => {
    await assert.rejects(engine.chat(body({ n: 2 })), (err: unknown) => (err as { status?: number, param?: string }).status === 400 && (err as { param?: string }).param === 'n')
  })
})

describe('llama-server answers mapped to OpenAI shapes (pure)', () => {
  it('keeps every choice, its tool calls (ids kept or made) and its logprobs (ids dropped)', () => {
    const res = toChatCompletion({
      id: 'chatcmpl-x',
      created: 5,
      choices: [
        { index: 0, finish_reason: 'stop', message: { content: 'hi' }, logprobs: { content: [{ id: 3, token: 'hi', bytes: [104, 105], logprob: -0.5, top_logprobs: [{ id: 4, token: 'ho', bytes: [104, 111], logprob: -1 }] }] } },
        { index: 1, finish_reason: 'tool_calls', message: { content: null, tool_calls: [{ type: 'function', function: { name: 'f', arguments: '{"a":1}' } }, { id: 'k', type: 'function', function: { name: 'g', arguments: { b: 2 } } }] } }
      ],
      usage: { prompt_tokens: 3, completion_tokens: 4 }
    }, 'tiny')
    assert.equal(res.choices.length, 2)
    assert.deepEqual(res.choices[0].logprobs, { content: [{ token: 'hi', bytes: [104, 105], logprob: -0.5, top_logprobs: [{ token: 'ho', bytes: [104, 111], logprob: -1 }] }], refusal: null })
    assert.equal(res.choices[0].message.content, 'hi')
    const second = res.choices[1]
    assert.equal(second.index, 1)
    assert.equal(second.message.content, null)
    assert.equal(second.finish_reason, 'tool_calls')
    assert.match(second.message.tool_calls?.[0].id ?? '', /^call_/)
    assert.deepEqual(second.message.tool_calls?.[1], { id: 'k', type: 'function', function: { name: 'g', arguments: '{"b":2}' } })
    assert.deepEqual(res.usage, { prompt_tokens: 3, completion_tokens: 4, total_tokens: 7 })
  })

  it('streams llama-server\'s own tool call deltas (auto) through in OpenAI\'s shape', () => {
    const mapper = new ChatStreamMapper('tiny', false)
    const raw = [
      { choices: [{ index: 0, delta: { role: 'assistant', content: null }, finish_reason: null }] },
      { choices: [{ index: 0, delta: { tool_calls: [{ index: 0, id: 'abc', type: 'function', function: { name: 'f', arguments: '' } }] }, finish_reason: null }] },
      { choices: [{ index: 0, delta: { tool_calls: [{ index: 0, function: { arguments: '{"a":' } }] }, finish_reason: null }] },
      { choices: [{ index: 0, delta: { tool_calls: [{ index: 0, function: { arguments: '1}' } }] }, finish_reason: null }] },
      { choices: [{ index: 0, delta: {}, finish_reason: 'tool_calls' }] }
    ]
    const out = raw.flatMap(r => mapper.map({ id: 'c', created: 1, ...r }))
    for (const chunk of out) assertMatchesOpenAISchema('CreateChatCompletionStreamResponse', chunk)
    assert.deepEqual(out[1].choices[0].delta, { tool_calls: [{ index: 0, id: 'abc', type: 'function', function: { name: 'f', arguments: '' } }] })
    assert.deepEqual(out[2].choices[0].delta, { tool_calls: [{ index: 0, function: { arguments: '{"a":' } }] })
    assert.equal(out.at(-1)?.choices[0].finish_reason, 'tool_calls')
  })

  it('a forced call cut by max_tokens says "length"; one that closed on the last token is a call', () => {
    const forced = { names: ['f'] }
    const cut = toChatCompletion({ choices: [{ finish_reason: 'length', message: { content: '{"name": "f", "arguments": {"a": ' } }] }, 'tiny', forced)
    assert.equal(cut.choices[0].finish_reason, 'length')
    assert.equal(cut.choices[0].message.tool_calls, undefined)
    const closed = toChatCompletion({ choices: [{ finish_reason: 'length', message: { content: '{"name": "f", "arguments": {"a": 1}}' } }] }, 'tiny', forced)
    assert.equal(closed.choices[0].finish_reason, 'tool_calls')
    assert.equal(closed.choices[0].message.tool_calls?.[0].function.arguments, '{"a": 1}')
    const mapper = new ChatStreamMapper('tiny', false, forced)
    const out = [
      ...mapper.map({ choices: [{ index: 0, delta: { role: 'assistant', content: '{"name": "f", "arguments": {"a' } , finish_reason: null }] }),
      ...mapper.map({ choices: [{ index: 0, delta: { content: '": ' }, finish_reason: 'length' }] })
    ]
    assert.equal(out.at(-1)?.choices[0].finish_reason, 'length')
  })

  it('reads a forced call only when it names one of the offered functions', () => {
    const forced = { names: ['f'] }
    assert.deepEqual(parseForcedCall('{"name": "f", "arguments": {"a": [1, {}] } }', forced), { name: 'f', arguments: '{"a": [1, {}] }' })
    assert.equal(parseForcedCall('{"name": "g", "arguments": {}}', forced), undefined)
    assert.equal(parseForcedCall('{"name": "f", "arguments": {', forced), undefined)
  })

  it('streams a forced call: braces held back until they cannot close the call object', () => {
    const mapper = new ChatStreamMapper('tiny', false, { names: ['f'] })
    const pieces = ['{"na', 'me": "f", "argu', 'ments": {"s": "a}', '}"', ' }', ' }']
    const out = pieces.flatMap((content, i) => mapper.map({ id: 'c', created: 1, choices: [{ index: 0, delta: i === 0 ? { role: 'assistant', content } : { content }, finish_reason: null }] }))
    out.push(...mapper.map({ id: 'c', created: 1, choices: [{ index: 0, delta: {}, finish_reason: 'stop' }] }))
    const args = out.flatMap(c => c.choices.flatMap(ch => ch.delta.tool_calls ?? [])).map(t => t.function?.arguments ?? '').join('')
    assert.equal(args, '{"s": "a}}" }')
    assert.deepEqual(JSON.parse(args), { s: 'a}}' })
    assert.equal(out.at(-1)?.choices[0].finish_reason, 'tool_calls')
  })
})
