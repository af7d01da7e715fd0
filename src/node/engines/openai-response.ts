/**
 * Builds OpenAI response objects and stream chunks. Engines that generate locally produce
 * results through these so every backend answers in exactly the same shape.
 */
import { randomUUID } from 'node:crypto'
import { BadRequestError } from '../../errors.js'
import type {
  ChatCompletion,
  ChatCompletionChunk,
  ChatCompletionChunkDelta,
  CompletionUsage,
  EmbeddingObject,
  ChatCompletionMessageToolCall,
  FinishReason,
  TextCompletion,
  TextCompletionChunk
} from './openai-types.js'

/** `chatcmpl-…` / `cmpl-…` ids: the prefix OpenAI uses and 32 random hex digits. */
export function newResponseId (prefix: 'chatcmpl' | 'cmpl'): string {
  return `${prefix}-${randomUUID().replaceAll('-', '')}`
}

/** Unix time in seconds, as `created` carries it. */
export function unixNow (): number {
  return Math.floor(Date.now() / 1000)
}

export function usage (promptTokens: number, completionTokens: number): CompletionUsage {
  return { prompt_tokens: promptTokens, completion_tokens: completionTokens, total_tokens: promptTokens + completionTokens }
}

/** Identity shared by every chunk of one response. */
export interface ResponseHeader {
  id: string
  created: number
  model: string
}

export interface GenerationResult {
  text: string
  /** Thinking of reasoning models, separate from the answer. */
  reasoning: string
  finishReason: FinishReason
  promptTokens: number
  completionTokens: number
  /** Calls the model made (chat only); the message's `content` is null when it wrote no text beside them. */
  toolCalls?: ChatCompletionMessageToolCall[]
}

function hasCalls (result: GenerationResult): result is GenerationResult & { toolCalls: ChatCompletionMessageToolCall[] } {
  return result.toolCalls !== undefined && result.toolCalls.length > 0
}

export function chatCompletion (header: ResponseHeader, result: GenerationResult): ChatCompletion {
  return {
    id: header.id,
    object: 'chat.completion',
    created: header.created,
    model: header.model,
    choices: [{
      index: 0,
      message: {
        role: 'assistant',
        content: hasCalls(result) && result.text.length === 0 ? null : result.text,
        refusal: null,
        ...(hasCalls(result) ? { tool_calls: result.toolCalls } : {}),
        ...(result.reasoning.length > 0 ? { reasoning_content: result.reasoning } : {})
      },
      logprobs: null,
      finish_reason: result.finishReason
    }],
    usage: usage(result.promptTokens, result.completionTokens)
  }
}

/**
 * The answer to a legacy `functions` request: the (single) call as `message.function_call`,
 * `finish_reason: "function_call"`, as OpenAI answers those.
 */
export function legacyFunctionCompletion (completion: ChatCompletion): ChatCompletion {
  return {
    ...completion,
    choices: completion.choices.map(choice => {
      const { tool_calls: calls, ...message } = choice.message
      const call = calls?.[0]
      if (call === undefined) return choice
      return { ...choice, message: { ...message, function_call: call.function }, finish_reason: choice.finish_reason === 'tool_calls' ? 'function_call' : choice.finish_reason }
    })
  }
}

/** A chunk of a legacy `functions` stream: `tool_calls` deltas of the first call as `function_call` deltas. */
export function legacyFunctionChunk (chunk: ChatCompletionChunk): ChatCompletionChunk {
  return {
    ...chunk,
    choices: chunk.choices.map(choice => {
      const { tool_calls: calls, ...delta } = choice.delta
      const finish = choice.finish_reason === 'tool_calls' ? 'function_call' : choice.finish_reason
      const call = calls?.find(c => c.index === 0)
      if (call === undefined) return { ...choice, delta, finish_reason: finish }
      const fn = call.function ?? {}
      return { ...choice, delta: { ...delta, function_call: { ...(fn.name !== undefined ? { name: fn.name } : {}), arguments: fn.arguments ?? '' } }, finish_reason: finish }
    })
  }
}

/**
 * One chat chunk with a single choice. With `includeUsage`, every chunk carries `usage: null`
 * as OpenAI sends it; the totals come in `chatUsageChunk`.
 */
export function chatChunk (header: ResponseHeader, delta: ChatCompletionChunkDelta, finishReason: FinishReason | null, includeUsage: boolean, index = 0): ChatCompletionChunk {
  return {
    id: header.id,
    object: 'chat.completion.chunk',
    created: header.created,
    model: header.model,
    choices: [{ index, delta, logprobs: null, finish_reason: finishReason }],
    ...(includeUsage ? { usage: null } : {})
  }
}

