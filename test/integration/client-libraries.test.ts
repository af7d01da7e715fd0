/**
 * The client libraries agents are built with, each through a 2-node mesh (issue 13): entry node A
 * has no model, host B serves the tiny random-weight model on the embedded engine (node-llama-cpp),
 * so every call crosses the mesh. A forced `tool_choice` is enforced by grammar, so the random
 * weights still give a valid call; structured output is grammar-enforced the same way.
 * - OpenAI Agents SDK (`@openai/agents`, which pulls openai@7): an agent loop with a function tool,
 *   over the Responses API (its default) and over Chat Completions.
 * - LangChain (`@langchain/openai`): `bindTools`, `withStructuredOutput` with a zod schema.
 * - Vercel AI SDK (`ai`): `generateObject` and `streamText` with a tool, via
 *   `@ai-sdk/openai-compatible` (chat) and via `@ai-sdk/openai` (Responses).
 * - The `openai` SDK's `/v1/completions` with stop sequences (the SentencePiece space bug).
 */
import '../../src/polyfill.js'
import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import path from 'node:path'
import OpenAI from 'openai'
import { z } from 'zod'
import { Agent, OpenAIProvider, Runner, tool as agentTool } from '@openai/agents'
import { ChatOpenAI } from '@langchain/openai'
import { tool as lcTool } from '@langchain/core/tools'
import { createOpenAICompatible } from '@ai-sdk/openai-compatible'
import { createOpenAI } from '@ai-sdk/openai'
import { generateObject, generateText, stepCountIs, streamText, tool as aiTool } from 'ai'
import { Ollama, type ChatRequest } from 'ollama'
import { createTinyModel } from '../support/tiny-model.js'
import { NO_BYTE_TOKENS, PARAMETERS, validArgs } from '../support/tool-fixtures.js'
import { startNode, stopNode, tempDir, waitFor, type NodeProcess } from '../support/cluster.js'

/** Room for node-llama-cpp's function documentation; no space prefix (see tools-embedded.test.ts). */
const MODEL = 'tiny-clients'
/** The default tiny model: SentencePiece word starts, which is what broke completion stops. */
const TEXT_MODEL = 'tiny-clients-text'
const QUESTION = 'What is the weather in Paris?'
/** Bounded so a grammar closes the object within a known number of tokens. */
const Weather = z.object({ city: z.string().max(12), unit: z.enum(['c', 'f']) })

