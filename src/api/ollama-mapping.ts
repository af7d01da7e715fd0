/**
 * The Ollama API mapped onto the OpenAI requests the router carries, and OpenAI output mapped
 * back into Ollama's shapes (ollama/docs/api.md). Pure functions; refusals are `BadRequestError`s.
 *
 * Ollama's `options` mix sampling (mapped) with load-time settings (`num_ctx`, `num_gpu`,
 * `num_thread`...), which this mesh decides per node from its own options: those are accepted
 * and left to the node, as Ollama itself leaves unknown ones. Sampling that no engine here
 * implements (mirostat, tfs_z, typical_p) is refused unless it is the value that means "off".
 */
import { BadRequestError } from '../errors.js'
import type { MeshModel } from '../scheduler/index.js'
import { mapOllamaMessages, mapOllamaTools, type OllamaToolCall } from './ollama-tools.js'

/** The Ollama API level this server speaks; clients gate features on it, not on our version. */
export const OLLAMA_API_VERSION = '0.12.0'

type Body = Record<string, unknown>

const present = (b: Body, k: string): boolean => b[k] !== undefined && b[k] !== null

function asObject (v: unknown, field: string): Body {
  if (v === null || typeof v !== 'object' || Array.isArray(v)) throw new BadRequestError(`${field} must be a JSON object`, field === 'body' ? null : field)
  return v as Body
}

/** The model a request names: `model`, or the older `name`. */
export function modelOf (b: Body): string {
  const m = present(b, 'model') ? b.model : b.name
  if (typeof m !== 'string' || m.length === 0 || m.length > 256) throw new BadRequestError('model is required', 'model')
  return m
}

/**
 * The mesh name for an Ollama model reference: Ollama clients add the default `:latest` tag to
 * bare names, and the mesh's names carry no tag.
 */
export function resolveModelName (name: string, known: (n: string) => boolean): string {
  if (known(name)) return name
  const bare = name.replace(/:latest$/, '')
  return known(bare) ? bare : name
}

/** Options mapped onto OpenAI body fields. */
const SAMPLING: Record<string, string> = {
  temperature: 'temperature',
  top_p: 'top_p',
  top_k: 'top_k',
  min_p: 'min_p',
  seed: 'seed',
  repeat_penalty: 'repeat_penalty',
  presence_penalty: 'presence_penalty',
  frequency_penalty: 'frequency_penalty'
}
/** Load-time and runtime settings a node chooses for itself (context size, threads, GPU layers). */
const NODE_DECIDES = new Set(['num_ctx', 'num_batch', 'num_gpu', 'main_gpu', 'low_vram', 'f16_kv', 'logits_all', 'vocab_only', 'use_mmap', 'use_mlock', 'embedding_only', 'num_thread', 'numa', 'num_keep', 'repeat_last_n', 'penalize_newline'])
/** Samplers no engine here implements, with the value that turns each off. */
const OFF_VALUE: Record<string, number> = { mirostat: 0, tfs_z: 1, typical_p: 1 }

/** Maps Ollama `options` onto OpenAI fields; the engine validates the values' ranges. */
export function mapOptions (raw: unknown): Record<string, unknown> {
  if (raw === undefined || raw === null) return {}
  const o = asObject(raw, 'options')
  const out: Record<string, unknown> = {}
  for (const [k, v] of Object.entries(o)) {
    if (v === null) continue
    if (k in SAMPLING) {
      if (typeof v !== 'number') throw new BadRequestError(`options.${k} must be a number`, `options.${k}`)
      out[SAMPLING[k]] = v
    } else if (k === 'num_predict') {
      if (typeof v !== 'number' || !Number.isSafeInteger(v)) throw new BadRequestError('options.num_predict must be an integer', 'options.num_predict')
      // -1 (no limit) and -2 (fill the context) leave the engine's cap, the context, in charge.
      if (v >= 1) out.max_tokens = v
      else if (v === 0) throw new BadRequestError('options.num_predict must be positive, -1 or -2', 'options.num_predict')
    } else if (k === 'stop') {
      const list = typeof v === 'string' ? [v] : v
      if (!Array.isArray(list) || list.some(s => typeof s !== 'string')) throw new BadRequestError('options.stop must be a list of strings', 'options.stop')
      if (list.length > 0) out.stop = list
    } else if (k in OFF_VALUE) {
      if (v !== OFF_VALUE[k]) throw new BadRequestError(`options.${k} is not supported by this server (only ${OFF_VALUE[k]}, which turns it off)`, `options.${k}`, 'unsupported_parameter')
    } else if (!NODE_DECIDES.has(k)) {
      throw new BadRequestError(`options.${k} is not a known option`, `options.${k}`)
    }
  }
  return out
}