/** The last chunk of a stream with `include_usage`: no choices, the totals. */
export function chatUsageChunk (header: ResponseHeader, promptTokens: number, completionTokens: number): ChatCompletionChunk {
  return {
    id: header.id,
    object: 'chat.completion.chunk',
    created: header.created,
    model: header.model,
    choices: [],
    usage: usage(promptTokens, completionTokens)
  }
}

export function textCompletion (header: ResponseHeader, result: GenerationResult): TextCompletion {
  return {
    id: header.id,
    object: 'text_completion',
    created: header.created,
    model: header.model,
    choices: [{ text: result.text, index: 0, logprobs: null, finish_reason: result.finishReason }],
    usage: usage(result.promptTokens, result.completionTokens)
  }
}

export function textChunk (header: ResponseHeader, text: string, finishReason: FinishReason | null, includeUsage: boolean, index = 0): TextCompletionChunk {
  return {
    id: header.id,
    object: 'text_completion',
    created: header.created,
    model: header.model,
    choices: [{ text, index, logprobs: null, finish_reason: finishReason }],
    ...(includeUsage ? { usage: null } : {})
  }
}

/**
 * Several generations as one answer (`n`, several prompts): their choices in order, each numbered
 * by its place; prompt tokens as the caller counts them (once per prompt), completion tokens summed.
 */
export function mergeChoices<T extends ChatCompletion | TextCompletion> (parts: T[], promptTokens: number): T {
  const first = parts[0]
  const choices = parts.flatMap((part, index) => part.choices.map(choice => ({ ...choice, index })))
  const completionTokens = parts.reduce((sum, part) => sum + (part.usage?.completion_tokens ?? 0), 0)
  return { ...first, choices, usage: usage(promptTokens, completionTokens) } as T
}

/**
 * The seed of choice `index`: a given seed moves by one per choice, so `n` choices differ yet
 * the whole answer repeats; without one each choice draws its own.
 */
export function choiceSeed (seed: number | undefined, index: number): { seed?: number } {
  return seed === undefined ? {} : { seed: (seed + index) % 2 ** 32 }
}

export function textUsageChunk (header: ResponseHeader, promptTokens: number, completionTokens: number): TextCompletionChunk {
  return {
    id: header.id,
    object: 'text_completion',
    created: header.created,
    model: header.model,
    choices: [],
    usage: usage(promptTokens, completionTokens)
  }
}

/**
 * Scales a vector to unit length, as OpenAI's and llama-server's embeddings are. Values are
 * rounded to float32, the precision the model computes in, so the float and base64 encodings
 * of one embedding carry exactly the same numbers.
 */
export function normalizeVector (vector: readonly number[]): number[] {
  let sum = 0
  for (const v of vector) sum += v * v
  const norm = Math.sqrt(sum)
  return vector.map(v => Math.fround(norm > 0 ? v / norm : v))
}

/**
 * The length `dimensions` asks for: OpenAI shortens an embedding by keeping its first values and
 * renormalizing (which is only meaningful for Matryoshka-trained models, as OpenAI's are; the
 * client asks for it knowingly). Larger than the model makes is a 400.
 */
export function embeddingSize (model: string, modelDims: number, requested: number | undefined): number {
  if (requested === undefined || requested === modelDims) return modelDims
  if (requested > modelDims) throw new BadRequestError(`Model '${model}' makes ${modelDims}-dimensional embeddings; dimensions must be at most ${modelDims}`, 'dimensions', 'invalid_value')
  return requested
}

/** An embedding cut to `size` values (see `embeddingSize`), then scaled to unit length. */
export function shapeEmbedding (vector: readonly number[], size: number): number[] {
  return normalizeVector(size < vector.length ? vector.slice(0, size) : vector)
}

/** `encoding_format: 'base64'`: the float32 little-endian bytes, base64-encoded. */
export function encodeEmbedding (vector: readonly number[], encoding: 'float' | 'base64'): number[] | string {
  if (encoding === 'float') return [...vector]
  const bytes = Buffer.alloc(vector.length * 4)
  vector.forEach((v, i) => bytes.writeFloatLE(v, i * 4))
  return bytes.toString('base64')
}

/** Inverse of `encodeEmbedding(…, 'base64')`. */
export function decodeEmbedding (base64: string): number[] {
  const bytes = Buffer.from(base64, 'base64')
  const out: number[] = []
  for (let i = 0; i + 4 <= bytes.length; i += 4) out.push(bytes.readFloatLE(i))
  return out
}

export function embeddingObject (index: number, vector: readonly number[], encoding: 'float' | 'base64'): EmbeddingObject {
  return { object: 'embedding', index, embedding: encodeEmbedding(vector, encoding) }
}
