/**
 * Anthropic tool use through a 2-node mesh on the embedded engine (issue 13), as the official
 * `@anthropic-ai/sdk` does it: entry node A has no model, host B serves the tiny random-weight
 * model through node-llama-cpp. A named `tool_choice` is enforced by grammar on the host, so the
 * call is well formed whatever the weights pick. The Messages API has no `logit_bias` (and this
 * server refuses unknown fields as Anthropic's does), so the arguments' string values may hold any
 * text: the test checks the name, that `input` is an object with the required keys, and the loop.
 */
import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import path from 'node:path'
import Anthropic from '@anthropic-ai/sdk'
import { PARAMETERS } from '../support/tool-fixtures.js'
import { createTinyModel } from '../support/tiny-model.js'
import { startNode, stopNode, tempDir, waitFor, type NodeProcess } from '../support/cluster.js'

const MODEL = 'tiny-anthropic-tools'
const TOOLS = [{ name: 'get_weather', description: 'The weather in a city', input_schema: PARAMETERS as unknown as Anthropic.Tool.InputSchema }]
const QUESTION = { role: 'user' as const, content: 'What is the weather in Paris?' }

function assertCall (block: Anthropic.ContentBlock | undefined, what: string): asserts block is Anthropic.ToolUseBlock {
  assert.ok(block !== undefined && block.type === 'tool_use', `${what}: ${JSON.stringify(block)}`)
  assert.match(block.id, /^toolu_/)
  assert.equal(block.name, 'get_weather')
  const input = block.input as Record<string, unknown>
  assert.ok(input !== null && typeof input === 'object' && !Array.isArray(input), JSON.stringify(input))
  assert.equal(typeof input.city, 'string', JSON.stringify(input))
  assert.ok(input.unit === 'c' || input.unit === 'f', JSON.stringify(input))
}

describe('Anthropic tool use through the mesh (embedded engine, @anthropic-ai/sdk)', () => {
  const nodes: NodeProcess[] = []
  let client: Anthropic

  before(async () => {
    const dir = await tempDir('shepherd-models-anthropic-tools-')
    // A context that holds node-llama-cpp's function documentation (~650 tokens of the tiny vocabulary).
    await createTinyModel(path.join(dir, `${MODEL}.gguf`), { addSpacePrefix: false, contextLength: 2048 })
    const a = await startNode({ name: 'anth-tools-a' })
    nodes.push(a)
    nodes.push(await startNode({ name: 'anth-tools-b', args: ['--bootstrap', `/ip4/127.0.0.1/tcp/${a.p2pPort}`, '--threads', '1', '--models-dir', dir] }))
    client = new Anthropic({ baseURL: a.api, apiKey: 'unused', maxRetries: 0 })
    await waitFor('A to see B\'s model', async () => (await (await fetch(`${a.api}/v1/models`)).json() as any).data.some((m: any) => m.id === MODEL), 15_000)
  })

  after(async () => { await Promise.all(nodes.map(async n => await stopNode(n, 'SIGKILL'))) })

  it('a named tool_choice: a tool_use block, stop_reason tool_use; the tool_result turn is answered', async () => {
    const first = await client.messages.create({ model: MODEL, max_tokens: 200, messages: [QUESTION], tools: TOOLS, tool_choice: { type: 'tool', name: 'get_weather' } })
    assert.equal(first.stop_reason, 'tool_use', JSON.stringify(first))
    const call = first.content.find(b => b.type === 'tool_use')
    assertCall(call, 'first answer')
    assert.ok(first.usage.input_tokens > 0)
    const answer = await client.messages.create({
      model: MODEL,
      max_tokens: 8,
      tools: TOOLS,
      messages: [QUESTION, { role: 'assistant', content: first.content }, { role: 'user', content: [{ type: 'tool_result', tool_use_id: call.id, content: 'sunny' }, { type: 'text', text: 'Thanks' }] }]
    })
    assert.ok(['end_turn', 'max_tokens', 'tool_use'].includes(String(answer.stop_reason)), JSON.stringify(answer))
    // A tool_result answering no tool_use is refused by the host (the chat rule), as a 400.
    await assert.rejects(client.messages.create({ model: MODEL, max_tokens: 8, tools: TOOLS, messages: [{ role: 'user', content: [{ type: 'tool_result', tool_use_id: 'toolu_nope', content: 'x' }] }] }),
      (err: unknown) => err instanceof Anthropic.APIError && err.status === 400)
  })

  it('streamed: content_block_start tool_use, input_json_delta pieces, finalMessage holds the call', async () => {
    const stream = client.messages.stream({ model: MODEL, max_tokens: 200, messages: [QUESTION], tools: TOOLS, tool_choice: { type: 'tool', name: 'get_weather', disable_parallel_tool_use: true } })
    const types: string[] = []
    let jsonDeltas = 0
    stream.on('streamEvent', ev => {
      types.push(ev.type)
      if (ev.type === 'content_block_start') assert.deepEqual(ev.content_block.type === 'tool_use' ? ev.content_block.input : {}, {})
      if (ev.type === 'content_block_delta' && ev.delta.type === 'input_json_delta') jsonDeltas++
    })
    const final = await stream.finalMessage()
    assert.equal(final.stop_reason, 'tool_use')
    assert.equal(final.content.length, 1, JSON.stringify(final.content))
    assertCall(final.content[0], 'streamed answer')
    assert.ok(jsonDeltas > 1, `input came in ${jsonDeltas} delta(s)`)
    assert.deepEqual([types[0], types.at(-2), types.at(-1)], ['message_start', 'message_delta', 'message_stop'])
    assert.equal(types.filter(t => t === 'content_block_start').length, 1)
    assert.equal(types.filter(t => t === 'content_block_stop').length, 1)
  })

  it('server tools get a clear 400 and the node keeps serving', async () => {
    await assert.rejects(client.messages.create({ model: MODEL, max_tokens: 8, messages: [QUESTION], tools: [{ type: 'bash_20250124', name: 'bash' }] } as any),
      (err: unknown) => err instanceof Anthropic.APIError && err.status === 400 && /server tool 'bash_20250124'/.test(err.message))
    const ok = await client.messages.create({ model: MODEL, max_tokens: 2, messages: [QUESTION] })
    assert.equal(ok.content[0].type, 'text')
  })
})
