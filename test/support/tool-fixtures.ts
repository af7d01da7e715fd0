import assert from 'node:assert/strict'
import { Ajv } from 'ajv'
import type OpenAI from 'openai'
import type { ChatCompletionMessageParam, ChatCompletionTool } from 'openai/resources/chat/completions'
import { assertMatchesOpenAISchema } from './openai-schema.js'

/** The tiny vocabulary's non-ASCII byte tokens make invalid UTF-8 (see the engine tests); banned. */
export const NO_BYTE_TOKENS = Object.fromEntries(Array.from({ length: 128 }, (_, b) => [String(3 + 128 + b), -100]))

/** One tool, its parameters bounded so a grammar closes the call within a known number of tokens. */
export const PARAMETERS = {
  type: 'object',
  properties: { city: { type: 'string', maxLength: 12 }, unit: { type: 'string', enum: ['c', 'f'] } },
  required: ['city', 'unit'],
  additionalProperties: false
} as const
export const validArgs = new Ajv({ strict: true }).compile(PARAMETERS)
export const TOOLS: ChatCompletionTool[] = [{ type: 'function', function: { name: 'get_weather', description: 'The weather in a city', parameters: PARAMETERS } }]
export const QUESTION: ChatCompletionMessageParam = { role: 'user', content: 'What is the weather in Paris?' }

/**
 * Streams a call forced by a named `tool_choice` through the client's stream helper and checks
 * every chunk against OpenAI's schema, the assembled call, and that its arguments came in pieces.
 */
export async function assertStreamedNamedCall (client: OpenAI, model: string): Promise<void> {
  const stream = client.chat.completions.stream({
    model,
    messages: [QUESTION],
    tools: TOOLS,
    tool_choice: { type: 'function', function: { name: 'get_weather' } },
    seed: 3,
    max_tokens: 200,
    logit_bias: NO_BYTE_TOKENS,
    stream_options: { include_usage: true }
  })
  let argumentDeltas = 0
  stream.on('chunk', chunk => {
    assertMatchesOpenAISchema('CreateChatCompletionStreamResponse', chunk)
    for (const c of chunk.choices) if ((c.delta.tool_calls?.[0]?.function?.arguments ?? '') !== '') argumentDeltas++
  })
  const final = await stream.finalChatCompletion()
  assert.equal(final.choices[0].finish_reason, 'tool_calls')
  const call = final.choices[0].message.tool_calls?.[0]
  assert.ok(call !== undefined && call.type === 'function')
  assert.equal(call.function.name, 'get_weather')
  assert.ok(validArgs(JSON.parse(call.function.arguments)), call.function.arguments)
  assert.ok(argumentDeltas > 1, `arguments came in ${argumentDeltas} delta(s)`)
  assert.ok((final.usage?.prompt_tokens ?? 0) > 0)
}

/**
 * Asks for a call with `tool_choice: 'required'` and checks the answer against OpenAI's schema, a
 * `call_` id, the tool's name and its arguments against the parameters schema.
 */
export async function requiredCall (client: OpenAI, model: string, messages: ChatCompletionMessageParam[]): Promise<{ choice: OpenAI.Chat.Completions.ChatCompletion.Choice, call: OpenAI.Chat.Completions.ChatCompletionMessageFunctionToolCall, args: unknown }> {
  const first = await client.chat.completions.create({ model, messages, tools: TOOLS, tool_choice: 'required', seed: 1, max_tokens: 200, logit_bias: NO_BYTE_TOKENS })
  assertMatchesOpenAISchema('CreateChatCompletionResponse', first)
  const choice = first.choices[0]
  assert.equal(choice.finish_reason, 'tool_calls')
  const call = choice.message.tool_calls?.[0]
  assert.ok(call !== undefined && call.type === 'function', JSON.stringify(choice.message))
  assert.match(call.id, /^call_/)
  assert.equal(call.function.name, 'get_weather')
  const args: unknown = JSON.parse(call.function.arguments)
  assert.ok(validArgs(args), `${JSON.stringify(validArgs.errors)} in ${call.function.arguments}`)
  return { choice, call, args }
}