/**
 * `format`: `"json"` or a JSON schema, as OpenAI's `response_format`, which both local engines
 * enforce with a grammar; a schema they cannot enforce is refused there, naming `format`.
 */
function mapFormat (b: Body): Record<string, unknown> {
  if (!present(b, 'format') || b.format === '') return {}
  if (b.format === 'json') return { response_format: { type: 'json_object' } }
  if (typeof b.format === 'object' && !Array.isArray(b.format)) return { response_format: { type: 'json_schema', json_schema: { name: 'format', schema: b.format, strict: true } } }
  throw new BadRequestError('format must be "json" or a JSON schema object', 'format')
}

function refuse (b: Body, keys: string[]): void {
  for (const k of keys) {
    const v = b[k]
    if (v === undefined || v === null || v === false || (Array.isArray(v) && v.length === 0)) continue
    throw new BadRequestError(`${k} is not supported by this server`, k, 'unsupported_parameter')
  }
}

function parseStream (b: Body): boolean {
  if (!present(b, 'stream')) return true // Ollama streams unless told not to.
  if (typeof b.stream !== 'boolean') throw new BadRequestError('stream must be a boolean', 'stream')
  return b.stream
}

/** Fields every generating request shares: keep_alive, options, format, streamed usage. */
function common (b: Body, model: string): Record<string, unknown> {
  return {
    model,
    ...(present(b, 'keep_alive') ? { keep_alive: b.keep_alive } : {}),
    ...mapOptions(b.options),
    ...mapFormat(b),
    // Always streamed inside the mesh: durations and counts come from the chunks, and a
    // non-streamed Ollama answer is assembled here.
    stream: true,
    stream_options: { include_usage: true }
  }
}

export interface ParsedOllamaChat {
  model: string
  stream: boolean
  body: Record<string, unknown>
}

/**
 * Validates `/api/chat`: text, `tools` (with OpenAI's `tool_choice` as an extension), assistant
 * `tool_calls` and `role: "tool"` results (see ollama-tools.ts). Images and thinking are refused.
 */
export function parseOllamaChat (raw: unknown, resolve: (n: string) => string = n => n): ParsedOllamaChat {
  const b = asObject(raw, 'body')
  const model = resolve(modelOf(b))
  refuse(b, ['think', 'logprobs'])
  if (!Array.isArray(b.messages)) throw new BadRequestError('messages must be a list', 'messages')
  const messages = mapOllamaMessages(b.messages)
  return { model, stream: parseStream(b), body: { ...common(b, model), ...mapOllamaTools(b), messages } }
}

export interface ParsedOllamaGenerate {
  model: string
  stream: boolean
  /** `load`: an empty prompt only loads (or, with keep_alive 0, unloads) the model. */
  kind: 'chat' | 'completion' | 'load'
  unload: boolean
  body: Record<string, unknown>
}

/**
 * Validates `/api/generate`: a prompt (with `system`) through the model's chat template, or
 * verbatim with `raw: true`. An empty prompt only loads the model, as in Ollama.
 */
