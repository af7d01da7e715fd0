import fs from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import { parse as parseYaml } from 'yaml'
import { multiaddr } from '@multiformats/multiaddr'
import { peerIdFromString } from '@libp2p/peer-id'
import { ConfigError } from '../errors.js'
import { OPTION_SPECS, defaultOptions, type NodeOptions, type OptionSpec } from './options.js'

const LOG_LEVELS = new Set(['trace', 'debug', 'info', 'warn', 'error', 'silent'])

function expandHome (p: string): string {
  return p === '~' || p.startsWith('~/') ? path.join(os.homedir(), p.slice(1)) : p
}

function coerce (spec: OptionSpec, raw: unknown, where: string): unknown {
  switch (spec.type) {
    case 'string':
      if (typeof raw !== 'string' && typeof raw !== 'number') throw new ConfigError(`${where}: expected a string`, spec.yaml)
      return String(raw)
    case 'int': {
      const n = typeof raw === 'number' ? raw : Number(String(raw).trim())
      if (!Number.isInteger(n) || n < 0) throw new ConfigError(`${where}: expected a non-negative integer, got '${String(raw)}'`, spec.yaml)
      return n
    }
    case 'bool':
      if (typeof raw === 'boolean') return raw
      if (/^(1|true|yes|on)$/i.test(String(raw))) return true
      if (/^(0|false|no|off)$/i.test(String(raw))) return false
      throw new ConfigError(`${where}: expected true or false, got '${String(raw)}'`, spec.yaml)
    case 'list': {
      const items = Array.isArray(raw) ? raw : String(raw).split(',').map(s => s.trim()).filter(Boolean)
      const list = items.map((item, i) => {
        // llamacpp.paths may use seed 000's `{ path, version, backend }` entries.
        const v = typeof item === 'object' && item !== null && 'path' in item ? (item as { path: unknown }).path : item
        if (typeof v !== 'string') throw new ConfigError(`${where}[${i}]: expected a string`, spec.yaml)
        return v
      })
      checkMultiaddrs(spec, list, where)
      return list
    }
  }
}

/**
 * Why `addr` cannot be a libp2p TCP address of this node (`--listen`) or of a peer
 * (`--bootstrap`), or null when it can. Checked here, before libp2p starts: libp2p's own message
 * for a bad address ("Component p2p was missing value") names neither the flag nor the value.
 */
export function multiaddrProblem (addr: string): string | null {
  let components
  try {
    components = multiaddr(addr).getComponents()
  } catch (err: any) {
    return String(err?.message ?? err).split('\n')[0]
  }
  if (!components.some(c => c.name === 'tcp')) return 'no /tcp/PORT in it (TCP is the only transport)'
  const p2p = components.find(c => c.name === 'p2p')
  if (p2p?.value != null) {
    try { peerIdFromString(p2p.value) } catch { return `'${p2p.value}' is not a peer id` }
  }
  return null
}

const MULTIADDR_OPTIONS: ReadonlySet<keyof NodeOptions> = new Set(['listen', 'bootstrap'])

/** Throws a one-line ConfigError naming where the address came from and the address. */
function checkMultiaddrs (spec: OptionSpec, items: string[], where: string): void {
  if (!MULTIADDR_OPTIONS.has(spec.key)) return
  for (const item of items) {
    const problem = multiaddrProblem(item)
    if (problem != null) throw new ConfigError(`${where}: '${item}' is not a valid multiaddr: ${problem}`, spec.yaml)
  }
}

/** Flattens a parsed YAML document into `dotted.key → value`, recursing into plain objects. */
function flatten (obj: Record<string, unknown>, prefix = '', out = new Map<string, unknown>()): Map<string, unknown> {
  for (const [k, v] of Object.entries(obj)) {
    const key = prefix === '' ? k : `${prefix}.${k}`
    if (v !== null && typeof v === 'object' && !Array.isArray(v)) flatten(v as Record<string, unknown>, key, out)
    else out.set(key, v)
  }
  return out
}

