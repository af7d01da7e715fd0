import type { ValidateFunction } from 'ajv'
import { compileSchema } from '../../p2p/index.js'
import type { CommandType } from '../../p2p/index.js'

/**
 * The payload of each command type, and its strict schema: no extra fields, every string and
 * array bounded. A payload is checked only after its envelope's signature and authority, and a
 * handler only ever sees a payload that passed.
 */

/** A model name as the API shows it: the path below the models dir without `.gguf` (`Qwen/x`). */
// As the blob protocol's: up to 4 folder levels, no segment starting with a dot.
const SEGMENT = '(?!\\.)[^/\\\\\\u0000-\\u001f]{1,256}'
const MODEL_NAME_PATTERN = `^(?=.{1,256}$)${SEGMENT}(?:/${SEGMENT}){0,3}$`
const MAX_KEEP_ALIVE_MS = 7 * 24 * 3600_000

/**
 * `keepAliveMs` -1 pins the model (a deployment's replica); `fingerprint` and `sources` let a
 * node that lacks the file pull it from those peers first.
 */
export interface LoadModelPayload {
  model: string
  keepAliveMs?: number
  fingerprint?: string
  sources?: string[]
  /** Load as a split replica's head: llama-server reaches these workers' rpc-servers through the tunnel (issue 16). */
  split?: { workers: string[], fractions: number[] }
}
/** A worker's part of a split replica: serve `model` for `head` over the RPC tunnel, or stop. */
export interface ServeRpcPayload { model: string, head: string, stop?: boolean }
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
  serve_rpc: ServeRpcPayload
}

/** The configuration keys a leader may change at run time: none of them touches identity, keys, paths or the network. */
export const UPDATABLE_CONFIG_KEYS = ['keepAliveMs', 'maxConcurrency', 'maxQueue', 'requestTimeoutMs', 'routing', 'logLevel'] as const

/** A flag, an integer or a number within bounds, or one of some words. */
type ArgRule = 'flag' | { int: readonly [number, number] } | { num: readonly [number, number] } | readonly string[]
const int = (min: number, max: number): ArgRule => ({ int: [min, max] })
const num = (min: number, max: number): ArgRule => ({ num: [min, max] })
const CACHE_TYPES = ['f32', 'f16', 'bf16', 'q8_0', 'q4_0', 'q4_1', 'iq4_nl', 'q5_0', 'q5_1'] as const

/**
 * llama-server flags a command may pass, with the value each takes and its bounds. Flags that
 * name files, hosts, keys or ports (`--model`, `--host`, `--api-key`, `--log-file`, `--lora`,
 * `--slot-save-path`, ...) are absent on purpose, and so are those the node sizes itself
 * (`--ctx-size`, `--parallel`, `--threads`: see `NODE_OWNED_LLAMACPP_FLAGS`): the node
 * chooses those, and its own flags win on the command line (src/node/engines/llama-args.ts).
 */
