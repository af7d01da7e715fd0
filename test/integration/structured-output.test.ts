/**
 * Structured output through a 2-node mesh, as clients ask for it: entry node A has no model,
 * host B serves the tiny random-weight model, once with each local engine (embedded, and
 * llama-server built by scripts/build-llama-server.sh, cached per machine). The official
 * `openai` client (create, stream, `chat.completions.parse` with a zod schema) and the `ollama`
 * client (`format`). Whatever the random weights pick, the grammar keeps the output valid.
 */
import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { execFile } from 'node:child_process'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { promisify } from 'node:util'
import { Ajv } from 'ajv'
import OpenAI from 'openai'
import { zodResponseFormat } from 'openai/helpers/zod'
import { Ollama } from 'ollama'
import { z } from 'zod'
import { SCHEMA, validate } from '../support/structured-schema.js'
import { createTinyModel } from '../support/tiny-model.js'
import { startNode, stopNode, tempDir, waitFor, type NodeProcess } from '../support/cluster.js'

const MODEL = 'tiny-json'


/** The tiny vocabulary's non-ASCII byte tokens make invalid UTF-8 (see the engine test); banned. */
const NO_BYTE_TOKENS = Object.fromEntries(Array.from({ length: 128 }, (_, b) => [String(3 + 128 + b), -100]))

const base = {
  model: MODEL,
  messages: [{ role: 'user' as const, content: 'Describe a thing as JSON.' }],
  // Far above what the bounded schema can take, so "length" would be a failure, not a truncation.
  max_tokens: 400,
  logit_bias: NO_BYTE_TOKENS
}

function assertValid (text: string | null | undefined, what: string): void {
  let value: unknown
  assert.doesNotThrow(() => { value = JSON.parse(text ?? '') }, `${what} is not JSON: ${String(text)}`)
  assert.ok(validate(value), `${what} breaks the schema: ${JSON.stringify(validate.errors)} in ${String(text)}`)
}

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..')

/** The host's engine flags: the embedded default, or llama-server from the cached build. */
async function engineArgs (engine: string): Promise<string[]> {
  if (engine === 'embedded') return []
  const built = await promisify(execFile)('bash', [path.join(ROOT, 'scripts', 'build-llama-server.sh')], { cwd: ROOT, maxBuffer: 256 * 1024 * 1024 })
  const binary = built.stdout.trim().split('\n').at(-1) ?? ''
  return ['--engine', 'llama-server', '--llamacpp', path.dirname(binary)]
}