describe('client libraries through a 2-node mesh (embedded engine)', () => {
  const nodes: NodeProcess[] = []
  let baseURL: string
  let ollamaHost: string
  let client: OpenAI

  before(async () => {
    const dir = await tempDir('shepherd-models-clients-')
    await createTinyModel(path.join(dir, `${MODEL}.gguf`), { addSpacePrefix: false, contextLength: 2048 })
    await createTinyModel(path.join(dir, `${TEXT_MODEL}.gguf`))
    const a = await startNode({ name: 'clients-a', timeoutMs: 60_000 })
    nodes.push(a)
    const b = await startNode({ name: 'clients-b', timeoutMs: 60_000, args: ['--bootstrap', `/ip4/127.0.0.1/tcp/${a.p2pPort}`, '--engine', 'embedded', '--threads', '1', '--models-dir', dir] })
    nodes.push(b)
    baseURL = `${a.api}/v1`
    ollamaHost = a.api
    client = new OpenAI({ baseURL, apiKey: 'unused', maxRetries: 0 })
    await waitFor('A to see B\'s models', async () => {
      const ids = (await client.models.list()).data.map(m => m.id)
      return ids.includes(MODEL) && ids.includes(TEXT_MODEL)
    }, 30_000)
    // Listed is not yet routable everywhere: wait until a call to each model is served.
    for (const model of [MODEL, TEXT_MODEL]) {
      await waitFor(`a call to ${model} served`, async () => await client.completions.create({ model, prompt: 'x', max_tokens: 1 }).then(() => true, () => false), 30_000)
    }
  })

  after(async () => {
    if (process.env.SHOW_NODE_LOGS === '1') for (const n of nodes) console.error(`--- ${n.name}\n${n.stderr.join('')}`)
    await Promise.all(nodes.map(async n => await stopNode(n, 'SIGKILL')))
  })

  it('Agents SDK (Chat Completions): an agent loop with a function tool runs to completion', async () => {
    const seen: unknown[] = []
    const getWeather = agentTool({
      name: 'get_weather',
      description: 'The weather in a city',
      parameters: Weather,
      execute: async (args) => { seen.push(args); return 'sunny' }
    })
    const agent = new Agent({
      name: 'weather',
      model: MODEL,
      instructions: 'Answer questions about the weather.',
      tools: [getWeather],
      // The first turn must call the tool; the SDK then resets tool_choice (resetToolChoice), so
      // the second turn answers in text and the loop ends.
      modelSettings: { toolChoice: 'required', temperature: 0, maxTokens: 200 },
      resetToolChoice: true
    })
    const runner = new Runner({ modelProvider: new OpenAIProvider({ baseURL, apiKey: 'unused', useResponses: false }), tracingDisabled: true })
    const result = await runner.run(agent, QUESTION, { maxTurns: 4 })
    assert.equal(seen.length, 1, 'the tool ran once')
    assert.ok(validArgs(seen[0]), JSON.stringify(seen[0]))
    const kinds = result.newItems.map(i => i.type)
    assert.deepEqual(kinds, ['tool_call_item', 'tool_call_output_item', 'message_output_item'])
    assert.equal(typeof result.finalOutput, 'string')
  })

  it('Agents SDK (Responses, its default): the loop runs the tool and ends by toolUseBehavior', async () => {
    // Over Responses a text answer from the random weights runs into max_output_tokens, which the
    // SDK (rightly) treats as a failed turn; so the loop ends at the tool, as toolUseBehavior allows.
    const behaviors: Array<'stop_on_first_tool' | { stopAtToolNames: string[] }> = ['stop_on_first_tool', { stopAtToolNames: ['get_weather'] }]
    for (const toolUseBehavior of behaviors) {
      const seen: unknown[] = []
      const getWeather = agentTool({ name: 'get_weather', description: 'The weather in a city', parameters: Weather, execute: async (args) => { seen.push(args); return `sunny in ${args.city}` } })
      const agent = new Agent({
        name: 'weather',
        model: MODEL,
        tools: [getWeather],
        modelSettings: { toolChoice: 'get_weather', temperature: 0, maxTokens: 200 },
        toolUseBehavior
      })
      const runner = new Runner({ modelProvider: new OpenAIProvider({ baseURL, apiKey: 'unused', useResponses: true }), tracingDisabled: true })
      const result = await runner.run(agent, QUESTION, { maxTurns: 2 })
      assert.equal(seen.length, 1)
      assert.ok(validArgs(seen[0]), JSON.stringify(seen[0]))
      assert.match(String(result.finalOutput), /^sunny in /)
      assert.deepEqual(result.newItems.map(i => i.type), ['tool_call_item', 'tool_call_output_item'])
    }
  })

  it('LangChain: bindTools gives a valid tool call; withStructuredOutput parses against a zod schema', async () => {
    const llm = new ChatOpenAI({ model: MODEL, apiKey: 'unused', configuration: { baseURL }, temperature: 0, maxTokens: 200, logitBias: NO_BYTE_TOKENS, maxRetries: 0 })
    const weather = lcTool(async ({ city }) => `sunny in ${city}`, { name: 'get_weather', description: 'The weather in a city', schema: Weather })
    const msg = await llm.bindTools([weather], { tool_choice: 'get_weather' }).invoke(QUESTION)
    assert.equal(msg.tool_calls?.length, 1, JSON.stringify(msg))
    const call = msg.tool_calls?.[0]
    assert.equal(call?.name, 'get_weather')
    assert.ok(Weather.safeParse(call?.args).success, JSON.stringify(call?.args))
    assert.match(call?.id ?? '', /^call_/)

    for (const method of ['jsonSchema', 'functionCalling'] as const) {
      const parsed = await llm.withStructuredOutput(Weather, { method, strict: true }).invoke(QUESTION)
      assert.ok(Weather.safeParse(parsed).success, `${method}: ${JSON.stringify(parsed)}`)
    }
  })

  it('LangChain over the Responses API (useResponsesApi): bindTools and withStructuredOutput', async () => {
    const llm = new ChatOpenAI({ model: MODEL, apiKey: 'unused', configuration: { baseURL }, temperature: 0, maxTokens: 200, useResponsesApi: true, maxRetries: 0 })
    const weather = lcTool(async ({ city }) => `sunny in ${city}`, { name: 'get_weather', description: 'The weather in a city', schema: Weather })
    const msg = await llm.bindTools([weather], { tool_choice: 'get_weather' }).invoke(QUESTION)
    assert.equal(msg.tool_calls?.length, 1, JSON.stringify(msg))
    assert.ok(Weather.safeParse(msg.tool_calls?.[0]?.args).success, JSON.stringify(msg.tool_calls))
    const parsed = await llm.withStructuredOutput(Weather, { method: 'jsonSchema', strict: true }).invoke(QUESTION)
    assert.ok(Weather.safeParse(parsed).success, JSON.stringify(parsed))
  })

  const weatherTool = (seen: unknown[]) => aiTool({
    description: 'The weather in a city',
    inputSchema: Weather,
    execute: async (args: z.infer<typeof Weather>) => { seen.push(args); return { sky: 'sunny' } }
  })

  /**
   * An AI SDK tool loop: the first step must call the tool (`toolChoice`), the next one answers
   * in text. Returns the steps after checking what both providers' loops share.
   */
  const toolLoop = async (model: Parameters<typeof streamText>[0]['model'], toolChoice: 'required' | { type: 'tool', toolName: 'get_weather' }): Promise<Array<{ finishReason: string }>> => {
    const seen: unknown[] = []
    const errors: unknown[] = []
    const result = streamText({
      model,
      prompt: QUESTION,
      tools: { get_weather: weatherTool(seen) },
      toolChoice,
      prepareStep: ({ stepNumber }) => stepNumber > 0 ? { toolChoice: 'none' } : undefined,
      stopWhen: stepCountIs(3),
      temperature: 0,
      maxOutputTokens: 200,
      maxRetries: 0,
      onError: ({ error }) => { errors.push(error) }
    })
    await result.consumeStream()
    assert.deepEqual(errors, [])
    const steps = await result.steps
    assert.equal(seen.length, 1, 'the tool ran once')
    assert.ok(validArgs(seen[0]), JSON.stringify(seen[0]))
    assert.equal(steps[0].finishReason, 'tool-calls')
    assert.equal(steps.length, 2, steps.map(s => s.finishReason).join(','))
    return steps
  }

  it('AI SDK via openai-compatible: generateObject, and streamText running a tool then answering', async () => {
    const provider = createOpenAICompatible({ name: 'shepherd', baseURL, apiKey: 'unused', supportsStructuredOutputs: true })
    const { object } = await generateObject({ model: provider(MODEL), schema: Weather, prompt: QUESTION, temperature: 0, maxOutputTokens: 200, maxRetries: 0 })
    assert.ok(Weather.safeParse(object).success, JSON.stringify(object))

    const steps = await toolLoop(provider(MODEL), 'required')
    assert.ok(['stop', 'length'].includes(steps[1].finishReason), steps[1].finishReason)
  })

  it('AI SDK via @ai-sdk/openai (Responses): generateObject, and streamText running a tool then answering', async () => {
    const openai = createOpenAI({ baseURL, apiKey: 'unused' })
    const { object } = await generateObject({ model: openai(MODEL), schema: Weather, prompt: QUESTION, temperature: 0, maxOutputTokens: 200, maxRetries: 0 })
    assert.ok(Weather.safeParse(object).success, JSON.stringify(object))

    await toolLoop(openai(MODEL), { type: 'tool', toolName: 'get_weather' })
    // generateText agrees with the streamed steps on the same forced first step.
    const once = await generateText({ model: openai(MODEL), prompt: QUESTION, tools: { get_weather: weatherTool([]) }, toolChoice: 'required', temperature: 0, maxOutputTokens: 200, maxRetries: 0 })
    assert.equal(once.toolCalls.length, 1)
  })

  it('ollama client: tools in /api/chat, whole tool_calls in the reply (and stream), role "tool" results answered', async () => {
    const ollama = new Ollama({ host: ollamaHost })
    const tools = [{ type: 'function', function: { name: 'get_weather', description: 'The weather in a city', parameters: PARAMETERS as any } }]
    const messages = [{ role: 'user', content: QUESTION }]
    // Ollama has no tool_choice; this server takes OpenAI's as an extension, so the random weights still call.
    const forced: ChatRequest = { model: MODEL, messages, tools, tool_choice: 'required', options: { temperature: 0, num_predict: 200 } } as ChatRequest
    const res = await ollama.chat({ ...forced, stream: false as const })
    assert.equal(res.done, true)
    assert.equal(res.done_reason, 'stop')
    const calls = res.message.tool_calls ?? []
    assert.equal(calls.length, 1, JSON.stringify(res.message))
    assert.equal(calls[0].function.name, 'get_weather')
    assert.ok(validArgs(calls[0].function.arguments), JSON.stringify(calls[0].function.arguments))

    let streamedCalls: any[] = []
    let last: any
    for await (const part of await ollama.chat({ ...forced, stream: true as const })) {
      if (part.message.tool_calls !== undefined) streamedCalls = [...streamedCalls, ...part.message.tool_calls]
      last = part
    }
    assert.equal(last.done, true)
    assert.deepEqual(streamedCalls.map(c => c.function), calls.map(c => c.function), 'streamed: the same call, sent whole')

    // The loop's second turn: the assistant's call and the tool's result (named, as Ollama clients send it).
    const second = await ollama.chat({
      model: MODEL,
      tools,
      stream: false,
      options: { temperature: 0, num_predict: 8 },
      messages: [...messages, res.message, { role: 'tool', tool_name: 'get_weather', content: JSON.stringify({ sky: 'sunny' }) } as any]
    })
    assert.equal(second.done, true)
    assert.ok(second.prompt_eval_count > res.prompt_eval_count, 'the call and its result are in the prompt')
    // A tool result that answers no call is refused in Ollama's error shape.
    await assert.rejects(ollama.chat({ model: MODEL, stream: false, messages: [{ role: 'tool', content: 'x' }] }), (err: any) => err.status_code === 400 && /tool message/.test(err.error))
  })

  it('openai SDK /v1/completions: stops holding spaces match, spaces kept, streamed the same', async () => {
    const base = { model: TEXT_MODEL, prompt: 'the cat sat on', temperature: 0, max_tokens: 40, logit_bias: NO_BYTE_TOKENS }
    const full = (await client.completions.create(base)).choices[0].text
    const space = full.indexOf(' ', 2)
    assert.ok(space > 0 && space < full.length - 8, JSON.stringify(full))
    for (const stop of [full.slice(space - 1, space + 2), full.slice(space + 1, space + 3), full.slice(space - 1, space + 8)]) {
      const expected = full.slice(0, full.indexOf(stop))
      const whole = await client.completions.create({ ...base, stop })
      assert.equal(whole.choices[0].text, expected, `${JSON.stringify(stop)} in ${JSON.stringify(full)}`)
      assert.equal(whole.choices[0].finish_reason, 'stop')
      let streamed = ''
      for await (const chunk of await client.completions.create({ ...base, stop: [stop], stream: true })) streamed += chunk.choices[0]?.text ?? ''
      assert.equal(streamed, expected)
    }
  })
})