export function parseOllamaGenerate (raw: unknown, resolve: (n: string) => string = n => n): ParsedOllamaGenerate {
  const b = asObject(raw, 'body')
  const model = resolve(modelOf(b))
  refuse(b, ['images', 'think', 'logprobs', 'context', 'template'])
  if (present(b, 'suffix') && b.suffix !== '') throw new BadRequestError('suffix is not supported by this server', 'suffix', 'unsupported_parameter')
  if (present(b, 'prompt') && typeof b.prompt !== 'string') throw new BadRequestError('prompt must be a string', 'prompt')
  if (present(b, 'system') && typeof b.system !== 'string') throw new BadRequestError('system must be a string', 'system')
  if (present(b, 'raw') && typeof b.raw !== 'boolean') throw new BadRequestError('raw must be a boolean', 'raw')
  const prompt = (b.prompt as string | undefined) ?? ''
  const stream = parseStream(b)
  const base = common(b, model)
  if (prompt === '') {
    // Loading means running something: one token of an empty turn, with the request's keep_alive.
    return { model, stream, kind: 'load', unload: b.keep_alive === 0 || b.keep_alive === '0', body: { ...base, messages: [{ role: 'user', content: '' }], max_tokens: 1 } }
  }
  if (b.raw === true) {
    if (present(b, 'system')) throw new BadRequestError('system cannot be used with raw: the prompt is sent verbatim', 'system')
    // The completions API stops at 16 tokens by default; Ollama does not.
    const { stream_options: _so, ...rest } = base
    return { model, stream, kind: 'completion', unload: false, body: { max_tokens: 1 << 20, ...rest, stream_options: { include_usage: true }, prompt } }
  }
  const messages = [
    ...(typeof b.system === 'string' && b.system !== '' ? [{ role: 'system', content: b.system }] : []),
    { role: 'user', content: prompt }
  ]
  return { model, stream, kind: 'chat', unload: false, body: { ...base, messages } }
}

export interface ParsedOllamaEmbed {
  model: string
  /** `/api/embeddings` (legacy): one prompt, one `embedding`. */
  legacy: boolean
  body: Record<string, unknown>
}

/** Validates `/api/embed` (`input`: a string or strings) or the legacy `/api/embeddings` (`prompt`). */
export function parseOllamaEmbed (raw: unknown, legacy: boolean, resolve: (n: string) => string = n => n): ParsedOllamaEmbed {
  const b = asObject(raw, 'body')
  const model = resolve(modelOf(b))
  let input: string | string[]
  if (legacy) {
    if (typeof b.prompt !== 'string' || b.prompt === '') throw new BadRequestError('prompt must be a non-empty string', 'prompt')
    input = b.prompt
  } else {
    const i = b.input
    if (typeof i === 'string' && i !== '') input = i
    else if (Array.isArray(i) && i.length > 0 && i.every(x => typeof x === 'string' && x !== '')) input = i as string[]
    else throw new BadRequestError('input must be a non-empty string or a non-empty list of non-empty strings', 'input')
  }
  if (present(b, 'truncate') && typeof b.truncate !== 'boolean') throw new BadRequestError('truncate must be a boolean', 'truncate')
  if (present(b, 'dimensions') && (typeof b.dimensions !== 'number' || !Number.isInteger(b.dimensions) || b.dimensions < 1)) {
    throw new BadRequestError('dimensions must be a positive integer', 'dimensions')
  }
  // Embedding takes no sampling; only options a node decides for itself make sense here.
  const sampling = mapOptions(b.options)
  if (Object.keys(sampling).length > 0) throw new BadRequestError(`options.${Object.keys(sampling)[0]} does not apply to embeddings`, 'options')
  return {
    model,
    legacy,
    body: {
      model,
      input,
      encoding_format: 'float',
      ...(present(b, 'dimensions') ? { dimensions: b.dimensions } : {}),
      ...(present(b, 'keep_alive') ? { keep_alive: b.keep_alive } : {})
    }
  }
}

/** Ollama's `done_reason` for an OpenAI finish reason. */
export function doneReasonOf (finishReason: string): string {
  return finishReason === 'length' ? 'length' : 'stop'
}

/** Timings and counts of one generation, durations in nanoseconds as Ollama reports them. */
export interface GenerationStats {
  totalNs: number
  /** Until the first piece of output: the prompt's evaluation (and a load, when there was one). */
  promptNs: number
  evalNs: number
  promptTokens: number
  evalTokens: number
}

function statsFields (s: GenerationStats): Record<string, number> {
  return {
    total_duration: s.totalNs,
    // The load, when one happened, is inside the prompt time: the host does not report it apart.
    load_duration: 0,
    prompt_eval_count: s.promptTokens,
    prompt_eval_duration: s.promptNs,
    eval_count: s.evalTokens,
    eval_duration: s.evalNs
  }
}

