/**
 * The Ollama API and the Anthropic Messages API end to end, through their official clients
 * (`ollama`, `@anthropic-ai/sdk`), against real node processes over HTTP: entry node A has no
 * model and an API key, host B serves the tiny GGUF model with node-llama-cpp, so every call to A
 * is routed across the mesh; a few calls go to B directly (the local path).
 */
import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import path from 'node:path'
import Anthropic from '@anthropic-ai/sdk'
import { Ollama } from 'ollama'
import { createTinyModel, TINY_MODEL } from '../support/tiny-model.js'
import { assertShape } from '../support/shape.js'
import { getJson, startNode, stopNode, tempDir, waitFor, type NodeProcess } from '../support/cluster.js'

const MODEL = 'tiny-chat'
const KEY = 'sk-test-ollama-anthropic'


const STATS = { total_duration: 'integer', load_duration: 'integer', prompt_eval_count: 'integer', prompt_eval_duration: 'integer', eval_count: 'integer', eval_duration: 'integer' } as const
const DETAILS = { parent_model: 'string', format: 'string', family: 'string', families: ['array', 'null'], parameter_size: 'string', quantization_level: 'string' } as const
const USAGE = { input_tokens: 'integer', output_tokens: 'integer', cache_creation_input_tokens: 'integer', cache_read_input_tokens: 'integer' } as const
const MESSAGE = { id: 'string', type: 'string', role: 'string', model: 'string', content: 'array', stop_reason: ['string', 'null'], stop_sequence: ['string', 'null'], usage: 'object' } as const

/** Raw HTTP, for the exact bytes and for what no client sends. */
async function post (url: string, body: string, headers: Record<string, string> = {}): Promise<{ status: number, text: string, json: any, type: string | null }> {
  const res = await fetch(url, { method: 'POST', headers: { 'content-type': 'application/json', ...headers }, body })
  const text = await res.text()
  let json: any
  try { json = JSON.parse(text) } catch { json = undefined }
  return { status: res.status, text, json, type: res.headers.get('content-type') }
}

