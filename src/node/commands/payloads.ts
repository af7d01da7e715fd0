import { Ajv, type ValidateFunction } from 'ajv'
import type { CommandType } from '../../p2p/index.js'

/**
 * The payload of each command type, and its strict schema: no extra fields, every string and
 * array bounded. A payload is checked only after its envelope's signature and authority, and a
 * handler only ever sees a payload that passed.
 */

/** A model name as the API shows it: a file name without `.gguf`, never a path. */
const MODEL_NAME_PATTERN = '^(?!\\.)[^/\\\\\\u0000-\\u001f]{1,256}$'
const MAX_KEEP_ALIVE_MS = 7 * 24 * 3600_000

/**
 * `keepAliveMs` -1 pins the model (a deployment's replica); `fingerprint` and `sources` let a
 * node that lacks the file pull it from those peers first.
 */
export interface LoadModelPayload { model: string, keepAliveMs?: number, fingerprint?: string, sources?: string[] }
export interface UnloadModelPayload { model: string }
export interface RunLlamacppPayload { model: string, args?: string[], port?: number }
export type StopProcessPayload = { pid: number } | { processId: string }
export type ScanModelsPayload = Record<string, never>
export interface CollectLogsPayload { lines?: number, since?: number }
export type UpdateConfigPayload =
  | { key: 'keepAliveMs', value: number }
  | { key: 'maxConcurrency', value: number }
  | { key: 'maxQueue', value: number }
  | { key: 'requestTimeoutMs', value: number }
  | { key: 'routing', value: 'least-loaded' | 'round-robin' | 'random' | 'weighted' | 'lowest-latency' }
  | { key: 'logLevel', value: 'trace' | 'debug' | 'info' | 'warn' | 'error' | 'silent' }

export interface CommandPayloads {
  load_model: LoadModelPayload
  unload_model: UnloadModelPayload
  run_llamacpp: RunLlamacppPayload
  stop_process: StopProcessPayload
  scan_models: ScanModelsPayload
  collect_logs: CollectLogsPayload
  update_config: UpdateConfigPayload
}

/** The configuration keys a leader may change at run time: none of them touches identity, keys, paths or the network. */
export const UPDATABLE_CONFIG_KEYS = ['keepAliveMs', 'maxConcurrency', 'maxQueue', 'requestTimeoutMs', 'routing', 'logLevel'] as const

type ArgRule = 'flag' | 'int' | 'number' | readonly string[]
const INT = 'int'
const NUM = 'number'
const CACHE_TYPES = ['f32', 'f16', 'bf16', 'q8_0', 'q4_0', 'q4_1', 'iq4_nl', 'q5_0', 'q5_1'] as const

/**
 * llama-server flags a command may pass, with the value each takes. Flags that name files,
 * hosts, keys or ports (`--model`, `--host`, `--api-key`, `--log-file`, `--lora`, `--slot-save-path`, ...)
 * are absent on purpose: the node chooses those itself.
 */
export const LLAMACPP_ARG_RULES: Readonly<Record<string, ArgRule>> = {
  '-c': INT,
  '--ctx-size': INT,
  '-ngl': INT,
  '--n-gpu-layers': INT,
  '--gpu-layers': INT,
  '-t': INT,
  '--threads': INT,
  '-tb': INT,
  '--threads-batch': INT,
  '-b': INT,
  '--batch-size': INT,
  '-ub': INT,
  '--ubatch-size': INT,
  '-np': INT,
  '--parallel': INT,
  '-n': INT,
  '--n-predict': INT,
  '-mg': INT,
  '--main-gpu': INT,
  '-sm': ['none', 'layer', 'row'],
  '--split-mode': ['none', 'layer', 'row'],
  '-fa': ['on', 'off', 'auto'],
  '--flash-attn': ['on', 'off', 'auto'],
  '-ctk': CACHE_TYPES,
  '--cache-type-k': CACHE_TYPES,
  '-ctv': CACHE_TYPES,
  '--cache-type-v': CACHE_TYPES,
  '--rope-freq-base': NUM,
  '--rope-freq-scale': NUM,
  '--temp': NUM,
  '--top-k': INT,
  '--top-p': NUM,
  '--min-p': NUM,
  '--repeat-penalty': NUM,
  '--cont-batching': 'flag',
  '--no-cont-batching': 'flag',
  '--mlock': 'flag',
  '--no-mmap': 'flag',
  '--jinja': 'flag',
  '--embedding': 'flag',
  '--embeddings': 'flag',
  '--reranking': 'flag',
  '--no-webui': 'flag'
}

const model = { type: 'string', pattern: MODEL_NAME_PATTERN }
const intIn = (minimum: number, maximum: number): object => ({ type: 'integer', minimum, maximum })