export const LLAMACPP_ARG_RULES: Readonly<Record<string, ArgRule>> = {
  '-ngl': int(0, 999),
  '--n-gpu-layers': int(0, 999),
  '--gpu-layers': int(0, 999),
  '-tb': int(1, 64),
  '--threads-batch': int(1, 64),
  '-b': int(1, 8192),
  '--batch-size': int(1, 8192),
  '-ub': int(1, 8192),
  '--ubatch-size': int(1, 8192),
  '-n': int(-1, 1_000_000),
  '--n-predict': int(-1, 1_000_000),
  '-mg': int(0, 63),
  '--main-gpu': int(0, 63),
  '-sm': ['none', 'layer', 'row'],
  '--split-mode': ['none', 'layer', 'row'],
  '-fa': ['on', 'off', 'auto'],
  '--flash-attn': ['on', 'off', 'auto'],
  '-ctk': CACHE_TYPES,
  '--cache-type-k': CACHE_TYPES,
  '-ctv': CACHE_TYPES,
  '--cache-type-v': CACHE_TYPES,
  '--rope-freq-base': num(0, 100_000_000),
  '--rope-freq-scale': num(0, 100),
  '--temp': num(0, 10),
  '--top-k': int(0, 1000),
  '--top-p': num(0, 1),
  '--min-p': num(0, 1),
  '--repeat-penalty': num(0, 10),
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

/** Flags the node sizes itself: a command naming one is refused (it would override the node's choice). */
export const NODE_OWNED_LLAMACPP_FLAGS: Readonly<Record<string, string>> = {
  '-c': '--ctx-size', '--ctx-size': '--ctx-size',
  '-np': '--parallel', '--parallel': '--parallel',
  '-t': '--threads', '--threads': '--threads',
  '-m': '--model', '--model': '--model',
  '--host': '--host', '--port': '--port', '--alias': '--alias', '-a': '--alias'
}

/** Flags only the node's own operator may pass: `--mlock` pins every page of the model in RAM, which a remote issuer must not decide. */
export const LOCAL_ONLY_LLAMACPP_FLAGS: readonly string[] = ['--mlock']

/** Spellings of one flag, so `-ngl 1 --n-gpu-layers 2` counts as given twice. */
const SAME_FLAG: Readonly<Record<string, string>> = {
  '-ngl': '--n-gpu-layers', '--gpu-layers': '--n-gpu-layers', '-tb': '--threads-batch', '-b': '--batch-size', '-ub': '--ubatch-size',
  '-n': '--n-predict', '-mg': '--main-gpu', '-sm': '--split-mode', '-fa': '--flash-attn', '-ctk': '--cache-type-k', '-ctv': '--cache-type-v',
  '--embedding': '--embeddings'
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
      sources: { type: 'array', maxItems: 16, items: { type: 'string', pattern: '^[A-Za-z0-9]{32,128}$' } },
      split: {
        type: 'object',
        required: ['workers', 'fractions'],
        additionalProperties: false,
        properties: {
          workers: { type: 'array', minItems: 1, maxItems: 8, uniqueItems: true, items: { type: 'string', pattern: '^[A-Za-z0-9]{32,128}$' } },
          fractions: { type: 'array', minItems: 2, maxItems: 9, items: { type: 'number', minimum: 0, maximum: 1 } }
        }
      }
    }
  },
  serve_rpc: {
    type: 'object',
    required: ['model', 'head'],
    additionalProperties: false,
    properties: { model, head: { type: 'string', pattern: '^[A-Za-z0-9]{32,128}$' }, stop: { type: 'boolean' } }
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
    validators = Object.fromEntries(Object.entries(schemas).map(([type, schema]) => [type, compileSchema(schema)])) as Record<CommandType, ValidateFunction>
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

/**
 * `args` is flags and their values as separate items: `['-ngl', '99', '--jinja']`. Each flag
 * must be allowed, given once, with a value in bounds; a flag the node sizes itself is refused;
 * with `remote` (an issuer other than this node), so are the local-only flags.
 */
export function checkLlamacppArgs (args: readonly string[], opts: { remote?: boolean } = {}): PayloadCheck {
  const seen = new Set<string>()
  for (let i = 0; i < args.length; i++) {
    const flag = args[i]
    if (Object.hasOwn(NODE_OWNED_LLAMACPP_FLAGS, flag)) return { ok: false, message: `llama-server flag '${flag}' is chosen by the node itself` }
    const rule = Object.hasOwn(LLAMACPP_ARG_RULES, flag) ? LLAMACPP_ARG_RULES[flag] : undefined
    if (rule == null) return { ok: false, message: `llama-server flag '${flag}' is not allowed` }
    if (opts.remote === true && LOCAL_ONLY_LLAMACPP_FLAGS.includes(flag)) return { ok: false, message: `llama-server flag '${flag}' is allowed only to this node's own operator` }
    const canon = llamacppFlagKey(flag)
    if (seen.has(canon)) return { ok: false, message: `llama-server flag '${flag}' is given more than once` }
    seen.add(canon)
    if (rule === 'flag') continue
    const value = args[++i]
    if (value == null) return { ok: false, message: `llama-server flag '${flag}' needs a value` }
    if (!valueOk(rule, value)) return { ok: false, message: `'${value}' is not a valid value for '${flag}'${bounds(rule)}` }
  }
  return { ok: true }
}

/** One name for all spellings of a flag (`-ngl` and `--gpu-layers` are `--n-gpu-layers`). */
export function llamacppFlagKey (flag: string): string {
  return Object.hasOwn(SAME_FLAG, flag) ? SAME_FLAG[flag] : flag
}

function valueOk (rule: Exclude<ArgRule, 'flag'>, value: string): boolean {
  if (Array.isArray(rule)) return rule.includes(value)
  const [min, max] = 'int' in rule ? (rule as { int: readonly [number, number] }).int : (rule as { num: readonly [number, number] }).num
  if (!('int' in rule ? INT_VALUE : NUM_VALUE).test(value)) return false
  const n = Number(value)
  return n >= min && n <= max
}

function bounds (rule: Exclude<ArgRule, 'flag'>): string {
  if (Array.isArray(rule)) return ` (one of ${rule.join(', ')})`
  const [min, max] = 'int' in rule ? (rule as { int: readonly [number, number] }).int : (rule as { num: readonly [number, number] }).num
  return ` (${min} to ${max})`
}