describe('Ollama and Anthropic APIs across the mesh', () => {
  const nodes: NodeProcess[] = []
  let a: NodeProcess, b: NodeProcess
  let ollama: Ollama, ollamaB: Ollama
  let claude: Anthropic, claudeB: Anthropic
  const auth = { authorization: `Bearer ${KEY}` }

  before(async () => {
    const dir = await tempDir('shepherd-models-oa-')
    await createTinyModel(path.join(dir, `${MODEL}.gguf`))
    a = await startNode({ name: 'entry-a', timeoutMs: 60_000, args: ['--api-key', KEY] })
    nodes.push(a)
    b = await startNode({ name: 'host-b', timeoutMs: 60_000, args: ['--bootstrap', `/ip4/127.0.0.1/tcp/${a.p2pPort}`, '--engine', 'embedded', '--threads', '1', '--keep-alive-ms', '60000', '--models-dir', dir] })
    nodes.push(b)
    ollama = new Ollama({ host: a.api, headers: auth })
    ollamaB = new Ollama({ host: b.api })
    claude = new Anthropic({ baseURL: a.api, apiKey: KEY, maxRetries: 0 })
    claudeB = new Anthropic({ baseURL: b.api, apiKey: 'unused', maxRetries: 0 })
    await waitFor('A to see B\'s model', async () => (await ollama.list()).models.some(m => m.name === MODEL), 15_000)
  })

  after(async () => { await Promise.all(nodes.map(async n => await stopNode(n, 'SIGKILL'))) })

  describe('Ollama', () => {
    it('says it is running, its version, and lists the mesh\'s models as /api/tags', async () => {
      const root = await fetch(`${a.api}/`, { headers: auth })
      assert.equal(root.status, 200)
      assert.equal(await root.text(), 'Ollama is running')
      assert.equal((await fetch(`${a.api}/`, { method: 'HEAD', headers: auth })).status, 200)
      assert.match((await ollama.version()).version, /^\d+\.\d+\.\d+$/)
      const raw: any = await (await fetch(`${a.api}/api/tags`, { headers: auth })).json()
      assert.equal(raw.models.length, 1)
      const m = raw.models[0]
      assertShape(m, { name: 'string', model: 'string', modified_at: 'string', size: 'integer', digest: 'string', details: 'object' }, 'tags entry')
      assertShape(m.details, DETAILS, 'details')
      assert.equal(m.name, MODEL)
      assert.match(m.digest, /^[0-9a-f]{64}$/)
      assert.ok(m.size > 0)
      assert.equal(m.details.format, 'gguf')
      assert.equal(m.details.family, 'llama')
      assert.ok(!Number.isNaN(Date.parse(m.modified_at)))
    })

    it('shows a model, also under its :latest name, and 404s an unknown one', async () => {
      const show: any = await ollama.show({ model: `${MODEL}:latest` })
      assertShape(show, { license: 'string', modelfile: 'string', parameters: 'string', template: 'string', details: 'object', model_info: 'object', capabilities: 'array', modified_at: 'string' }, 'show')
      assert.equal(show.model_info['general.architecture'], 'llama')
      assert.equal(show.model_info['llama.context_length'], TINY_MODEL.contextLength)
      assert.ok(show.capabilities.includes('completion'))
      await assert.rejects(ollama.show({ model: 'no-such-model' }), (err: any) => err.status_code === 404 && /no-such-model/.test(err.error))
    })

    it('chats without streaming, in Ollama\'s exact shape, routed to the host', async () => {
      const res: any = await ollama.chat({ model: MODEL, messages: [{ role: 'user', content: 'Hello there' }], stream: false, options: { temperature: 0, seed: 7, num_predict: 16, num_ctx: 4096 } })
      assertShape(res, { model: 'string', created_at: 'string', message: 'object', done_reason: 'string', done: 'boolean', ...STATS }, 'chat')
      assertShape(res.message, { role: 'string', content: 'string' }, 'chat.message')
      assert.equal(res.model, MODEL)
      assert.equal(res.message.role, 'assistant')
      assert.ok(!Number.isNaN(Date.parse(res.created_at)))
      assert.equal(res.done, true)
      assert.ok(['stop', 'length'].includes(res.done_reason))
      assert.ok(res.eval_count > 0 && res.eval_count <= 16)
      assert.ok(res.prompt_eval_count > 0)
      assert.ok(res.total_duration >= res.eval_duration + res.prompt_eval_duration - 1)
      assert.ok(res.total_duration > 1000, 'nanoseconds')
      const raw = await post(`${a.api}/api/chat`, JSON.stringify({ model: MODEL, messages: [{ role: 'user', content: 'Hello there' }], stream: false, options: { temperature: 0, seed: 7, num_predict: 16 } }), auth)
      assert.equal(raw.status, 200)
      assert.equal(raw.json.message.content, res.message.content, 'deterministic at temperature 0')
    })

    it('streams chat as NDJSON by default, ending with a done line that has the counts', async () => {
      const body = { model: MODEL, messages: [{ role: 'user' as const, content: 'Tell me a story' }], options: { temperature: 0, seed: 3, num_predict: 24 } }
      const whole: any = await ollama.chat({ ...body, stream: false })
      const parts: any[] = []
      for await (const part of await ollama.chat({ ...body, stream: true })) parts.push(part)
      assert.ok(parts.length > 2)
      for (const p of parts.slice(0, -1)) {
        assertShape(p, { model: 'string', created_at: 'string', message: 'object', done: 'boolean' }, 'chat line')
        assert.equal(p.done, false)
      }
      const last = parts[parts.length - 1]
      assertShape(last, { model: 'string', created_at: 'string', message: 'object', done_reason: 'string', done: 'boolean', ...STATS }, 'last chat line')
      assert.equal(last.done, true)
      assert.equal(last.message.content, '')
      assert.equal(parts.map(p => p.message.content).join(''), whole.message.content)
      assert.equal(last.eval_count, whole.eval_count)
      // Without `stream`, Ollama streams: the raw answer is NDJSON.
      const raw = await post(`${a.api}/api/chat`, JSON.stringify(body), auth)
      assert.equal(raw.type, 'application/x-ndjson')
      const lines = raw.text.trim().split('\n').map(l => JSON.parse(l))
      assert.equal(lines.at(-1).done, true)
      assert.equal(lines.map(l => l.message.content).join(''), whole.message.content)
    })

    it('generates (templated, raw, streamed) and loads on an empty prompt', async () => {
      const gen: any = await ollama.generate({ model: MODEL, prompt: 'Once upon', system: 'You are terse.', stream: false, options: { temperature: 0, num_predict: 8 } })
      assertShape(gen, { model: 'string', created_at: 'string', response: 'string', done: 'boolean', done_reason: 'string', ...STATS }, 'generate')
      assert.ok(gen.eval_count > 0 && gen.eval_count <= 8)
      const parts: any[] = []
      for await (const p of await ollama.generate({ model: MODEL, prompt: 'Once upon', system: 'You are terse.', stream: true, options: { temperature: 0, num_predict: 8 } })) parts.push(p)
      assert.equal(parts.map(p => p.response).join(''), gen.response)
      assert.equal(parts.at(-1).done, true)
      const raw: any = await ollama.generate({ model: MODEL, prompt: 'Once upon a time', raw: true, stream: false, options: { temperature: 0, num_predict: 20 } })
      assert.ok(raw.eval_count > 0 && raw.eval_count <= 20, 'raw prompts are not cut at 16 tokens unless asked')
      const load: any = await ollama.generate({ model: MODEL, prompt: '', stream: false })
      assert.equal(load.done, true)
      assert.equal(load.done_reason, 'load')
      assert.equal(load.response, '')
    })

    it('embeds with /api/embed and the legacy /api/embeddings', async () => {
      const res: any = await ollama.embed({ model: MODEL, input: ['hello world', 'goodbye'] })
      assertShape(res, { model: 'string', embeddings: 'array', total_duration: 'integer', load_duration: 'integer', prompt_eval_count: 'integer' }, 'embed')
      assert.equal(res.embeddings.length, 2)
      assert.equal(res.embeddings[0].length, TINY_MODEL.defaultNEmbd)
      assert.ok(res.embeddings[0].every((x: unknown) => typeof x === 'number'))
      assert.notDeepEqual(res.embeddings[0], res.embeddings[1])
      const legacy: any = await ollama.embeddings({ model: MODEL, prompt: 'hello world' })
      assertShape(legacy, { embedding: 'array' }, 'embeddings')
      assert.equal(legacy.embedding.length, TINY_MODEL.defaultNEmbd)
    })

    it('lists the loaded model in /api/ps, and keep_alive 0 unloads it across the mesh', async () => {
      const ps: any = await waitFor('the model in /api/ps', async () => {
        const r = await ollama.ps()
        return r.models.length === 1 ? r : undefined
      }, 5000).then(r => r.value)
      assertShape(ps.models[0], { name: 'string', model: 'string', size: 'integer', digest: 'string', details: 'object', expires_at: 'string', size_vram: 'integer' }, 'ps entry')
      assert.equal(ps.models[0].name, MODEL)
      const unload: any = await ollama.generate({ model: MODEL, prompt: '', keep_alive: 0, stream: false })
      assert.equal(unload.done_reason, 'unload')
      // B's keep-alive is 60 s: only the request's keep_alive can unload it this soon.
      await waitFor('the model gone from /api/ps', async () => (await ollama.ps()).models.length === 0, 8000)
    })

    it('answers on the host directly too (the local path)', async () => {
      const res = await ollamaB.chat({ model: MODEL, messages: [{ role: 'user', content: 'hi' }], stream: false, options: { num_predict: 4 } })
      assert.equal(res.done, true)
      assert.ok(res.eval_count > 0)
    })

    it('refuses what it cannot do with Ollama\'s {error} and the right status, and keeps serving', async () => {
      const cases: Array<[string, string, string, number, RegExp]> = [
        ['bad JSON', '/api/chat', '{"model":', 400, /JSON/],
        ['array body', '/api/chat', '[1,2]', 400, /./],
        ['no model', '/api/chat', JSON.stringify({ messages: [] }), 400, /model/],
        ['wrong type', '/api/chat', JSON.stringify({ model: MODEL, messages: 'hi' }), 400, /messages/],
        ['bad option', '/api/generate', JSON.stringify({ model: MODEL, prompt: 'x', options: { temperature: 'hot' } }), 400, /temperature/],
        ['huge num_predict', '/api/generate', JSON.stringify({ model: MODEL, prompt: 'x', options: { num_predict: 1e20 } }), 400, /num_predict/],
        ['unknown option', '/api/generate', JSON.stringify({ model: MODEL, prompt: 'x', options: { warp: 9 } }), 400, /warp/],
        ['out of range on the host', '/api/generate', JSON.stringify({ model: MODEL, prompt: 'x', stream: false, options: { temperature: 7 } }), 400, /temperature/],
        ['bad keep_alive on the host', '/api/chat', JSON.stringify({ model: MODEL, messages: [{ role: 'user', content: 'x' }], keep_alive: 'forever' }), 400, /keep_alive/],
        // Tools are served (client-libraries.test.ts); a hostile definition is the engine's 400.
        ['bad tool name', '/api/chat', JSON.stringify({ model: MODEL, messages: [{ role: 'user', content: 'x' }], tools: [{ type: 'function', function: { name: 'bad name' } }] }), 400, /tools\[0\]/],
        ['orphan tool result', '/api/chat', JSON.stringify({ model: MODEL, messages: [{ role: 'tool', content: 'x' }] }), 400, /tool message/],
        ['images', '/api/generate', JSON.stringify({ model: MODEL, prompt: 'x', images: ['aGk='] }), 400, /images/],
        ['unknown model', '/api/chat', JSON.stringify({ model: 'nope', messages: [{ role: 'user', content: 'x' }] }), 404, /nope/],
        ['empty embed', '/api/embed', JSON.stringify({ model: MODEL, input: [] }), 400, /input/]
      ]
      for (const [what, route, body, status, message] of cases) {
        const res = await post(`${a.api}${route}`, body, auth)
        assert.equal(res.status, status, `${what}: ${res.text}`)
        assertShape(res.json, { error: 'string' }, what)
        assert.match(res.json.error, message, what)
      }
      const form = await post(`${a.api}/api/chat`, 'model=x', { ...auth, 'content-type': 'text/plain' })
      assert.equal(form.status, 415)
      assertShape(form.json, { error: 'string' }, 'text/plain body')
      const noKey = await post(`${a.api}/api/chat`, JSON.stringify({ model: MODEL, messages: [] }))
      assert.equal(noKey.status, 401)
      assertShape(noKey.json, { error: 'string' }, 'no key')
      await assert.rejects(new Ollama({ host: a.api }).list(), (err: any) => err.status_code === 401)
      // format "json" is enforced by a grammar: JSON that parses, unless the 8-token limit cut
      // it first ("length": a random model may write one long string), then a JSON object's start.
      const json = await post(`${a.api}/api/generate`, JSON.stringify({ model: MODEL, prompt: 'x', format: 'json', stream: false, options: { num_predict: 8 } }), auth)
      assert.equal(json.status, 200, json.text)
      if (json.json.done_reason === 'stop') assert.doesNotThrow(() => JSON.parse(json.json.response))
      else { assert.equal(json.json.done_reason, 'length'); assert.match(json.json.response, /^\s*\{/) }
      const still = await ollama.chat({ model: MODEL, messages: [{ role: 'user', content: 'still there?' }], stream: false, options: { num_predict: 2 } })
      assert.equal(still.done, true)
    })
  })

  describe('Anthropic Messages', () => {
    const ask = { model: MODEL, messages: [{ role: 'user' as const, content: 'Hello there' }], temperature: 0, max_tokens: 24 }

    it('answers a message in Anthropic\'s exact shape, routed to the host, with x-api-key', async () => {
      const msg = await claude.messages.create({ ...ask, system: [{ type: 'text', text: 'Be brief.' }], metadata: { user_id: 'u-1' } })
      assertShape(msg, MESSAGE, 'message')
      assertShape(msg.usage, USAGE, 'usage')
      assert.match(msg.id, /^msg_/)
      assert.equal(msg.type, 'message')
      assert.equal(msg.role, 'assistant')
      assert.equal(msg.model, MODEL)
      assert.equal(msg.content.length, 1)
      assertShape(msg.content[0], { type: 'string', text: 'string' }, 'text block')
      assert.ok(msg.stop_reason === 'end_turn' || msg.stop_reason === 'max_tokens')
      assert.equal(msg.stop_sequence, null)
      assert.ok(msg.usage.input_tokens > 0 && msg.usage.output_tokens > 0)
      const again = await claude.messages.create({ ...ask, system: 'Be brief.' })
      assert.deepEqual(again.content, msg.content, 'system as a string or as blocks, same prompt; deterministic at temperature 0')
    })

    it('streams the exact event sequence, and the SDK assembles the same message', async () => {
      const whole = await claude.messages.create(ask)
      const events: any[] = []
      for await (const ev of await claude.messages.create({ ...ask, stream: true })) events.push(ev)
      // The SDK drops `ping` events (the raw stream below has it).
      const types = events.map(e => e.type)
      assert.deepEqual(types.slice(0, 2), ['message_start', 'content_block_start'])
      assert.deepEqual(types.slice(-3), ['content_block_stop', 'message_delta', 'message_stop'])
      assert.ok(types.slice(2, -3).every(t => t === 'content_block_delta') && types.length > 6)
      assertShape(events[0].message, MESSAGE, 'message_start.message')
      for (const d of events.slice(2, -3)) assert.deepEqual(Object.keys(d.delta).sort(), ['text', 'type'])
      const text = events.slice(2, -3).map(e => e.delta.text).join('')
      assert.equal(text, (whole.content[0] as any).text)
      const delta = events.at(-2)
      assert.equal(delta.delta.stop_reason, whole.stop_reason)
      assert.equal(delta.usage.output_tokens, whole.usage.output_tokens)
      const final = await claude.messages.stream(ask).finalMessage()
      assert.deepEqual(final.content, whole.content)
      assert.equal(final.usage.input_tokens, whole.usage.input_tokens)
      const raw = await post(`${a.api}/v1/messages`, JSON.stringify({ ...ask, stream: true }), { 'x-api-key': KEY })
      assert.equal(raw.type, 'text/event-stream')
      assert.match(raw.text, /^event: message_start\ndata: \{"type":"message_start"/)
      const names = [...raw.text.matchAll(/^event: (\w+)$/gm)].map(m => m[1])
      assert.deepEqual(names.slice(0, 3), ['message_start', 'content_block_start', 'ping'])
      assert.deepEqual(names.slice(-3), ['content_block_stop', 'message_delta', 'message_stop'])
      assert.ok(raw.text.endsWith('event: message_stop\ndata: {"type":"message_stop"}\n\n'))
    })

    it('stops at a stop sequence (whole and streamed) and at max_tokens', async () => {
      const long = { ...ask, max_tokens: 64 }
      const free = await claude.messages.create(long)
      const text = (free.content[0] as any).text as string
      assert.ok(free.usage.output_tokens >= 6, `the model must say enough to test with: ${JSON.stringify(text)}`)
      // A stop taken from the middle of what the model says at temperature 0.
      const from = Math.floor(text.length / 2)
      let stop = text.slice(from, from + 3)
      if (stop.trim() === '') stop = text.slice(0, 3)
      const cut = text.slice(0, text.indexOf(stop))
      const stopped = await claude.messages.create({ ...long, stop_sequences: ['never-said-zz', stop] })
      assert.equal(stopped.stop_reason, 'stop_sequence')
      assert.equal(stopped.stop_sequence, stop)
      assert.equal((stopped.content[0] as any).text, cut)
      assert.ok(stopped.usage.output_tokens < free.usage.output_tokens)
      const streamed = await claude.messages.stream({ ...long, stop_sequences: [stop] }).finalMessage()
      assert.equal(streamed.stop_reason, 'stop_sequence')
      assert.equal(streamed.stop_sequence, stop)
      assert.equal((streamed.content[0] as any).text, cut)
      const short = await claude.messages.create({ ...ask, max_tokens: 4 })
      assert.equal(short.stop_reason, 'max_tokens')
      assert.equal(short.usage.output_tokens, 4)
      const shortStream = await claude.messages.stream({ ...ask, max_tokens: 4 }).finalMessage()
      assert.equal(shortStream.stop_reason, 'max_tokens')
      assert.deepEqual(shortStream.content, short.content)
    })

    it('counts tokens with the model\'s own tokenizer', async () => {
      const count = await claude.messages.countTokens({ model: MODEL, messages: ask.messages })
      assertShape(count, { input_tokens: 'integer' }, 'count_tokens')
      const msg = await claude.messages.create(ask)
      assert.equal(count.input_tokens, msg.usage.input_tokens)
    })

    it('answers on the host directly too (the local path)', async () => {
      const msg = await claudeB.messages.create({ ...ask, max_tokens: 4 })
      assert.equal(msg.content[0].type, 'text')
    })

    it('refuses with Anthropic\'s error shape and status, and keeps serving', async () => {
      const refused = async (p: Promise<unknown>, status: number, type: string, message: RegExp): Promise<void> => {
        await assert.rejects(p, (err: any) => {
          assert.equal(err.status, status, String(err))
          assert.deepEqual(Object.keys(err.error).sort(), ['error', 'type'])
          assert.equal(err.error.type, 'error')
          assert.equal(err.error.error.type, type)
          assert.match(err.error.error.message, message)
          return true
        })
      }
      const user = [{ role: 'user' as const, content: 'x' }]
      await refused(claude.messages.create({ model: MODEL, messages: user } as any), 400, 'invalid_request_error', /max_tokens: Field required/)
      await refused(claude.messages.create({ model: MODEL, messages: user, max_tokens: TINY_MODEL.contextLength + 1 }), 400, 'invalid_request_error', /max_tokens: 513 > 512/)
      await refused(claude.messages.create({ model: MODEL, messages: user, max_tokens: 8, tools: [{ type: 'web_search_20250305', name: 'web_search' }] } as any), 400, 'invalid_request_error', /server tool 'web_search_20250305' is not supported/)
      await refused(claude.messages.create({ model: MODEL, messages: user, max_tokens: 8, temperature: 3 } as any), 400, 'invalid_request_error', /temperature/)
      await refused(claude.messages.create({ model: MODEL, messages: [{ role: 'user', content: [{ type: 'image', source: { type: 'base64', media_type: 'image/png', data: 'aGk=' } }] }], max_tokens: 8 }), 400, 'invalid_request_error', /image/)
      await refused(claude.messages.create({ model: 'nope', messages: user, max_tokens: 8 }), 404, 'not_found_error', /nope/)
      await refused(claude.messages.create({ model: 'nope', messages: user, max_tokens: 8, stream: true }), 404, 'not_found_error', /nope/)
      await refused(new Anthropic({ baseURL: a.api, apiKey: 'wrong', maxRetries: 0 }).messages.create({ model: MODEL, messages: user, max_tokens: 8 }), 401, 'authentication_error', /API key/)
      for (const [body, status] of [['{"model":', 400], ['[1]', 400], [JSON.stringify({ model: MODEL, max_tokens: 'many', messages: user }), 400], [JSON.stringify({ model: MODEL, max_tokens: 1e15, messages: user }), 400], [JSON.stringify({ model: 7, max_tokens: 4, messages: user }), 400]] as const) {
        const res = await post(`${a.api}/v1/messages`, body, { 'x-api-key': KEY })
        assert.equal(res.status, status, res.text)
        assertShape(res.json, { type: 'string', error: 'object' }, body)
        assertShape(res.json.error, { type: 'string', message: 'string' }, body)
        assert.equal(res.json.error.type, 'invalid_request_error')
      }
      const msg = await claude.messages.create({ ...ask, max_tokens: 2 })
      assert.equal(msg.type, 'message')
      // The OpenAI routes keep their own error shape.
      const openai = await post(`${a.api}/v1/chat/completions`, JSON.stringify({ model: 'nope', messages: user }), { 'x-api-key': KEY })
      assert.equal(openai.json.error.code, 'model_not_found')
      assert.ok(await getJson(`${a.api}/healthz`) != null)
    })
  })

  it('survives clients that leave in the middle of a stream, on both APIs', async () => {
    for (const [route, body, headers] of [
      ['/api/chat', { model: MODEL, messages: [{ role: 'user', content: 'Go on and on' }], options: { num_predict: 400 } }, auth],
      ['/v1/messages', { model: MODEL, messages: [{ role: 'user', content: 'Go on and on' }], max_tokens: 400, stream: true }, { 'x-api-key': KEY }]
    ] as const) {
      for (let i = 0; i < 3; i++) {
        const ac = new AbortController()
        const res = await fetch(`${a.api}${route}`, { method: 'POST', headers: { 'content-type': 'application/json', ...headers }, body: JSON.stringify(body), signal: ac.signal })
        assert.equal(res.status, 200)
        const reader = res.body!.getReader()
        await reader.read()
        ac.abort()
        await reader.cancel().catch(() => {})
      }
    }
    const msg = await claude.messages.create({ model: MODEL, messages: [{ role: 'user', content: 'still?' }], max_tokens: 3 })
    assert.equal(msg.type, 'message')
    const chat = await ollama.chat({ model: MODEL, messages: [{ role: 'user', content: 'still?' }], stream: false, options: { num_predict: 3 } })
    assert.equal(chat.done, true)
    assert.equal(b.child.exitCode, null)
    assert.equal(a.child.exitCode, null)
  })
})