for (const engine of ['embedded', 'llama-server']) describe(`structured output through the mesh (${engine} engine)`, () => {
  const nodes: NodeProcess[] = []
  let a: NodeProcess
  let client: OpenAI

  before(async () => {
    const dir = await tempDir('shepherd-models-json-')
    // No space after special tokens: llama-server's chat grammar needs it (see TinyModelOptions).
    await createTinyModel(path.join(dir, `${MODEL}.gguf`), { addSpacePrefix: false })
    a = await startNode({ name: 'json-a' })
    nodes.push(a)
    nodes.push(await startNode({ name: 'json-b', args: ['--bootstrap', `/ip4/127.0.0.1/tcp/${a.p2pPort}`, '--threads', '1', '--models-dir', dir, ...await engineArgs(engine)] }))
    client = new OpenAI({ baseURL: `${a.api}/v1`, apiKey: 'unused', maxRetries: 0 })
    await waitFor('A to see B\'s model', async () => (await client.models.list()).data.some(m => m.id === MODEL), 15_000)
  })

  after(async () => { await Promise.all(nodes.map(async n => await stopNode(n, 'SIGKILL'))) })

  it('json_schema with the openai client: created and streamed answers validate', async () => {
    const response_format = { type: 'json_schema' as const, json_schema: { name: 'thing', schema: SCHEMA, strict: true } }
    for (const seed of [1, 2, 3]) {
      const res = await client.chat.completions.create({ ...base, seed, response_format })
      assert.equal(res.choices[0].finish_reason, 'stop', `seed ${seed}: ${String(res.choices[0].message.content)}`)
      assertValid(res.choices[0].message.content, `seed ${seed}`)
    }
    let text = ''
    let finish: string | null = null
    for await (const chunk of await client.chat.completions.create({ ...base, seed: 4, stream: true, response_format })) {
      text += chunk.choices[0]?.delta.content ?? ''
      finish = chunk.choices[0]?.finish_reason ?? finish
    }
    assert.equal(finish, 'stop', text)
    assertValid(text, 'streamed')
  })

  it('chat.completions.parse with a zod schema gives the parsed object', async () => {
    const Thing = z.object({ color: z.enum(['red', 'green', 'blue']), count: z.number().int(), tags: z.array(z.string().max(12)).max(3) })
    const res = await client.chat.completions.parse({ ...base, seed: 5, response_format: zodResponseFormat(Thing, 'thing') })
    const msg = res.choices[0].message
    assert.equal(res.choices[0].finish_reason, 'stop', String(msg.content))
    assert.ok(msg.parsed !== null, String(msg.content))
    assert.deepEqual(Thing.parse(msg.parsed), msg.parsed)
    assertValid(msg.content, 'parsed')
  })

  it('json_object gives a JSON object', async () => {
    // Unbounded strings: a random model can write one until max_tokens; seed 2 closes (see the engine test).
    const res = await client.chat.completions.create({ ...base, seed: 2, response_format: { type: 'json_object' } })
    assert.equal(res.choices[0].finish_reason, 'stop', String(res.choices[0].message.content))
    const value: unknown = JSON.parse(res.choices[0].message.content ?? '')
    assert.ok(value !== null && typeof value === 'object' && !Array.isArray(value))
  })

  it("Ollama's format (a schema, or \"json\") through the ollama client", async () => {
    const ollama = new Ollama({ host: a.api })
    // Ollama has no logit_bias to ban the tiny vocabulary's non-UTF-8 byte tokens, which
    // llama-server refuses to return: a schema without free text keeps to ASCII.
    const schema = { type: 'object', properties: { color: SCHEMA.properties.color, count: SCHEMA.properties.count, flags: { type: 'array', items: { type: 'boolean' }, maxItems: 3 } }, required: ['color', 'count', 'flags'], additionalProperties: false }
    const check = new Ajv({ strict: true }).compile(schema)
    const res = await ollama.chat({ model: MODEL, messages: base.messages, format: schema, stream: false, options: { seed: 6, num_predict: 400 } })
    assert.equal(res.done_reason, 'stop', res.message.content)
    assert.ok(check(JSON.parse(res.message.content)), res.message.content)
    let streamed = ''
    for await (const part of await ollama.generate({ model: MODEL, prompt: 'A thing:', format: schema, stream: true, options: { seed: 7, num_predict: 400 } })) streamed += part.response
    assert.ok(check(JSON.parse(streamed)), streamed)
    const json = await ollama.chat({ model: MODEL, messages: base.messages, format: 'json', stream: false, options: { seed: 2, num_predict: 300 } })
    assert.equal(json.done_reason, 'stop', json.message.content)
    assert.equal(typeof JSON.parse(json.message.content), 'object')
    await assert.rejects(ollama.chat({ model: MODEL, messages: base.messages, format: { type: 'string', pattern: 'a+' }, stream: false }),
      (err: any) => err.status_code === 400 && /pattern/.test(err.message))
  })

  it('a hostile schema (deep, huge, unsupported) is refused with a 400 at once, and the node keeps serving', async () => {
    // 50 levels: past the 32 a schema may have, within the 128 any JSON body may have (src/api/body-depth.ts).
    const deep = '{"type":"object","properties":{"a":'.repeat(50) + '{"type":"string"}' + '}}'.repeat(50)
    const wide = { type: 'object', properties: Object.fromEntries(Array.from({ length: 20_000 }, (_, i) => [`p${i}`, { type: 'string' }])) }
    const bodies = [
      `{"model":"${MODEL}","messages":[{"role":"user","content":"x"}],"response_format":{"type":"json_schema","json_schema":{"name":"x","schema":${deep}}}}`,
      JSON.stringify({ ...base, response_format: { type: 'json_schema', json_schema: { name: 'x', schema: wide } } }),
      JSON.stringify({ ...base, response_format: { type: 'json_schema', json_schema: { name: 'x', schema: { type: 'string', format: 'email' } } } })
    ]
    for (const body of bodies) {
      const started = performance.now()
      const res = await fetch(`${a.api}/v1/chat/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body })
      const ms = performance.now() - started
      const json = await res.json() as any
      assert.equal(res.status, 400, JSON.stringify(json).slice(0, 300))
      assert.equal(json.error.type, 'invalid_request_error')
      assert.equal(json.error.param, 'response_format', json.error.message)
      assert.ok(ms < 3000, `refused in ${ms.toFixed(0)} ms`)
    }
    // 10,000 levels: refused at the entry as the client's fault. It used to reach the relay, whose
    // JSON.stringify overflowed the stack: a 503 counted against the healthy host's breaker.
    const deeper = '{"type":"object","properties":{"a":'.repeat(10_000) + '{"type":"string"}' + '}}'.repeat(10_000)
    for (let i = 0; i < 6; i++) {
      const bad = await fetch(`${a.api}/v1/chat/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: `{"model":"${MODEL}","messages":[{"role":"user","content":"x"}],"response_format":{"type":"json_schema","json_schema":{"name":"x","schema":${deeper}}}}` })
      const json = await bad.json() as any
      assert.equal(bad.status, 400, JSON.stringify(json).slice(0, 300))
      assert.match(json.error.message, /nested more than 128 levels/)
    }
    const res = await client.chat.completions.create({ ...base, seed: 1, response_format: { type: 'json_schema', json_schema: { name: 'thing', schema: SCHEMA } } })
    assertValid(res.choices[0].message.content, 'after the hostile requests')
  })
})
