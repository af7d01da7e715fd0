import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import {
  chatChunk, chatCompletion, chatUsageChunk, embeddingObject, newResponseId, textCompletion, unixNow
} from '../../../src/node/engines/openai-response.js'
import { assertMatchesOpenAISchema } from '../../support/openai-schema.js'

const header = { id: newResponseId('chatcmpl'), created: unixNow(), model: 'm' }
const result = { text: 'hi', reasoning: '', finishReason: 'stop' as const, promptTokens: 3, completionTokens: 2 }

describe('OpenAI response builders', () => {
  it('build objects the OpenAI schemas accept', () => {
    const chat = chatCompletion(header, result)
    assertMatchesOpenAISchema('CreateChatCompletionResponse', chat)
    assert.deepEqual(chat.usage, { prompt_tokens: 3, completion_tokens: 2, total_tokens: 5 })
    assert.equal('reasoning_content' in chat.choices[0].message, false)
    assert.equal(chatCompletion(header, { ...result, reasoning: 'hmm' }).choices[0].message.reasoning_content, 'hmm')
    assertMatchesOpenAISchema('CreateChatCompletionStreamResponse', chatChunk(header, { role: 'assistant', content: '' }, null, true))
    assertMatchesOpenAISchema('CreateChatCompletionStreamResponse', chatChunk(header, {}, 'length', false))
    assertMatchesOpenAISchema('CreateChatCompletionStreamResponse', chatUsageChunk(header, 3, 2))
    assertMatchesOpenAISchema('CreateCompletionResponse', textCompletion({ ...header, id: newResponseId('cmpl') }, result))
    assertMatchesOpenAISchema('CreateEmbeddingResponse', {
      object: 'list', model: 'm', data: [embeddingObject(0, [0.6, 0.8], 'float')], usage: { prompt_tokens: 1, total_tokens: 1 }
    })
  })

  it('the schema check catches objects OpenAI clients would choke on', () => {
    const chat = chatCompletion(header, result)
    assert.throws(() => { assertMatchesOpenAISchema('CreateChatCompletionResponse', { ...chat, object: 'chat.completion.chunk' }) }, assert.AssertionError)
    assert.throws(() => { assertMatchesOpenAISchema('CreateChatCompletionResponse', { ...chat, choices: [{ ...chat.choices[0], finish_reason: 'done' }] }) }, assert.AssertionError)
    const { id: _, ...noId } = chat
    assert.throws(() => { assertMatchesOpenAISchema('CreateChatCompletionResponse', noId) }, assert.AssertionError)
    assert.throws(() => { assertMatchesOpenAISchema('CreateChatCompletionStreamResponse', { ...chatChunk(header, {}, null, false), usage: 5 }) }, assert.AssertionError)
    assert.throws(() => { assertMatchesOpenAISchema('NoSuchSchema', {}) }, /No OpenAI schema/)
  })
})