/** One streamed `/api/chat` line (`done: false`). */
export function chatLine (model: string, createdAt: string, text: string): Record<string, unknown> {
  return { model, created_at: createdAt, message: { role: 'assistant', content: text }, done: false }
}

/** The streamed `/api/chat` line carrying the tool calls, whole, as Ollama sends them before the last line. */
export function toolCallsLine (model: string, createdAt: string, calls: OllamaToolCall[]): Record<string, unknown> {
  return { model, created_at: createdAt, message: { role: 'assistant', content: '', tool_calls: calls }, done: false }
}

/** The last `/api/chat` line, or the whole non-streamed answer with `text` (and its tool calls). */
export function chatFinal (model: string, createdAt: string, text: string, doneReason: string, stats: GenerationStats, calls: OllamaToolCall[] = []): Record<string, unknown> {
  const message = { role: 'assistant', content: text, ...(calls.length > 0 ? { tool_calls: calls } : {}) }
  return { model, created_at: createdAt, message, done_reason: doneReason, done: true, ...statsFields(stats) }
}

/** One streamed `/api/generate` line. */
export function generateLine (model: string, createdAt: string, text: string): Record<string, unknown> {
  return { model, created_at: createdAt, response: text, done: false }
}

/**
 * The last `/api/generate` line, or the whole answer. `context` (the token ids to continue from)
 * is not returned: the engines do not expose token ids, and a request that sends one is refused.
 */
export function generateFinal (model: string, createdAt: string, text: string, doneReason: string, stats: GenerationStats | null): Record<string, unknown> {
  return { model, created_at: createdAt, response: text, done: true, done_reason: doneReason, ...(stats != null ? statsFields(stats) : {}) }
}

/** `/api/embed`'s answer from an OpenAI embeddings result. */
export function embedResult (model: string, data: Record<string, unknown>, totalNs: number): Record<string, unknown> {
  const rows = Array.isArray(data.data) ? data.data as Array<{ embedding?: unknown, index?: number }> : []
  const embeddings = [...rows].sort((a, b) => (a.index ?? 0) - (b.index ?? 0)).map(r => Array.isArray(r.embedding) ? r.embedding : [])
  const usage = data.usage as { prompt_tokens?: number } | undefined
  return { model, embeddings, total_duration: totalNs, load_duration: 0, prompt_eval_count: usage?.prompt_tokens ?? 0 }
}

/** A model's `details`, as in `/api/tags`, `/api/show` and `/api/ps`. */
export function detailsOf (m: MeshModel): Record<string, unknown> {
  const family = m.architecture ?? ''
  return {
    parent_model: '',
    format: 'gguf',
    family,
    families: family === '' ? null : [family],
    parameter_size: '',
    quantization_level: m.quantization ?? ''
  }
}

/** One `/api/tags` entry; `modifiedAt` is when this node first saw the model list. */
export function tagsEntry (m: MeshModel, modifiedAt: string): Record<string, unknown> {
  return { name: m.name, model: m.name, modified_at: modifiedAt, size: m.sizeBytes, digest: m.fingerprint ?? '', details: detailsOf(m) }
}

/** One `/api/ps` entry: a model loaded somewhere in the mesh. */
export function psEntry (m: MeshModel, expiresAt: string): Record<string, unknown> {
  return { name: m.name, model: m.name, size: m.sizeBytes, digest: m.fingerprint ?? '', details: detailsOf(m), expires_at: expiresAt, size_vram: 0 }
}

/** `/api/show`'s answer: what the mesh knows about the file (no Modelfile: there is none). */
export function showResult (m: MeshModel, modifiedAt: string): Record<string, unknown> {
  const arch = m.architecture ?? 'unknown'
  return {
    license: '',
    modelfile: '',
    parameters: '',
    template: '',
    details: detailsOf(m),
    model_info: {
      'general.architecture': arch,
      ...(m.contextLength != null ? { [`${arch}.context_length`]: m.contextLength } : {})
    },
    capabilities: ['completion', 'tools', 'embedding'],
    modified_at: modifiedAt
  }
}
