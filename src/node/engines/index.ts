/**
 * Inference engines: the `Engine` contract, the OpenAI shapes engines speak, and the embedded
 * node-llama-cpp engine.
 */
export type {
  Engine,
  EngineCallOptions,
  EngineChangeEvent,
  EngineEvents,
  EngineHealth,
  EngineKind,
  EngineLoadOptions,
  EngineModel,
  EngineModelState
} from './types.js'
export type * from './openai-types.js'
export { defaultThreads } from './constants.js'
export { EmbeddedEngine, type EmbeddedEngineOptions, type EmbeddedGpu, type ModelEntry } from './embedded.js'
export { EMBEDDED_DEFAULTS, REQUEST_LIMITS, SAMPLING_DEFAULTS } from './constants.js'
export { StopScanner, type StopScan } from './stop-scanner.js'
export { parseKeepAlive } from './keep-alive.js'
export {
  parseChatRequest,
  parseCompletionRequest,
  parseEmbeddingRequest,
  type NormalizedMessage,
  type ParsedChatRequest,
  type ParsedCompletionRequest,
  type ParsedEmbeddingRequest,
  type SamplingParams
} from './openai-request.js'
export {
  chatChunk,
  chatCompletion,
  chatUsageChunk,
  decodeEmbedding,
  encodeEmbedding,
  newResponseId,
  normalizeVector,
  textChunk,
  textCompletion,
  textUsageChunk,
  unixNow,
  usage,
  type GenerationResult,
  type ResponseHeader
} from './openai-response.js'
export { SlotPool } from './slot-pool.js'
export { UpstreamEngine, UPSTREAM_DEFAULTS, type UpstreamEngineOptions } from './upstream.js'
export { LlamaServerEngine, LLAMA_SERVER_DEFAULTS, selectLlamacppBuild, toChatCompletion, toChatChunks, toTextCompletion, toTextChunks, type LlamaServerEngineOptions } from './llama-server.js'
export { OpenAIHttpClient, errorFromResponse, parseSse, type OpenAIHttpClientOptions, type OpenAIRequestOptions, type PassthroughRequest, type PassthroughResponse, type SseEvent } from './openai-http.js'
export { freePort, isAddressInUse, portInUse } from './ports.js'
