/**
 * The contract every inference backend of a node implements: the embedded node-llama-cpp
 * engine, a managed `llama-server` process, or an upstream OpenAI-compatible URL. The API
 * layer and the `/shepherd/openai` protocol handler only ever talk to this interface.
 */
import type {
  ChatCompletion,
  ChatCompletionChunk,
  ChatCompletionRequest,
  CompletionRequest,
  EmbeddingRequest,
  EmbeddingResponse,
  TextCompletion,
  TextCompletionChunk
} from './openai-types.js'
import type { PassthroughRequest, PassthroughResponse } from './openai-http.js'

export type EngineKind = 'embedded' | 'llama-server' | 'upstream'

/** `on_disk`: known and loadable; `loading`: a load is under way; `loaded`: ready to serve. */
export type EngineModelState = 'loaded' | 'loading' | 'on_disk'

export interface EngineModel {
  /** The name used as `model` in OpenAI requests. */
  id: string
  state: EngineModelState
  /** File size on disk, or memory held when loaded, when known. */
  sizeBytes?: number
  /** Identity of the model file (sha256 of its content), when known (see `ModelFile.fingerprint`). */
  fingerprint?: string
  /** Tokens one request can use: the loaded context size, else the trained length when known. */
  contextLength?: number
  /** Requests generating right now (loaded models only). */
  activeRequests?: number
  /** Requests waiting for a free slot (loaded models only). */
  queuedRequests?: number
  /** Kept loaded for a deployment (no idle unload) until unpinned or unloaded. */
  pinned?: boolean
}

export interface EngineHealth {
  /** `ok`: serving; `degraded`: serving with a problem (`detail` says which); `down`: not serving. */
  status: 'ok' | 'degraded' | 'down'
  detail?: string
  loadedModels: number
  activeRequests: number
  queuedRequests: number
}

/** Emitted as `change` whenever a model's state changes, so gossip snapshots update at once. */
export interface EngineChangeEvent {
  model: string
  state: EngineModelState
}

export interface EngineEvents {
  change: [event: EngineChangeEvent]
}

export interface EngineCallOptions {
  /** Aborting stops generation promptly and frees the slot; the call rejects with the signal's reason. */
  signal?: AbortSignal
}

export interface EngineLoadOptions extends EngineCallOptions {
  /** How long the model stays loaded when idle; the engine's default when omitted. */
  keepAliveMs?: number
}

/**
 * An inference backend. Request bodies are OpenAI request bodies as parsed JSON; results are
 * exact OpenAI response objects. Invalid parameters reject with `BadRequestError`, an unknown
 * model with `ModelNotFoundError`, a saturated engine with `OverloadedError`.
 *
 * Streaming methods return async iterables whose first `next()` rejects for anything that
 * goes wrong before generation starts (validation, unknown model, load failure, queue full),
 * so a caller can still answer with an HTTP error before it sends any event. Ending the
 * iteration early (`break`, `return()`) stops generation.
 */
export interface Engine {
  readonly id: string
  readonly kind: EngineKind

  /** Every model this engine can serve, loaded or not. */
  listModels: () => EngineModel[]
  /** Loads a model (a no-op when loaded; joins a load under way). */
  load: (model: string, options?: EngineLoadOptions) => Promise<EngineModel>
  /** Unloads a model; in-flight requests on it are aborted. Resolves false when it was not loaded. */
  unload: (model: string) => Promise<boolean>
  health: () => Promise<EngineHealth>
  /** Releases everything the engine holds; it serves nothing afterwards. */
  close: () => Promise<void>
  /**
   * Changes the default idle time before an unused model unloads (`update_config keepAliveMs`);
   * it applies from each model's next idle period. Engines without idle unloads omit it.
   */
  setKeepAlive?: (ms: number) => void

  chat: (body: ChatCompletionRequest, options?: EngineCallOptions) => Promise<ChatCompletion>
  chatStream: (body: ChatCompletionRequest, options?: EngineCallOptions) => AsyncIterable<ChatCompletionChunk>
  completion: (body: CompletionRequest, options?: EngineCallOptions) => Promise<TextCompletion>
  completionStream: (body: CompletionRequest, options?: EngineCallOptions) => AsyncIterable<TextCompletionChunk>
  embeddings: (body: EmbeddingRequest, options?: EngineCallOptions) => Promise<EmbeddingResponse>

  /** Whether raw HTTP for `path` (e.g. `/audio/speech`) can be passed to this engine's server. */
  supportsPassthrough?: (path: string) => boolean
  /** Passes a raw HTTP request (audio, images) through to the engine's server, untouched. */
  passthrough?: (req: PassthroughRequest) => Promise<PassthroughResponse>

  on (event: 'change', listener: (event: EngineChangeEvent) => void): unknown
  off (event: 'change', listener: (event: EngineChangeEvent) => void): unknown
}