const schemas: Record<CommandType, object> = {
  load_model: {
    type: 'object',
    required: ['model'],
    additionalProperties: false,
    properties: {
      model,
      keepAliveMs: intIn(-1, MAX_KEEP_ALIVE_MS),
      fingerprint: { type: 'string', pattern: '^[a-z0-9:._-]{1,128}$' },
      sources: { type: 'array', maxItems: 16, items: { type: 'string', pattern: '^[A-Za-z0-9]{32,128}$' } }
    }
  },
  unload_model: { type: 'object', required: ['model'], additionalProperties: false, properties: { model } },
  run_llamacpp: {
    type: 'object',
    required: ['model'],
    additionalProperties: false,
    properties: {
      model,
      args: { type: 'array', maxItems: 64, items: { type: 'string', minLength: 1, maxLength: 64, pattern: '^[A-Za-z0-9._,:+-]+$' } },
      port: intIn(1024, 65535)
    }
  },
  // Exactly one of the two.
  stop_process: {
    type: 'object',
    minProperties: 1,
    maxProperties: 1,
    additionalProperties: false,
    properties: { pid: intIn(2, 4_194_304), processId: { type: 'string', pattern: '^[A-Za-z0-9._:-]{1,128}$' } }
  },
  scan_models: { type: 'object', additionalProperties: false, properties: {} },
  collect_logs: {
    type: 'object',
    additionalProperties: false,
    properties: { lines: intIn(1, 10_000), since: intIn(0, Number.MAX_SAFE_INTEGER) }
  },
  update_config: {
    type: 'object',
    required: ['key'],
    discriminator: { propertyName: 'key' },
    oneOf: [
      setting('keepAliveMs', intIn(0, MAX_KEEP_ALIVE_MS)),
      setting('maxConcurrency', intIn(1, 1024)),
      setting('maxQueue', intIn(0, 100_000)),
      setting('requestTimeoutMs', intIn(1000, 24 * 3600_000)),
      setting('routing', { enum: ['least-loaded', 'round-robin', 'random', 'weighted', 'lowest-latency'] }),
      setting('logLevel', { enum: ['trace', 'debug', 'info', 'warn', 'error', 'silent'] })
    ]
  }
}

function setting (key: typeof UPDATABLE_CONFIG_KEYS[number], value: object): object {
  return { type: 'object', required: ['key', 'value'], additionalProperties: false, properties: { key: { const: key }, value } }
}

let validators: Record<CommandType, ValidateFunction> | undefined
function compiled (): Record<CommandType, ValidateFunction> {
  if (validators == null) {
    const ajv = new Ajv({ allErrors: false, discriminator: true })
    validators = Object.fromEntries(Object.entries(schemas).map(([type, schema]) => [type, ajv.compile(schema)])) as Record<CommandType, ValidateFunction>
  }
  return validators
}

export type PayloadCheck = { ok: true } | { ok: false, message: string }

/** Checks `payload` against the schema of `type`, then the rules a schema cannot say (llama-server flags and their values). */
export function checkPayload (type: CommandType, payload: unknown): PayloadCheck {
  const validate = compiled()[type]
  if (!validate(payload)) {
    const e = validate.errors?.[0]
    return { ok: false, message: `payload${e?.instancePath ?? ''} ${e?.message ?? 'is invalid'}` }
  }
  if (type === 'run_llamacpp') {
    const args = (payload as RunLlamacppPayload).args
    if (args != null) return checkLlamacppArgs(args)
  }
  return { ok: true }
}

const INT_VALUE = /^-?\d{1,9}$/
const NUM_VALUE = /^-?\d{1,9}(\.\d{1,9})?$/

/** `args` is flags and their values as separate items: `['--ctx-size', '4096', '--mlock']`. */
export function checkLlamacppArgs (args: readonly string[]): PayloadCheck {
  for (let i = 0; i < args.length; i++) {
    const flag = args[i]
    const rule = Object.hasOwn(LLAMACPP_ARG_RULES, flag) ? LLAMACPP_ARG_RULES[flag] : undefined
    if (rule == null) return { ok: false, message: `llama-server flag '${flag}' is not allowed` }
    if (rule === 'flag') continue
    const value = args[++i]
    if (value == null) return { ok: false, message: `llama-server flag '${flag}' needs a value` }
    const ok = rule === INT ? INT_VALUE.test(value) : rule === NUM ? NUM_VALUE.test(value) : (rule as readonly string[]).includes(value)
    if (!ok) return { ok: false, message: `'${value}' is not a valid value for '${flag}'` }
  }
  return { ok: true }
}
