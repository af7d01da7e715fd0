/**
 * The embedded engine's `n` choices, `/v1/completions` prompt arrays and embeddings `dimensions`
 * (issue 13): each answered in OpenAI's shape (checked against its schemas), streamed and not.
 */
import assert from 'node:assert/strict'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, it } from 'node:test'
import { BadRequestError } from '../../../src/errors.js'
import { EmbeddedEngine, type TextCompletionChunk, type ChatCompletionChunk } from '../../../src/node/engines/index.js'
import { assertMatchesOpenAISchema } from '../../support/openai-schema.js'
import { createTinyModel, TINY_MODEL } from '../../support/tiny-model.js'
import { NO_BYTE_TOKENS } from '../../support/tool-fixtures.js'

async function collect<T> (it: AsyncIterable<T>): Promise<T[]> {
  const out: T[] = []
  for await (const x of it) out.push(x)
  return out
}

describe('n choices, prompt arrays and embedding dimensions (embedded engine)', () => {
  let dir: string
  let engine: EmbeddedEngine
  const chat = { model: 'tiny', messages: [{ role: 'user' as const, content: 'hello there' }], max_tokens: 12, seed: 7, logit_bias: NO_BYTE_TOKENS }

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'shepherd-choices-'))
    await createTinyModel(join(dir, 'tiny.gguf'))
    engine = new EmbeddedEngine({ modelsDirs: [dir], threads: 1, gpu: 'off' })
  })

  after(async () => {
    await engine.close()
    await rm(dir, { recursive: true, force: true })
  })

  it('chat n = 3: three choices in order, each its own seed, usage summed; streamed the same', async () => {
    const res = await engine.chat({ ...chat, n: 3 })
    assertMatchesOpenAISchema('CreateChatCompletionResponse', res)
    assert.deepEqual(res.choices.map(c => c.index), [0, 1, 2])
    const texts = res.choices.map(c => c.message.content)
    assert.ok(new Set(texts).size > 1, `choices differ: ${JSON.stringify(texts)}`)
    // Choice i is what a single request with seed + i gives.
    const second = await engine.chat({ ...chat, seed: 8 })
    assert.equal(texts[1], second.choices[0].message.content)
    assert.equal(res.usage.prompt_tokens, second.usage.prompt_tokens, 'the prompt counts once')
    const singles = await Promise.all([7, 8, 9].map(async seed => (await engine.chat({ ...chat, seed })).usage.completion_tokens))
    assert.equal(res.usage.completion_tokens, singles.reduce((x, y) => x + y, 0), 'completion tokens summed')

    const chunks = await collect<ChatCompletionChunk>(engine.chatStream({ ...chat, n: 3, stream_options: { include_usage: true } }))
    for (const c of chunks) assertMatchesOpenAISchema('CreateChatCompletionStreamResponse', c)
    const streamed = [0, 1, 2].map(i => chunks.flatMap(c => c.choices.filter(x => x.index === i).map(x => x.delta.content ?? '')).join(''))
    assert.deepEqual(streamed, texts)
    assert.equal(chunks.filter(c => c.choices.some(x => x.finish_reason !== null)).length, 3, 'one finish per choice')
    assert.deepEqual(chunks.at(-1)?.usage, res.usage)
  })

  it('completions: an array of prompts gives one choice per prompt, times n, in order', async () => {
    const base = { model: 'tiny', max_tokens: 6, seed: 3, logit_bias: NO_BYTE_TOKENS }
    const one = await Promise.all(['the cat', 'a dog'].map(async prompt => await engine.completion({ ...base, prompt })))
    const both = await engine.completion({ ...base, prompt: ['the cat', 'a dog'] })
    assertMatchesOpenAISchema('CreateCompletionResponse', both)
    assert.deepEqual(both.choices.map(c => c.index), [0, 1])
    assert.deepEqual(both.choices.map(c => c.text), one.map(r => r.choices[0].text))
    assert.equal(both.usage?.prompt_tokens, one.reduce((s, r) => s + (r.usage?.prompt_tokens ?? 0), 0))

    const twoEach = await engine.completion({ ...base, prompt: ['the cat', 'a dog'], n: 2 })
    assert.deepEqual(twoEach.choices.map(c => c.index), [0, 1, 2, 3])
    assert.equal(twoEach.choices[0].text, one[0].choices[0].text)
    assert.equal(twoEach.choices[2].text, one[1].choices[0].text)
    assert.equal(twoEach.usage?.prompt_tokens, both.usage?.prompt_tokens, 'each prompt counts once whatever n')

    const chunks = await collect<TextCompletionChunk>(engine.completionStream({ ...base, prompt: ['the cat', 'a dog'], stream_options: { include_usage: true } }))
    const streamed = [0, 1].map(i => chunks.flatMap(c => c.choices.filter(x => x.index === i).map(x => x.text)).join(''))
    assert.deepEqual(streamed, both.choices.map(c => c.text))
    assert.deepEqual(chunks.at(-1)?.usage, both.usage)
  })

  it('refuses n and prompt lists past their bounds, naming the parameter', async () => {
    await assert.rejects(engine.chat({ ...chat, n: 9 }), (err: BadRequestError) => err.param === 'n')
    await assert.rejects(engine.completion({ model: 'tiny', prompt: Array.from({ length: 65 }, () => 'x') }), (err: BadRequestError) => err.param === 'prompt')
    await assert.rejects(engine.completion({ model: 'tiny', prompt: ['x', 5] as any }), (err: BadRequestError) => err.param === 'prompt')
  })

  it('response_format with tools the model may call is a 400 naming it, not a format silently dropped', async () => {
    const tools = [{ type: 'function' as const, function: { name: 'f', parameters: { type: 'object', properties: {} } } }]
    const format = { type: 'json_object' as const }
    await assert.rejects(engine.chat({ ...chat, tools, response_format: format }), (err: BadRequestError) => err.param === 'response_format' && err.code === 'unsupported_parameter')
    // With tool_choice none the format applies: the answer is JSON.
    const res = await engine.chat({ ...chat, max_tokens: 60, tools, tool_choice: 'none', response_format: format })
    if (res.choices[0].finish_reason === 'stop') JSON.parse(res.choices[0].message.content ?? '')
    else assert.match(res.choices[0].message.content ?? '', /^\s*\{/)
  })

  it('embeddings dimensions: the first values, renormalized; more than the model makes is a 400', async () => {
    const full = (await engine.embeddings({ model: 'tiny', input: 'hello world' })).data[0].embedding as number[]
    assert.equal(full.length, TINY_MODEL.defaultNEmbd)
    const short = (await engine.embeddings({ model: 'tiny', input: 'hello world', dimensions: 16 })).data[0].embedding as number[]
    assert.equal(short.length, 16)
    assert.ok(Math.abs(Math.hypot(...short) - 1) < 1e-5, 'unit length')
    const scale = Math.hypot(...full.slice(0, 16))
    short.forEach((v, i) => assert.ok(Math.abs(v - full[i] / scale) < 1e-5, `value ${i}`))
    await assert.rejects(engine.embeddings({ model: 'tiny', input: 'x', dimensions: TINY_MODEL.defaultNEmbd + 1 }), (err: BadRequestError) => err.param === 'dimensions' && err.status === 400)
  })
})
