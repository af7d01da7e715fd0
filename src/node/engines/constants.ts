import os from 'node:os'
/**
 * Defaults of the engines, in one place.
 */

/**
 * Sampling used when a request leaves a parameter out. These are llama-server's defaults, so
 * a model answers alike whether the embedded engine or a managed llama-server serves it.
 */
export const SAMPLING_DEFAULTS = {
  temperature: 0.8,
  topP: 0.95,
  topK: 40,
  minP: 0.05
} as const

/** Request limits checked before anything reaches the model. */
export const REQUEST_LIMITS = {
  /** Stop sequences per request (OpenAI allows 4; llama.cpp more). */
  maxStopSequences: 16,
  /** Inputs per embeddings request (OpenAI's limit). */
  maxEmbeddingInputs: 2048,
  /** Choices per request (`n`): each is a full generation, run one after another on one sequence. */
  maxChoices: 8,
  /** Prompts per `/v1/completions` request (one choice each, times `n`). */
  maxPrompts: 64,
  /**
   * Bounds on a `response_format` JSON schema, checked before any grammar is built from it: a
   * grammar's size and build time grow with the schema's, and repetition bounds (`maxLength`,
   * `maxItems`) expand into that many grammar rules. Real structured-output schemas are far
   * below these (OpenAI allows 5,000 properties and 10 levels of nesting).
   */
  maxSchemaNodes: 5000,
  maxSchemaDepth: 32,
  /** Characters of property names, enum and const strings together (OpenAI allows 120,000). */
  maxSchemaChars: 120_000,
  maxSchemaRepeat: 1000,
  /** Tokens one `logit_bias` may name (OpenAI's own limit is lower; 256 bans every byte token). */
  maxLogitBias: 1024,
  /** Tools (or legacy functions) per request: OpenAI's own limit. Each schema is bounded as above. */
  maxTools: 128,
  maxToolDescriptionChars: 16_384,
  /** Calls one grammar-enforced reply may hold with `parallel_tool_calls`. */
  maxParallelToolCalls: 8
} as const

export const EMBEDDED_DEFAULTS = {
  id: 'embedded',
  gpu: 'auto',
  /** Tokens per sequence, capped by the model's trained length. */
  contextSize: 2048,
  /**
   * Concurrent requests per loaded model (context sequences, decoded together in one batch).
   * 8, as llama-server's slots in the issue 12 bench: with 4, an 8th client waits for a whole
   * answer before its first token (TTFT p50 1.9 s vs 63 ms). Each costs a context's KV cache.
   */
  maxSequences: 8,
  /** Requests that may wait for a sequence per model before new ones get `OverloadedError`. */
  maxQueue: 64,
  /** Idle time before a model is unloaded. */
  keepAliveMs: 5 * 60_000
} as const

/** Inference threads that fit the machine: leave a core for the node itself, at most 4. */
export function defaultThreads (): number {
  return Math.max(1, Math.min(4, os.availableParallelism() - 1))
}
