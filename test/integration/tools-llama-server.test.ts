/**
 * Tool calling through a 2-node mesh on the llama-server engine (issue 13), as the official
 * `openai` client does it: entry node A has no model, host B serves the tiny random-weight model
 * with `--engine llama-server` (the build of scripts/build-llama-server.sh, cached per machine).
 * A forced call is always valid whatever the weights pick; the agent loop (call, run the tool,
 * send its result back) runs to an answer, created and streamed.
 */
import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { execFile } from 'node:child_process'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { promisify } from 'node:util'
import OpenAI from 'openai'
import type { ChatCompletionMessageParam } from 'openai/resources/chat/completions'
import { assertMatchesOpenAISchema } from '../support/openai-schema.js'
import { NO_BYTE_TOKENS, QUESTION, TOOLS, assertStreamedNamedCall, requiredCall } from '../support/tool-fixtures.js'
import { createTinyModel } from '../support/tiny-model.js'
import { startNode, stopNode, tempDir, waitFor, type NodeProcess } from '../support/cluster.js'

const MODEL = 'tiny-tools'
const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..')


describe('tool calling through the mesh (llama-server engine, openai client)', () => {
  const nodes: NodeProcess[] = []
  let client: OpenAI

  before(async () => {
    const built = await promisify(execFile)('bash', [path.join(ROOT, 'scripts', 'build-llama-server.sh')], { cwd: ROOT, maxBuffer: 256 * 1024 * 1024 })
    const binary = built.stdout.trim().split('\n').at(-1) ?? ''
    const dir = await tempDir('shepherd-models-tools-')
    // No space after special tokens: llama-server's grammars need it (see TinyModelOptions).
    await createTinyModel(path.join(dir, `${MODEL}.gguf`), { addSpacePrefix: false })
    const a = await startNode({ name: 'tools-a' })
    nodes.push(a)
    nodes.push(await startNode({ name: 'tools-b', args: ['--bootstrap', `/ip4/127.0.0.1/tcp/${a.p2pPort}`, '--threads', '1', '--models-dir', dir, '--engine', 'llama-server', '--llamacpp', path.dirname(binary)] }))
    client = new OpenAI({ baseURL: `${a.api}/v1`, apiKey: 'unused', maxRetries: 0 })
    await waitFor('A to see B\'s model', async () => (await client.models.list()).data.some(m => m.id === MODEL), 15_000)
  })

  after(async () => { await Promise.all(nodes.map(async n => await stopNode(n, 'SIGKILL'))) })

  it('an agent loop: a forced call, the tool run, its result sent back, an answer', async () => {
    const messages: ChatCompletionMessageParam[] = [QUESTION]
    const { choice, call, args } = await requiredCall(client, MODEL, messages)
    messages.push(choice.message, { role: 'tool', tool_call_id: call.id, content: JSON.stringify({ sky: 'sunny', city: (args as { city: string }).city }) })
    const answer = await client.chat.completions.create({ model: MODEL, messages, tools: TOOLS, seed: 2, max_tokens: 16, logit_bias: NO_BYTE_TOKENS })
    assertMatchesOpenAISchema('CreateChatCompletionResponse', answer)
    assert.ok(['stop', 'length'].includes(answer.choices[0].finish_reason), JSON.stringify(answer.choices[0]))
    assert.equal(typeof answer.choices[0].message.content, 'string')
  })

  it('streamed with the client\'s stream helper: the assembled call is valid, named by tool_choice', async () => {
    await assertStreamedNamedCall(client, MODEL)
  })

  it('logprobs and top_logprobs come back through the mesh in OpenAI\'s shape', async () => {
    const res = await client.chat.completions.create({ model: MODEL, messages: [QUESTION], seed: 4, max_tokens: 5, logprobs: true, top_logprobs: 3, logit_bias: NO_BYTE_TOKENS })
    assertMatchesOpenAISchema('CreateChatCompletionResponse', res)
    const content = res.choices[0].logprobs?.content ?? []
    assert.equal(content.length, res.usage?.completion_tokens)
    assert.ok(content.every(t => t.top_logprobs.length === 3 && t.logprob <= 0))
  })

  it('n > 1 is a clear 400 naming n', async () => {
    await assert.rejects(client.chat.completions.create({ model: MODEL, messages: [QUESTION], n: 2, max_tokens: 4 }),
      (err: unknown) => err instanceof OpenAI.APIError && err.status === 400 && err.param === 'n')
  })
})
