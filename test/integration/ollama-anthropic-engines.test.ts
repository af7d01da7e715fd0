/**
 * The Ollama and Anthropic APIs on the upstream engine behind a peer (entry node A has no model):
 * an OpenAI-compatible server (the stand-in of test/support/upstream-standin.ts, which echoes the
 * prompt word by word, so texts, counts and stops are exact). The embedded engine is covered by
 * ollama-anthropic.test.ts. llama-server is not tested here: with the tiny random-weight model,
 * llama.cpp's own output parser refuses what the model writes ("does not match the expected
 * peg-native format") on /v1/chat/completions and /v1/completions alike, an engine matter.
 */
import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import Anthropic from '@anthropic-ai/sdk'
import { Ollama } from 'ollama'
import { UpstreamStandin } from '../support/upstream-standin.js'
import { startNode, stopNode, waitFor, type NodeProcess } from '../support/cluster.js'

const PROMPT = 'alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho sigma tau upsilon'
const ECHO = `You said ${PROMPT}`

describe('Ollama and Anthropic APIs through an upstream engine behind a peer', () => {
  let upstream: UpstreamStandin
  const nodes: NodeProcess[] = []
  let ollama: Ollama
  let claude: Anthropic

  before(async () => {
    upstream = await UpstreamStandin.start({ models: ['remote-llm'], chunkDelayMs: 30 })
    const a = await startNode({ name: 'oa-up-a' })
    nodes.push(a)
    nodes.push(await startNode({ name: 'oa-up-b', args: ['--bootstrap', `/ip4/127.0.0.1/tcp/${a.p2pPort}`, '--engine', 'none', '--upstream', upstream.url] }))
    ollama = new Ollama({ host: a.api })
    claude = new Anthropic({ baseURL: a.api, apiKey: 'unused', maxRetries: 0 })
    await waitFor('A to see the upstream model', async () => (await ollama.list()).models.some(m => m.name === 'remote-llm'), 15_000)
  })

  after(async () => {
    await Promise.all(nodes.map(async n => await stopNode(n, 'SIGKILL')))
    await upstream?.close()
  })

  const lastBody = (p: string): any => JSON.parse(upstream.received.filter(r => r.path === p).at(-1)!.body.toString())

  it('Ollama chat and generate: exact text and counts, options mapped onto the OpenAI request', async () => {
    const res = await ollama.chat({ model: 'remote-llm:latest', messages: [{ role: 'user', content: PROMPT }], stream: false, options: { temperature: 0.3, top_p: 0.8, seed: 5, stop: ['zzz'], num_ctx: 8192 }, keep_alive: '2m' })
    assert.equal(res.message.content, ECHO)
    assert.equal(res.eval_count, ECHO.split(' ').length)
    assert.equal(res.prompt_eval_count, PROMPT.split(' ').length + 1)
    assert.equal(res.done_reason, 'stop')
    const sent = lastBody('/v1/chat/completions')
    assert.equal(sent.model, 'remote-llm')
    assert.equal(sent.temperature, 0.3)
    assert.equal(sent.top_p, 0.8)
    assert.equal(sent.seed, 5)
    assert.deepEqual(sent.stop, ['zzz'])
    assert.equal(sent.num_ctx, undefined, 'load-time options stay with the node')
    let streamed = ''
    let last: any
    for await (const part of await ollama.chat({ model: 'remote-llm', messages: [{ role: 'user', content: PROMPT }], stream: true, options: { num_predict: 5 } })) {
      streamed += part.message.content
      last = part
    }
    assert.equal(streamed, ECHO.split(' ').slice(0, 5).join(' '))
    assert.equal(last.done_reason, 'length')
    assert.equal(last.eval_count, 5)
    const raw = await ollama.generate({ model: 'remote-llm', prompt: PROMPT, raw: true, stream: false })
    assert.equal(raw.response, ECHO, 'a raw prompt goes to /v1/completions without the 16-token default')
    assert.equal(lastBody('/v1/completions').prompt, PROMPT)
    const emb = await ollama.embed({ model: 'remote-llm', input: ['a', 'b'] })
    assert.equal(emb.embeddings.length, 2)
  })

  it('Anthropic: exact text, max_tokens, and a stop sequence that stops the upstream generation', async () => {
    const msg = await claude.messages.create({ model: 'remote-llm', max_tokens: 100, system: 'sys', messages: [{ role: 'user', content: PROMPT }] })
    assert.deepEqual(msg.content, [{ type: 'text', text: ECHO }])
    assert.equal(msg.stop_reason, 'end_turn')
    assert.equal(msg.usage.output_tokens, ECHO.split(' ').length)
    assert.equal(msg.usage.input_tokens, PROMPT.split(' ').length + 1)
    const sent = lastBody('/v1/chat/completions')
    assert.deepEqual(sent.messages, [{ role: 'system', content: 'sys' }, { role: 'user', content: PROMPT }])
    assert.equal(sent.stop, undefined, 'stop sequences are matched by the API layer')
    const short = await claude.messages.create({ model: 'remote-llm', max_tokens: 3, messages: [{ role: 'user', content: PROMPT }] })
    assert.deepEqual(short.content, [{ type: 'text', text: 'You said alpha' }])
    assert.equal(short.stop_reason, 'max_tokens')
    const closedBefore = upstream.closedEarly
    const t0 = performance.now()
    const stopped = await claude.messages.stream({ model: 'remote-llm', max_tokens: 100, stop_sequences: ['ta gam', 'never'], messages: [{ role: 'user', content: PROMPT }] }).finalMessage()
    const ms = performance.now() - t0
    assert.deepEqual(stopped.content, [{ type: 'text', text: 'You said alpha be' }])
    assert.equal(stopped.stop_reason, 'stop_sequence')
    assert.equal(stopped.stop_sequence, 'ta gam')
    // 23 words at 30 ms each take ~700 ms; the stop came at the 5th word, and the upstream saw its request closed.
    assert.ok(ms < 600, `answered in ${ms.toFixed(0)} ms`)
    await waitFor('the upstream request closed early', () => upstream.closedEarly > closedBefore, 3000)
    const whole = await claude.messages.create({ model: 'remote-llm', max_tokens: 100, stop_sequences: ['delta'], messages: [{ role: 'user', content: PROMPT }] })
    assert.deepEqual(whole.content, [{ type: 'text', text: 'You said alpha beta gamma ' }])
    assert.equal(whole.stop_sequence, 'delta')
    const count = await claude.messages.countTokens({ model: 'remote-llm', messages: [{ role: 'user', content: PROMPT }] })
    assert.equal(count.input_tokens, PROMPT.split(' ').length + 1)
  })
})
