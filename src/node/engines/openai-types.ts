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
  tools?: ChatCompletionToolParam[] | null
  tool_choice?: ChatCompletionToolChoiceParam | null
  parallel_tool_calls?: boolean | null
  /** Legacy form of `tools` (each item is what `function` holds there). */
  functions?: ChatCompletionToolParam['function'][] | null
  /** Legacy form of `tool_choice`: `'none'`, `'auto'` or `{name}`. */
  function_call?: 'none' | 'auto' | { name: string } | null
}

/** One `tools[]` item of a request: only function tools exist in the chat API. */
export interface ChatCompletionToolParam {
  type: 'function'
  function: {
    name: string
    description?: string
    /** A JSON schema of the arguments object; absent means a function without arguments. */
    parameters?: Record<string, unknown>
    strict?: boolean | null
  }
}

/** OpenAI's `tool_choice`. */
export type ChatCompletionToolChoiceParam =
  | 'none'
  | 'auto'
  | 'required'
  | { type: 'function', function: { name: string } }

/** A tool call in a response message (and in assistant messages of the history). */
export interface ChatCompletionMessageToolCall {
  /** `call_` and random characters. */
  id: string
  type: 'function'
  function: {
    name: string
    /** The arguments as a JSON text (an object). */
    arguments: string
  }
}

/**
 * One streamed piece of a tool call: the first delta of a call has `id`, `type` and
 * `function.name` (and `arguments: ''`); later ones only `index` and `function.arguments` text.
 */
export interface ChatCompletionChunkToolCall {
  index: number
  id?: string
  type?: 'function'
  function?: { name?: string, arguments?: string }
}

/**
 * A validated tool of a parsed request (`ParsedChatRequest.tools`). Legacy `functions` parse
 * to the same.
 */
export interface ToolDefinition {
  /** 1-64 letters, digits, '_' or '-' (OpenAI's rule); unique within the request. */
  name: string
  description?: string
  /** The parameters schema as given (what llama-server receives); `{type:'object',properties:{}}` when absent. */
  parameters: Record<string, unknown>
  /**
   * The same schema in node-llama-cpp's grammar dialect (see response-format.ts `checkJsonSchema`).
   * Non-strict tools may have had keywords a grammar cannot enforce dropped here (`minimum`,
   * `pattern`...), so the grammar allows a superset of `parameters`; strict tools are refused instead.
   */
  grammarParameters: Record<string, unknown>
  strict: boolean
}

/**
 * A validated `tool_choice` (or legacy `function_call`): `auto` (the model decides), `none`
 * (tools are not offered), `required` (at least one call, enforced by grammar) or one named
 * function (exactly that call, enforced by grammar).
 */
export type ToolChoice =
  | { type: 'auto' }
  | { type: 'none' }
  | { type: 'required' }
  | { type: 'function', name: string }

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
  /** Present (non-empty) only when the model called tools; `content` is then null unless it also wrote text. */
  tool_calls?: ChatCompletionMessageToolCall[]
  /** Instead of `tool_calls` when the request used the legacy `functions` (see `legacyFunctionCompletion`). */
  function_call?: { name: string, arguments: string }
  /** The model's thinking, for reasoning models, as llama.cpp and DeepSeek return it. */
  reasoning_content?: string
}

/** One alternative token of `top_logprobs`. */
export interface ChatCompletionTopLogprob {
  token: string
  logprob: number
  /** The token's UTF-8 bytes (a token may hold part of a character); null when it has none. */
  bytes: number[] | null
}

/** One generated token with its log probability and the most likely alternatives. */
export interface ChatCompletionTokenLogprob extends ChatCompletionTopLogprob {
  top_logprobs: ChatCompletionTopLogprob[]
}

/** A choice's `logprobs` when the request asked for them (`logprobs: true`). */
export interface ChatCompletionLogprobs {
  content: ChatCompletionTokenLogprob[] | null
  refusal: ChatCompletionTokenLogprob[] | null
}

export interface ChatCompletionChoice {
  index: number
  message: ChatCompletionMessage
  /** Null unless the request asked for logprobs (llama-server engine). */
  logprobs: ChatCompletionLogprobs | null
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
  tool_calls?: ChatCompletionChunkToolCall[]
  /** Legacy `functions` requests: the call's name in the first delta, argument text in later ones. */
  function_call?: { name?: string, arguments?: string }
  reasoning_content?: string
}

export interface ChatCompletionChunkChoice {
  index: number
  delta: ChatCompletionChunkDelta
  logprobs: ChatCompletionLogprobs | null
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
