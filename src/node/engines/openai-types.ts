/**
 * The OpenAI wire shapes the engines take and return: the subset of the OpenAI API's chat
 * completion, completion and embedding objects this project serves. Request bodies arrive as
 * parsed JSON, so their fields are optional and unknown ones pass through (an upstream engine
 * forwards them untouched); responses are exact.
 */

/** Why generation ended: `stop` (end of turn or a stop sequence) or `length` (token limit). */
export type FinishReason = 'stop' | 'length' | 'tool_calls' | 'content_filter' | 'function_call'

export interface ChatContentPartText {
  type: 'text'
  text: string
}

/** Any other content part (images, audio, files): accepted by the type, refused by text-only engines. */
export interface ChatContentPartOther {
  type: string
  [key: string]: unknown
}

export type ChatContentPart = ChatContentPartText | ChatContentPartOther

export interface ChatMessage {
  role: 'system' | 'developer' | 'user' | 'assistant' | 'tool' | 'function' | (string & {})
  content?: string | ChatContentPart[] | null
  name?: string
  [key: string]: unknown
}

/** Fields shared by chat and text completion requests. */
export interface SamplingRequestFields {
  model: string
  stream?: boolean | null
  stream_options?: { include_usage?: boolean | null } | null
  temperature?: number | null
  top_p?: number | null
  seed?: number | null
  stop?: string | string[] | null
  max_tokens?: number | null
  n?: number | null
  frequency_penalty?: number | null
  presence_penalty?: number | null
  /** llama.cpp extension. */
  top_k?: number | null
  /** llama.cpp extension. */
  min_p?: number | null
  /** llama.cpp extension: multiplicative penalty on recently used tokens (1 = off). */
  repeat_penalty?: number | null
  /**
   * Ollama extension: how long the model stays loaded after this request; `'5m'`, `'30s'`,
   * `'1h30m'`, a number of seconds, `0` to unload right after, negative to keep it loaded.
   */
  keep_alive?: string | number | null
  /** Token id (as a string) → bias from -100 to 100, added to the token's logit. */
  logit_bias?: Record<string, number> | null
  /**
   * Structured output, enforced by a grammar (see response-format.ts for the schema subset).
   * On text completions it is a llama.cpp extension (Ollama's `format` with `raw: true`).
   */
  response_format?: ResponseFormatParam | null
  [key: string]: unknown
}

/** OpenAI's `response_format`. */
export type ResponseFormatParam =
  | { type: 'text' }
  | { type: 'json_object' }
  | { type: 'json_schema', json_schema: { name: string, schema?: Record<string, unknown>, strict?: boolean | null, description?: string } }

export interface ChatCompletionRequest extends SamplingRequestFields {
  messages: ChatMessage[]
  max_completion_tokens?: number | null
}

export interface CompletionRequest extends SamplingRequestFields {
  /** A string, a one-element array of strings, or an array of token ids. */
  prompt: string | string[] | number[] | number[][]
  echo?: boolean | null
  suffix?: string | null
}

export interface EmbeddingRequest {
  model: string
  input: string | string[] | number[] | number[][]
  encoding_format?: 'float' | 'base64' | null
  dimensions?: number | null
  keep_alive?: string | number | null
  [key: string]: unknown
}

export interface CompletionUsage {
  prompt_tokens: number
  completion_tokens: number
  total_tokens: number
}

export interface ChatCompletionMessage {
  role: 'assistant'
  content: string | null
  refusal: null
  /** The model's thinking, for reasoning models, as llama.cpp and DeepSeek return it. */
  reasoning_content?: string
}

export interface ChatCompletionChoice {
  index: number
  message: ChatCompletionMessage
  logprobs: null
  finish_reason: FinishReason
}

export interface ChatCompletion {
  id: string
  object: 'chat.completion'
  created: number
  model: string
  choices: ChatCompletionChoice[]
  usage: CompletionUsage
}

export interface ChatCompletionChunkDelta {
  role?: 'assistant'
  content?: string
  reasoning_content?: string
}

export interface ChatCompletionChunkChoice {
  index: number
  delta: ChatCompletionChunkDelta
  logprobs: null
  finish_reason: FinishReason | null
}

export interface ChatCompletionChunk {
  id: string
  object: 'chat.completion.chunk'
  created: number
  model: string
  /** Empty in the final usage chunk. */
  choices: ChatCompletionChunkChoice[]
  /** Present (null, then the totals on the last chunk) only with `stream_options.include_usage`. */
  usage?: CompletionUsage | null
}

export interface TextCompletionChoice {
  text: string
  index: number
  logprobs: null
  finish_reason: FinishReason
}

export interface TextCompletion {
  id: string
  object: 'text_completion'
  created: number
  model: string
  choices: TextCompletionChoice[]
  usage: CompletionUsage
}

/** A streamed text completion piece: the same object, `finish_reason` null until the last one. */
export interface TextCompletionChunk {
  id: string
  object: 'text_completion'
  created: number
  model: string
  choices: Array<Omit<TextCompletionChoice, 'finish_reason'> & { finish_reason: FinishReason | null }>
  usage?: CompletionUsage | null
}

export interface EmbeddingObject {
  object: 'embedding'
  index: number
  /** Floats, or with `encoding_format: 'base64'` the little-endian float32 bytes in base64. */
  embedding: number[] | string
}

export interface EmbeddingResponse {
  object: 'list'
  data: EmbeddingObject[]
  model: string
  usage: { prompt_tokens: number, total_tokens: number }
}
