/**
 * Tool calling through a 2-node mesh on the embedded engine (issue 13), as the official `openai`
 * client does it: entry node A has no model, host B serves the tiny random-weight model through
 * node-llama-cpp. A forced call (`tool_choice` "required" or named) is enforced by grammar, so it
 * is valid whatever the weights pick; the agent loop (call, run the tool, send its result back)
 * runs to an answer, created, streamed, and with `runTools()`.
 */
import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import path from 'node:path'
import OpenAI from 'openai'
import type { ChatCompletionMessageParam, ChatCompletionTool } from 'openai/resources/chat/completions'
import { assertMatchesOpenAISchema } from '../support/openai-schema.js'
import { NO_BYTE_TOKENS, PARAMETERS, QUESTION, TOOLS, assertStreamedNamedCall, requiredCall, validArgs } from '../support/tool-fixtures.js'
import { createTinyModel } from '../support/tiny-model.js'
import { startNode, stopNode, tempDir, waitFor, type NodeProcess } from '../support/cluster.js'

const MODEL = 'tiny-tools-embedded'


describe('tool calling through the mesh (embedded engine, openai client)', () => {
  const nodes: NodeProcess[] = []
  let client: OpenAI

  before(async () => {
    const dir = await tempDir('shepherd-models-tools-embedded-')
    // A context that holds node-llama-cpp's function documentation (~650 tokens of the tiny vocabulary).
    await createTinyModel(path.join(dir, `${MODEL}.gguf`), { addSpacePrefix: false, contextLength: 2048 })
    const a = await startNode({ name: 'tools-e-a' })
    nodes.push(a)
    nodes.push(await startNode({ name: 'tools-e-b', args: ['--bootstrap', `/ip4/127.0.0.1/tcp/${a.p2pPort}`, '--engine', 'embedded', '--threads', '1', '--models-dir', dir] }))
    client = new OpenAI({ baseURL: `${a.api}/v1`, apiKey: 'unused', maxRetries: 0 })
    await waitFor('A to see B\'s model', async () => (await client.models.list()).data.some(m => m.id === MODEL), 15_000)
  })

  after(async () => { await Promise.all(nodes.map(async n => await stopNode(n, 'SIGKILL'))) })

  it('an agent loop: a forced call, the tool run, its result sent back, an answer', async () => {
    const messages: ChatCompletionMessageParam[] = [QUESTION]
    const { choice, call } = await requiredCall(client, MODEL, messages)
    assert.equal(choice.message.content, null)
    messages.push(choice.message, { role: 'tool', tool_call_id: call.id, content: JSON.stringify({ sky: 'sunny' }) })
    const answer = await client.chat.completions.create({ model: MODEL, messages, tools: TOOLS, seed: 2, max_tokens: 16, logit_bias: NO_BYTE_TOKENS })
    assertMatchesOpenAISchema('CreateChatCompletionResponse', answer)
    assert.ok(['stop', 'length', 'tool_calls'].includes(answer.choices[0].finish_reason), JSON.stringify(answer.choices[0]))
  })

  it('streamed with the client\'s stream helper: the assembled call is valid, named by tool_choice', async () => {
    await assertStreamedNamedCall(client, MODEL)
  })

  it('runTools(): one round of call, tool run and result', async () => {
    const seen: unknown[] = []
    const runner = client.chat.completions.runTools({
      model: MODEL,
      messages: [QUESTION],
      tool_choice: { type: 'function', function: { name: 'get_weather' } },
      seed: 4,
      max_tokens: 200,
      logit_bias: NO_BYTE_TOKENS,
      tools: [{
        type: 'function',
        function: {
          name: 'get_weather',
          description: 'The weather in a city',
          parameters: PARAMETERS as unknown as Record<string, unknown>,
          parse: JSON.parse,
          function: (a: unknown) => { seen.push(a); return { sky: 'sunny' } }
        }
      }]
    })
    await runner.done()
    assert.equal(seen.length, 1, 'the tool ran once')
    assert.ok(validArgs(seen[0]), JSON.stringify(seen[0]))
    const messages = runner.messages
    assert.ok(messages.some(m => m.role === 'tool'), 'the result went into the conversation')
  })

  it('hostile tool definitions: a clear 400 naming the parameter', async () => {
    const many = Array.from({ length: 10_000 }, (_, i): ChatCompletionTool => ({ type: 'function', function: { name: `t${i}`, parameters: PARAMETERS } }))
    await assert.rejects(client.chat.completions.create({ model: MODEL, messages: [QUESTION], tools: many, max_tokens: 4 }),
      (err: unknown) => err instanceof OpenAI.APIError && err.status === 400 && err.param === 'tools')
    await assert.rejects(client.chat.completions.create({ model: MODEL, messages: [QUESTION], tools: [{ type: 'function', function: { name: 'bad name' } }], max_tokens: 4 }),
      (err: unknown) => err instanceof OpenAI.APIError && err.status === 400 && err.param === 'tools[0].function.name')
    // The node still serves.
    const ok = await client.chat.completions.create({ model: MODEL, messages: [QUESTION], max_tokens: 2 })
    assert.equal(ok.choices.length, 1)
  })
})
