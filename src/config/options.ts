import os from 'node:os'
import path from 'node:path'

/**
 * Every setting of a node, in one place: its default, where it lives in the YAML config file,
 * its environment variable and its command-line flag. Precedence: default < file < env < flag.
 */
export interface NodeOptions {
  /** Directory of the LevelDB store (identity, known peers, later deployments and audit). */
  dataDir: string
  /** Human-readable node name shown to peers. */
  name: string
  apiHost: string
  apiPort: number
  /** libp2p listen multiaddrs. */
  listen: string[]
  /** Peers to dial at start and keep dialing, for networks mDNS does not cross. */
  bootstrap: string[]
  mdns: boolean
  mdnsIntervalMs: number
  groups: string[]
  modelsDirs: string[]
  /** Extra llama.cpp build locations (binaries or directories), besides PATH. */
  llamacppPaths: string[]
  /** Interval of the small membership heartbeat. */
  heartbeatMs: number
  /** Silence after which an alive peer becomes suspect. */
  suspectAfterMs: number
  /** Silence after which a peer is declared dead. */
  deadAfterMs: number
  /** Period of the full resource snapshot when nothing changed. */
  snapshotIntervalMs: number
  /** Period of the RTT probe (libp2p ping) to each connected peer. */
  pingIntervalMs: number
  /** How often CPU/memory/disk/models are sampled. */
  sampleIntervalMs: number
  /** How often GPUs are queried (nvidia-smi / rocm-smi spawn a process). */
  gpuIntervalMs: number
  /** Delay before redialing a lost bootstrap or known peer, doubled per failure up to `redialMaxMs`. */
  redialMinMs: number
  redialMaxMs: number
  logLevel: 'trace' | 'debug' | 'info' | 'warn' | 'error' | 'silent'
}

export type OptionType = 'string' | 'int' | 'bool' | 'list'

export interface OptionSpec {
  key: keyof NodeOptions
  type: OptionType
  /** Dotted path in the YAML file. */
  yaml: string
  env: string
  flag: string
  /** Flag help text. */
  help: string
}

export const OPTION_SPECS: readonly OptionSpec[] = [
  { key: 'dataDir', type: 'string', yaml: 'node.data_dir', env: 'SHEPHERD_DATA_DIR', flag: 'data-dir', help: 'data directory (LevelDB store)' },
  { key: 'name', type: 'string', yaml: 'node.name', env: 'SHEPHERD_NAME', flag: 'name', help: 'node name shown to peers' },
  { key: 'groups', type: 'list', yaml: 'node.groups', env: 'SHEPHERD_GROUPS', flag: 'group', help: 'swarm group to join (repeatable)' },
  { key: 'apiHost', type: 'string', yaml: 'api.host', env: 'SHEPHERD_API_HOST', flag: 'api-host', help: 'HTTP API bind address' },
  { key: 'apiPort', type: 'int', yaml: 'api.port', env: 'SHEPHERD_API_PORT', flag: 'api-port', help: 'HTTP API port' },
  { key: 'listen', type: 'list', yaml: 'p2p.listen', env: 'SHEPHERD_LISTEN', flag: 'listen', help: 'libp2p listen multiaddr (repeatable)' },
  { key: 'bootstrap', type: 'list', yaml: 'p2p.bootstrap', env: 'SHEPHERD_BOOTSTRAP', flag: 'bootstrap', help: 'peer multiaddr to dial (repeatable)' },
  { key: 'mdns', type: 'bool', yaml: 'p2p.mdns', env: 'SHEPHERD_MDNS', flag: 'mdns', help: 'LAN discovery with mDNS (--no-mdns to disable)' },
  { key: 'mdnsIntervalMs', type: 'int', yaml: 'p2p.mdns_interval_ms', env: 'SHEPHERD_MDNS_INTERVAL_MS', flag: 'mdns-interval-ms', help: 'mDNS query interval' },
  { key: 'modelsDirs', type: 'list', yaml: 'models.paths', env: 'SHEPHERD_MODELS_DIRS', flag: 'models-dir', help: 'directory of GGUF models (repeatable)' },
  { key: 'llamacppPaths', type: 'list', yaml: 'llamacpp.paths', env: 'SHEPHERD_LLAMACPP_PATHS', flag: 'llamacpp', help: 'llama.cpp build location (repeatable)' },
  { key: 'heartbeatMs', type: 'int', yaml: 'membership.heartbeat_ms', env: 'SHEPHERD_HEARTBEAT_MS', flag: 'heartbeat-ms', help: 'heartbeat interval' },
  { key: 'suspectAfterMs', type: 'int', yaml: 'membership.suspect_after_ms', env: 'SHEPHERD_SUSPECT_AFTER_MS', flag: 'suspect-after-ms', help: 'silence before a peer is suspect' },
  { key: 'deadAfterMs', type: 'int', yaml: 'membership.dead_after_ms', env: 'SHEPHERD_DEAD_AFTER_MS', flag: 'dead-after-ms', help: 'silence before a peer is dead' },
  { key: 'snapshotIntervalMs', type: 'int', yaml: 'membership.snapshot_interval_ms', env: 'SHEPHERD_SNAPSHOT_INTERVAL_MS', flag: 'snapshot-interval-ms', help: 'full snapshot period' },
  { key: 'pingIntervalMs', type: 'int', yaml: 'membership.ping_interval_ms', env: 'SHEPHERD_PING_INTERVAL_MS', flag: 'ping-interval-ms', help: 'RTT probe period' },
  { key: 'redialMinMs', type: 'int', yaml: 'membership.redial_min_ms', env: 'SHEPHERD_REDIAL_MIN_MS', flag: 'redial-min-ms', help: 'first redial delay' },
  { key: 'redialMaxMs', type: 'int', yaml: 'membership.redial_max_ms', env: 'SHEPHERD_REDIAL_MAX_MS', flag: 'redial-max-ms', help: 'longest redial delay' },
  { key: 'sampleIntervalMs', type: 'int', yaml: 'resources.sample_interval_ms', env: 'SHEPHERD_SAMPLE_INTERVAL_MS', flag: 'sample-interval-ms', help: 'resource sampling period' },
  { key: 'gpuIntervalMs', type: 'int', yaml: 'resources.gpu_interval_ms', env: 'SHEPHERD_GPU_INTERVAL_MS', flag: 'gpu-interval-ms', help: 'GPU query period' },
  { key: 'logLevel', type: 'string', yaml: 'log_level', env: 'SHEPHERD_LOG', flag: 'log-level', help: 'trace|debug|info|warn|error|silent' }
]

/** Defaults. Timings give: kill -9 seen dead in < 1 s (connection refused), silent loss in <= 4.25 s. */
export function defaultOptions (): NodeOptions {
  return {
    dataDir: path.join(os.homedir(), '.shepherd-mesh'),
    name: os.hostname(),
    apiHost: '127.0.0.1',
    apiPort: 9190,
    listen: ['/ip4/0.0.0.0/tcp/9191'],
    bootstrap: [],
    mdns: true,
    mdnsIntervalMs: 1000,
    groups: ['default'],
    modelsDirs: [],
    llamacppPaths: [],
    heartbeatMs: 1000,
    suspectAfterMs: 2000,
    deadAfterMs: 4000,
    snapshotIntervalMs: 15000,
    pingIntervalMs: 5000,
    sampleIntervalMs: 5000,
    gpuIntervalMs: 10000,
    redialMinMs: 500,
    redialMaxMs: 10000,
    logLevel: 'warn'
  }
}
