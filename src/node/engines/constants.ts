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
  maxEmbeddingInputs: 2048
} as const

export const EMBEDDED_DEFAULTS = {
  id: 'embedded',
  gpu: 'auto',
  /** Tokens per sequence, capped by the model's trained length. */
  contextSize: 2048,
  /** Concurrent requests per loaded model (context sequences). */
  maxSequences: 4,
  /** Requests that may wait for a sequence per model before new ones get `OverloadedError`. */
  maxQueue: 64,
  /** Idle time before a model is unloaded. */
  keepAliveMs: 5 * 60_000
} as const

/** Inference threads that fit the machine: leave a core for the node itself, at most 4. */
export function defaultThreads (): number {
  return Math.max(1, Math.min(4, os.availableParallelism() - 1))
}