/** Reads and validates a YAML config file; an unknown key is an error that names it. */
export async function readConfigFile (file: string): Promise<Partial<NodeOptions>> {
  let text: string
  try {
    text = await fs.readFile(file, 'utf8')
  } catch (err: any) {
    throw new ConfigError(`cannot read config file ${file}: ${err.code ?? err.message}`)
  }
  let doc: unknown
  try {
    doc = parseYaml(text)
  } catch (err: any) {
    throw new ConfigError(`config file ${file} is not valid YAML: ${String(err.message).split('\n')[0]}`)
  }
  if (doc == null) return {}
  if (typeof doc !== 'object' || Array.isArray(doc)) throw new ConfigError(`config file ${file}: top level must be a mapping`)
  const byYaml = new Map(OPTION_SPECS.map(s => [s.yaml, s]))
  const out: Partial<NodeOptions> = {}
  for (const [key, value] of flatten(doc as Record<string, unknown>)) {
    const spec = byYaml.get(key)
    if (spec == null) throw new ConfigError(`config file ${file}: unknown key '${key}'`, key)
    if (value == null) continue
    ;(out as any)[spec.key] = coerce(spec, value, `config file ${file}: '${key}'`)
  }
  return out
}

/** Options from `SHEPHERD_*` environment variables. */
export function readEnv (env: NodeJS.ProcessEnv = process.env): Partial<NodeOptions> {
  const out: Partial<NodeOptions> = {}
  for (const spec of OPTION_SPECS) {
    const raw = env[spec.env]
    if (raw === undefined || raw === '') continue
    ;(out as any)[spec.key] = coerce(spec, raw, `environment ${spec.env}`)
  }
  return out
}

/** Options from already-parsed flags (`node:util` parseArgs values, keyed by flag name). */
export function readFlags (values: Record<string, unknown>): Partial<NodeOptions> {
  const out: Partial<NodeOptions> = {}
  for (const spec of OPTION_SPECS) {
    const raw = values[spec.flag]
    if (raw === undefined) continue
    ;(out as any)[spec.key] = coerce(spec, raw, `--${spec.flag}`)
  }
  if (values['no-mdns'] === true) out.mdns = false
  if (values['no-allow-remote'] === true) out.allowRemote = false
  if (values['no-prefix-routing'] === true) out.prefixRouting = false
  return out
}

/** Merges defaults < file < env < flags and checks the result as a whole. */
export async function resolveOptions (sources: { configFile?: string, env?: NodeJS.ProcessEnv, flags?: Record<string, unknown>, overrides?: Partial<NodeOptions> }): Promise<NodeOptions> {
  const fromFile = sources.configFile != null ? await readConfigFile(sources.configFile) : {}
  const opts: NodeOptions = {
    ...defaultOptions(),
    ...fromFile,
    ...readEnv(sources.env ?? process.env),
    ...readFlags(sources.flags ?? {}),
    ...sources.overrides
  }
  if (opts.apiKeyFile !== '') opts.apiKeys = [...opts.apiKeys, ...await readApiKeyFile(opts.apiKeyFile)]
  return validateOptions(opts)
}

/**
 * The keys of an API key file: one per line, blank lines and `#` comments skipped. A file that
 * cannot be read or holds no key is an error now: a node that starts without the keys meant for
 * it would serve its API to anyone.
 */
export async function readApiKeyFile (file: string): Promise<string[]> {
  let text: string
  try {
    text = await fs.readFile(path.resolve(expandHome(file)), 'utf8')
  } catch (err: any) {
    throw new ConfigError(`cannot read the API key file ${file}: ${err.code ?? err.message}`, 'api.key_file')
  }
  const keys = text.split(/\r?\n/).map(l => l.trim()).filter(l => l !== '' && !l.startsWith('#'))
  if (keys.length === 0) throw new ConfigError(`the API key file ${file} holds no key`, 'api.key_file')
  return keys
}

export function validateOptions (opts: NodeOptions): NodeOptions {
  opts.dataDir = path.resolve(expandHome(opts.dataDir))
  opts.modelsDirs = opts.modelsDirs.map(d => path.resolve(expandHome(d)))
  opts.llamacppPaths = opts.llamacppPaths.map(d => path.resolve(expandHome(d)))
  if (opts.swarmKeyFile !== '') opts.swarmKeyFile = path.resolve(expandHome(opts.swarmKeyFile))
  // Values set in code (overrides) skip coerce; flags, env and file were checked there with their source named.
  for (const spec of OPTION_SPECS) if (MULTIADDR_OPTIONS.has(spec.key)) checkMultiaddrs(spec, opts[spec.key] as string[], `--${spec.flag}`)
  for (const id of [...opts.trustAllow, ...opts.trustDeny]) {
    if (!/^[A-Za-z0-9]{32,128}$/.test(id)) throw new ConfigError(`'${id}' is not a peer id`, 'trust')
  }
  // An empty key (`--api-key ""`, a stray comma) would be required by no client and lock the API for all.
  if (opts.apiKeys.some(k => k.trim() === '')) throw new ConfigError('an API key is empty (--api-key "", api.keys or SHEPHERD_API_KEYS): give a key or drop the option', 'api.keys')
  if (opts.apiPort > 65535) throw new ConfigError(`api port ${opts.apiPort} is out of range`, 'api.port')
  if (!LOG_LEVELS.has(opts.logLevel)) throw new ConfigError(`log level '${opts.logLevel}' is not one of ${[...LOG_LEVELS].join(', ')}`, 'log_level')
  if (opts.groups.length === 0) opts.groups = ['default']
  if (opts.heartbeatMs < 50) throw new ConfigError('heartbeat must be at least 50 ms', 'membership.heartbeat_ms')
  if (opts.suspectAfterMs <= opts.heartbeatMs) throw new ConfigError('suspect_after_ms must exceed heartbeat_ms', 'membership.suspect_after_ms')
  if (opts.deadAfterMs <= opts.suspectAfterMs) throw new ConfigError('dead_after_ms must exceed suspect_after_ms', 'membership.dead_after_ms')
  const oneOf = (key: keyof NodeOptions, allowed: string[], yaml: string): void => {
    if (!allowed.includes(String(opts[key]))) throw new ConfigError(`${yaml} '${String(opts[key])}' is not one of ${allowed.join(', ')}`, yaml)
  }
  oneOf('engine', ['auto', 'embedded', 'llama-server', 'none'], 'engine.kind')
  oneOf('gpu', ['auto', 'cuda', 'vulkan', 'metal', 'off'], 'engine.gpu')
  oneOf('routing', ['least-loaded', 'round-robin', 'random', 'weighted', 'lowest-latency'], 'serving.routing')
  oneOf('membership', ['swim', 'flood'], 'membership.protocol')
  if (opts.swimProbeIntervalMs < 50 || opts.swimProbeTimeoutMs < 10 || opts.swimProbeTimeoutMs >= opts.swimProbeIntervalMs) throw new ConfigError('swim_probe_timeout_ms must be at least 10 and below swim_probe_interval_ms (at least 50)', 'membership.swim_probe_timeout_ms')
  if (opts.swimSuspicionMult < 1) throw new ConfigError('swim_suspicion_mult must be at least 1', 'membership.swim_suspicion_mult')
  if (opts.maxConnections < 8) throw new ConfigError('max_connections must be at least 8', 'p2p.max_connections')
  for (const l of opts.labels) {
    if (!/^[A-Za-z0-9._/-]{1,63}=[^\s]{0,128}$/.test(l)) throw new ConfigError(`label '${l}' is not key=value`, 'node.labels')
  }
  if (opts.maxConcurrency < 1) throw new ConfigError('max_concurrency must be at least 1', 'serving.max_concurrency')
  if (opts.parallel < 0 || opts.parallel > 256) throw new ConfigError('engine.parallel must be 0 (engine default) to 256', 'engine.parallel')
  for (const u of opts.upstreams) {
    if (!/^https?:\/\/[^\s]+$/.test(u)) throw new ConfigError(`upstream '${u}' is not an http(s) URL`, 'engine.upstreams')
  }
  if (opts.name.length === 0 || opts.name.length > 64) throw new ConfigError('node name must be 1-64 characters', 'node.name')
  return opts
}
