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
  /** Longest mDNS query interval once connected: queries back off (doubling) from `mdnsIntervalMs` to it. */
  mdnsMaxIntervalMs: number
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
  /** Period of the check that re-publishes the snapshot if a change was not published (idle when nothing changed). */
  snapshotIntervalMs: number
  /** A peer dead or gone this long is forgotten (record, snapshot, gossip-only redial target). */
  deadPeerTtlMs: number
  /**
   * Failure detection: `swim` (probes one peer per interval, per-node cost constant in the mesh's
   * size; heartbeats only on change) or `flood` (every node's heartbeat to every node each `heartbeatMs`).
   */
  membership: 'swim' | 'flood'
  /** SWIM: one probe per interval (memberlist LAN: 1 s; 500 ms keeps silent loss ≤ 5 s at 16 nodes). */
  swimProbeIntervalMs: number
  /** SWIM: wait for a direct ack before asking others to probe. */
  swimProbeTimeoutMs: number
  /** SWIM: suspicion minimum = mult × max(1, log10 n) × probe interval. */
  swimSuspicionMult: number
  /** Open connections a node keeps at most (inference, blob and command streams dial on demand). */
  maxConnections: number
  /** Period of the RTT probe (libp2p ping) to each connected peer. */
  pingIntervalMs: number
  /** How often CPU/memory/disk/models are sampled. */
  sampleIntervalMs: number
  /** How often GPUs are queried (nvidia-smi / rocm-smi spawn a process). */
  gpuIntervalMs: number
  /**
   * A snapshot for moved load figures only (CPU, memory, disk, VRAM use) goes out at most this
   * often (memberlist's LAN push-pull period); changed models, builds or GPUs go out at once.
   */
  metricsRepublishMs: number
  /** Delay before redialing a lost bootstrap or known peer, doubled per failure up to `redialMaxMs`. */
  redialMinMs: number
  redialMaxMs: number
  logLevel: 'trace' | 'debug' | 'info' | 'warn' | 'error' | 'silent'
  /** Backend for local GGUF files: in-process node-llama-cpp, a managed llama-server, `auto` (llama-server when a build is found, else embedded), or none. */
  engine: 'auto' | 'embedded' | 'llama-server' | 'none'
  /** GPU use of the local engine. */
  gpu: 'auto' | 'cuda' | 'vulkan' | 'metal' | 'off'
  /** Inference threads; 0 picks a value that fits the machine. */
  threads: number
  /** Context size per loaded model; 0 lets the engine choose (capped by the model). */
  contextSize: number
  /** Requests decoded together in one batch per loaded model (slots); 0: the engine's default. */
  parallel: number
  /** Idle time after which a loaded model is unloaded. */
  keepAliveMs: number
  /** Memory loaded models may hold in all, MiB; 0: total memory less the reserve. */
  maxLoadedMb: number
  /** Memory that must stay available after a model loads, MiB; 0: 10 % of total memory, at most 1 GiB. */
  memoryReserveMb: number
  /** llama.cpp `rpc-server` binary for split replicas (issue 16); '' looks beside the llama-server build. */
  rpcServerPath: string
  /** OpenAI-compatible servers this node fronts (Ollama, vLLM, LM Studio, llama-server...). */
  upstreams: string[]
  /** Requests this node runs at once. */
  maxConcurrency: number
  /** Requests that may wait for a turn before 429. */
  maxQueue: number
  /** Serve peers' requests too; false keeps this node's models for its own clients. */
  allowRemote: boolean
  /** How a replica is chosen among peers. */
  routing: 'least-loaded' | 'round-robin' | 'random' | 'weighted' | 'lowest-latency'
  /** Send a conversation's next turn to the replica that served its earlier turns (its KV cache holds the prefix). */
  prefixRouting: boolean
  /** Requests more than the least-loaded replica that the prefix's replica may carry before the turn goes elsewhere. */
  prefixLoadSlack: number
  /** Whole-request limit for inference through the API. */
  requestTimeoutMs: number
  /** An idle relay stream to a peer is closed after this long (the host closes its side after twice as long). */
  relayStreamIdleMs: number
  /** Consecutive failures that take a host out of rotation, and for how long. */
  breakerFailures: number
  breakerCooldownMs: number
  /** Labels of this node (`key=value`), for placement constraints. */
  labels: string[]
  /** Member set stability required before a leader claim. */
  electionSettleMs: number
  /** Extra wait per rank for candidates other than the best one. */
  electionBackoffMs: number
  /** Wait after start before this node may claim leadership. */
  electionGraceMs: number
  /** How often the durable logs are pruned (and once at start). */
  pruneIntervalMs: number
  /** A finished command's record and result are kept at least this long (its id then can no longer be replayed: it expired). */
  commandResultsRetentionMs: number
  /** Audit entries (the node's and the command audit) older than this are deleted... */
  auditRetentionMs: number
  /** ...and beyond this many per log, the oldest. */
  auditMaxEntries: number
  /** Swarm key file: only nodes with the same key form a mesh (private swarm). */
  swarmKeyFile: string
  /** Processes (llama-server) that `run_llamacpp` commands may have running at once; beyond it a command is refused `process_limit`. */
  maxCommandProcesses: number
  /**
   * Open mesh (labs): every peer that connects is a member, with no admission step. Authority,
   * model fingerprints and command bounds still hold.
   */
  open: boolean
  /**
   * Invite token (`shepherd-mesh invite`) to join a mesh at start, unattended. Prefer the env var:
   * a flag shows in `ps`. Never logged.
   */
  join: string
  /** Peer ids that may connect (empty: any, unless denied). */
  trustAllow: string[]
  /** Peer ids that may never connect. */
  trustDeny: string[]
  /** Requests per minute per API key (or per client address without keys); 0 turns it off. */
  rateLimitPerMin: number
  /** Responses API: stored responses kept on this node (`store`, `previous_response_id`); 0 stores none. */
  responsesStoreMax: number
  /** Responses API: memory for stored responses, MiB; the least recently used go first. */
  responsesStoreMb: number
  /** Origins allowed to call the API from a browser (CORS); none by default. */
  corsOrigins: string[]
  /** API keys accepted as `Authorization: Bearer KEY`; none means no key is required. */
  apiKeys: string[]
  /** File of API keys, one per line (`#` comments): keeps them out of argv (`ps`) and the environment. */
  apiKeyFile: string
  /**
   * Extra names the API answers to in the `Host` header, besides the bind address, loopback
   * names, IP literals and this machine's hostname (`*.example.lan` matches subdomains, `*` turns
   * the check off). Any other name is refused: that is what stops DNS rebinding.
   */
  allowedHosts: string[]
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
  { key: 'mdnsIntervalMs', type: 'int', yaml: 'p2p.mdns_interval_ms', env: 'SHEPHERD_MDNS_INTERVAL_MS', flag: 'mdns-interval-ms', help: 'mDNS query interval while alone' },
  { key: 'mdnsMaxIntervalMs', type: 'int', yaml: 'p2p.mdns_max_interval_ms', env: 'SHEPHERD_MDNS_MAX_INTERVAL_MS', flag: 'mdns-max-interval-ms', help: 'longest mDNS query interval once connected (doubling back-off)' },
  { key: 'modelsDirs', type: 'list', yaml: 'models.paths', env: 'SHEPHERD_MODELS_DIRS', flag: 'models-dir', help: 'directory of GGUF models (repeatable)' },
  { key: 'llamacppPaths', type: 'list', yaml: 'llamacpp.paths', env: 'SHEPHERD_LLAMACPP_PATHS', flag: 'llamacpp', help: 'llama.cpp build location (repeatable)' },
  { key: 'heartbeatMs', type: 'int', yaml: 'membership.heartbeat_ms', env: 'SHEPHERD_HEARTBEAT_MS', flag: 'heartbeat-ms', help: 'heartbeat interval' },
  { key: 'suspectAfterMs', type: 'int', yaml: 'membership.suspect_after_ms', env: 'SHEPHERD_SUSPECT_AFTER_MS', flag: 'suspect-after-ms', help: 'silence before a peer is suspect' },
  { key: 'deadAfterMs', type: 'int', yaml: 'membership.dead_after_ms', env: 'SHEPHERD_DEAD_AFTER_MS', flag: 'dead-after-ms', help: 'silence before a peer is dead' },
  { key: 'snapshotIntervalMs', type: 'int', yaml: 'membership.snapshot_interval_ms', env: 'SHEPHERD_SNAPSHOT_INTERVAL_MS', flag: 'snapshot-interval-ms', help: 'period of the check for an unpublished snapshot change' },
  { key: 'deadPeerTtlMs', type: 'int', yaml: 'membership.dead_peer_ttl_ms', env: 'SHEPHERD_DEAD_PEER_TTL_MS', flag: 'dead-peer-ttl-ms', help: 'time a dead or departed peer stays listed before it is forgotten' },
  { key: 'membership', type: 'string', yaml: 'membership.protocol', env: 'SHEPHERD_MEMBERSHIP', flag: 'membership', help: 'swim|flood: failure detection by SWIM probes (constant per-node cost) or flooded heartbeats' },
  { key: 'swimProbeIntervalMs', type: 'int', yaml: 'membership.swim_probe_interval_ms', env: 'SHEPHERD_SWIM_PROBE_INTERVAL_MS', flag: 'swim-probe-interval-ms', help: 'SWIM probe period (one peer per period)' },
  { key: 'swimProbeTimeoutMs', type: 'int', yaml: 'membership.swim_probe_timeout_ms', env: 'SHEPHERD_SWIM_PROBE_TIMEOUT_MS', flag: 'swim-probe-timeout-ms', help: 'SWIM direct probe timeout before indirect probes' },
  { key: 'swimSuspicionMult', type: 'int', yaml: 'membership.swim_suspicion_mult', env: 'SHEPHERD_SWIM_SUSPICION_MULT', flag: 'swim-suspicion-mult', help: 'SWIM suspicion minimum, in probe periods × log10(n)' },
  { key: 'maxConnections', type: 'int', yaml: 'p2p.max_connections', env: 'SHEPHERD_MAX_CONNECTIONS', flag: 'max-connections', help: 'open connections kept at most (no full mesh beyond it)' },
  { key: 'pingIntervalMs', type: 'int', yaml: 'membership.ping_interval_ms', env: 'SHEPHERD_PING_INTERVAL_MS', flag: 'ping-interval-ms', help: 'RTT probe period' },
  { key: 'redialMinMs', type: 'int', yaml: 'membership.redial_min_ms', env: 'SHEPHERD_REDIAL_MIN_MS', flag: 'redial-min-ms', help: 'first redial delay' },
  { key: 'redialMaxMs', type: 'int', yaml: 'membership.redial_max_ms', env: 'SHEPHERD_REDIAL_MAX_MS', flag: 'redial-max-ms', help: 'longest redial delay' },
  { key: 'sampleIntervalMs', type: 'int', yaml: 'resources.sample_interval_ms', env: 'SHEPHERD_SAMPLE_INTERVAL_MS', flag: 'sample-interval-ms', help: 'resource sampling period' },
  { key: 'gpuIntervalMs', type: 'int', yaml: 'resources.gpu_interval_ms', env: 'SHEPHERD_GPU_INTERVAL_MS', flag: 'gpu-interval-ms', help: 'GPU query period' },
  { key: 'metricsRepublishMs', type: 'int', yaml: 'resources.metrics_republish_ms', env: 'SHEPHERD_METRICS_REPUBLISH_MS', flag: 'metrics-republish-ms', help: 'least time between snapshots for moved CPU/memory/disk figures only' },
  { key: 'logLevel', type: 'string', yaml: 'log_level', env: 'SHEPHERD_LOG', flag: 'log-level', help: 'trace|debug|info|warn|error|silent' },
  { key: 'engine', type: 'string', yaml: 'engine.kind', env: 'SHEPHERD_ENGINE', flag: 'engine', help: 'auto|embedded|llama-server|none (auto: llama-server when a build is found, else embedded)' },
  { key: 'parallel', type: 'int', yaml: 'engine.parallel', env: 'SHEPHERD_PARALLEL', flag: 'parallel', help: 'requests decoded together per loaded model (0 = engine default, 8)' },
  { key: 'gpu', type: 'string', yaml: 'engine.gpu', env: 'SHEPHERD_GPU', flag: 'gpu', help: 'auto|cuda|vulkan|metal|off' },
  { key: 'threads', type: 'int', yaml: 'engine.threads', env: 'SHEPHERD_THREADS', flag: 'threads', help: 'inference threads (0 = fit the machine)' },
  { key: 'contextSize', type: 'int', yaml: 'engine.context_size', env: 'SHEPHERD_CONTEXT_SIZE', flag: 'context-size', help: 'context per model (0 = engine default)' },
  { key: 'keepAliveMs', type: 'int', yaml: 'engine.keep_alive_ms', env: 'SHEPHERD_KEEP_ALIVE_MS', flag: 'keep-alive-ms', help: 'idle time before a model is unloaded' },
  { key: 'maxLoadedMb', type: 'int', yaml: 'engine.max_loaded_mb', env: 'SHEPHERD_MAX_LOADED_MB', flag: 'max-loaded-mb', help: 'memory for loaded models, MiB (0 = total less reserve); least recently used idle model unloaded first' },
  { key: 'memoryReserveMb', type: 'int', yaml: 'engine.memory_reserve_mb', env: 'SHEPHERD_MEMORY_RESERVE_MB', flag: 'memory-reserve-mb', help: 'memory kept available after a load, MiB (0 = 10% of RAM, max 1 GiB)' },
  { key: 'rpcServerPath', type: 'string', yaml: 'engine.rpc_server', env: 'SHEPHERD_RPC_SERVER', flag: 'rpc-server', help: 'rpc-server binary for split replicas (default: beside llama-server)' },
  { key: 'upstreams', type: 'list', yaml: 'engine.upstreams', env: 'SHEPHERD_UPSTREAMS', flag: 'upstream', help: 'OpenAI-compatible base URL to front (repeatable)' },
  { key: 'maxConcurrency', type: 'int', yaml: 'serving.max_concurrency', env: 'SHEPHERD_MAX_CONCURRENCY', flag: 'max-concurrency', help: 'requests run at once' },
  { key: 'maxQueue', type: 'int', yaml: 'serving.max_queue', env: 'SHEPHERD_MAX_QUEUE', flag: 'max-queue', help: 'requests queued before 429' },
  { key: 'allowRemote', type: 'bool', yaml: 'serving.allow_remote', env: 'SHEPHERD_ALLOW_REMOTE', flag: 'allow-remote', help: 'serve peers\' requests (--no-allow-remote to refuse)' },
  { key: 'routing', type: 'string', yaml: 'serving.routing', env: 'SHEPHERD_ROUTING', flag: 'routing', help: 'least-loaded|round-robin|random|weighted|lowest-latency' },
  { key: 'prefixRouting', type: 'bool', yaml: 'serving.prefix_routing', env: 'SHEPHERD_PREFIX_ROUTING', flag: 'prefix-routing', help: 'route a conversation\'s turns to the replica that has its prefix cached (--no-prefix-routing: strategy only)' },
  { key: 'prefixLoadSlack', type: 'int', yaml: 'serving.prefix_load_slack', env: 'SHEPHERD_PREFIX_LOAD_SLACK', flag: 'prefix-load-slack', help: 'extra requests the prefix\'s replica may carry over the least-loaded one' },
  { key: 'requestTimeoutMs', type: 'int', yaml: 'serving.request_timeout_ms', env: 'SHEPHERD_REQUEST_TIMEOUT_MS', flag: 'request-timeout-ms', help: 'inference request limit' },
  { key: 'relayStreamIdleMs', type: 'int', yaml: 'serving.relay_stream_idle_ms', env: 'SHEPHERD_RELAY_STREAM_IDLE_MS', flag: 'relay-stream-idle-ms', help: 'idle time before a pooled relay stream is closed' },
  { key: 'breakerFailures', type: 'int', yaml: 'serving.breaker_failures', env: 'SHEPHERD_BREAKER_FAILURES', flag: 'breaker-failures', help: 'failures before a host is taken out' },
  { key: 'breakerCooldownMs', type: 'int', yaml: 'serving.breaker_cooldown_ms', env: 'SHEPHERD_BREAKER_COOLDOWN_MS', flag: 'breaker-cooldown-ms', help: 'time a failing host stays out' },
  { key: 'labels', type: 'list', yaml: 'node.labels', env: 'SHEPHERD_LABELS', flag: 'label', help: 'node label key=value (repeatable)' },
  { key: 'electionSettleMs', type: 'int', yaml: 'groups.election_settle_ms', env: 'SHEPHERD_ELECTION_SETTLE_MS', flag: 'election-settle-ms', help: 'stable membership before a leader claim' },
  { key: 'electionBackoffMs', type: 'int', yaml: 'groups.election_backoff_ms', env: 'SHEPHERD_ELECTION_BACKOFF_MS', flag: 'election-backoff-ms', help: 'extra wait per candidate rank' },
  { key: 'electionGraceMs', type: 'int', yaml: 'groups.election_grace_ms', env: 'SHEPHERD_ELECTION_GRACE_MS', flag: 'election-grace-ms', help: 'no claim this soon after start' },
  { key: 'pruneIntervalMs', type: 'int', yaml: 'retention.prune_interval_ms', env: 'SHEPHERD_PRUNE_INTERVAL_MS', flag: 'prune-interval-ms', help: 'how often old records are pruned' },
  { key: 'commandResultsRetentionMs', type: 'int', yaml: 'retention.command_results_ms', env: 'SHEPHERD_COMMAND_RESULTS_RETENTION_MS', flag: 'command-results-retention-ms', help: 'how long finished command results are kept' },
  { key: 'auditRetentionMs', type: 'int', yaml: 'retention.audit_ms', env: 'SHEPHERD_AUDIT_RETENTION_MS', flag: 'audit-retention-ms', help: 'how long audit entries are kept' },
  { key: 'auditMaxEntries', type: 'int', yaml: 'retention.audit_max_entries', env: 'SHEPHERD_AUDIT_MAX_ENTRIES', flag: 'audit-max-entries', help: 'most audit entries kept per log' },
  { key: 'maxCommandProcesses', type: 'int', yaml: 'commands.max_processes', env: 'SHEPHERD_MAX_COMMAND_PROCESSES', flag: 'max-command-processes', help: 'processes run_llamacpp commands may run at once' },
  { key: 'swarmKeyFile', type: 'string', yaml: 'p2p.swarm_key', env: 'SHEPHERD_SWARM_KEY', flag: 'swarm-key', help: 'swarm key file (private mesh; see keygen)' },
  { key: 'join', type: 'string', yaml: 'p2p.join', env: 'SHEPHERD_JOIN', flag: 'join', help: 'invite token to join a mesh at start (prefer SHEPHERD_JOIN: flags show in ps)' },
  { key: 'open', type: 'bool', yaml: 'p2p.open', env: 'SHEPHERD_OPEN', flag: 'open', help: 'open mesh: every peer that connects is a member (labs; no admission)' },
  { key: 'trustAllow', type: 'list', yaml: 'trust.allow', env: 'SHEPHERD_TRUST_ALLOW', flag: 'allow-peer', help: 'peer id allowed to connect (repeatable)' },
  { key: 'trustDeny', type: 'list', yaml: 'trust.deny', env: 'SHEPHERD_TRUST_DENY', flag: 'deny-peer', help: 'peer id refused (repeatable)' },
  { key: 'rateLimitPerMin', type: 'int', yaml: 'api.rate_limit_per_min', env: 'SHEPHERD_RATE_LIMIT_PER_MIN', flag: 'rate-limit', help: 'requests per minute per key (0 = off)' },
  { key: 'responsesStoreMax', type: 'int', yaml: 'api.responses_store_max', env: 'SHEPHERD_RESPONSES_STORE_MAX', flag: 'responses-store-max', help: 'stored Responses API responses kept on this node (0 = none)' },
  { key: 'responsesStoreMb', type: 'int', yaml: 'api.responses_store_mb', env: 'SHEPHERD_RESPONSES_STORE_MB', flag: 'responses-store-mb', help: 'memory for stored responses, MiB (least recently used first out)' },
  { key: 'corsOrigins', type: 'list', yaml: 'api.cors_origins', env: 'SHEPHERD_CORS_ORIGINS', flag: 'cors-origin', help: 'browser origin allowed (repeatable)' },
  { key: 'apiKeys', type: 'list', yaml: 'api.keys', env: 'SHEPHERD_API_KEYS', flag: 'api-key', help: 'API key clients must send (repeatable; flags show in ps: prefer --api-key-file or SHEPHERD_API_KEYS)' },
  { key: 'apiKeyFile', type: 'string', yaml: 'api.key_file', env: 'SHEPHERD_API_KEY_FILE', flag: 'api-key-file', help: 'file of API keys, one per line' },
  { key: 'allowedHosts', type: 'list', yaml: 'api.allowed_hosts', env: 'SHEPHERD_ALLOWED_HOSTS', flag: 'allowed-host', help: 'extra Host name the API answers to (repeatable; *.suffix ok)' }
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
    mdnsMaxIntervalMs: 30_000,
    groups: ['default'],
    modelsDirs: [],
    llamacppPaths: [],
    heartbeatMs: 1000,
    suspectAfterMs: 2000,
    deadAfterMs: 4000,
    snapshotIntervalMs: 15000,
    deadPeerTtlMs: 300_000,
    // SWIM: per-node cost constant in the mesh size. A healed 1/3 partition agrees on one leader
    // in 0.7-1.8 s (8 of 8 runs of test/lan/groups.test.ts) since frames and votes go on a new
    // connection when the old ones sit in TCP's retransmission backoff. `flood` stays available.
    membership: 'swim',
    swimProbeIntervalMs: 500,
    swimProbeTimeoutMs: 250,
    swimSuspicionMult: 4,
    maxConnections: 64,
    pingIntervalMs: 5000,
    sampleIntervalMs: 5000,
    gpuIntervalMs: 10000,
    metricsRepublishMs: 30000,
    redialMinMs: 500,
    redialMaxMs: 2000,
    logLevel: 'warn',
    engine: 'auto',
    parallel: 0,
    gpu: 'auto',
    threads: 0,
    contextSize: 0,
    keepAliveMs: 5 * 60_000,
    maxLoadedMb: 0,
    memoryReserveMb: 0,
    rpcServerPath: '',
    upstreams: [],
    maxConcurrency: 16,
    maxQueue: 256,
    allowRemote: true,
    routing: 'least-loaded',
    prefixRouting: true,
    prefixLoadSlack: 4,
    requestTimeoutMs: 600_000,
    relayStreamIdleMs: 30_000,
    breakerFailures: 3,
    breakerCooldownMs: 10_000,
    labels: [],
    swarmKeyFile: '',
    maxCommandProcesses: 2,
    open: false,
    join: '',
    trustAllow: [],
    trustDeny: [],
    rateLimitPerMin: 0,
    // An agent loop keeps a few responses alive at once; 1,000 covers many loops, and the byte bound caps the memory.
    responsesStoreMax: 1000,
    responsesStoreMb: 64,
    corsOrigins: [],
    electionSettleMs: 500,
    electionBackoffMs: 300,
    electionGraceMs: 1500,
    pruneIntervalMs: 3_600_000,
    commandResultsRetentionMs: 24 * 3_600_000,
    auditRetentionMs: 30 * 24 * 3_600_000,
    auditMaxEntries: 100_000,
    apiKeys: [],
    apiKeyFile: '',
    allowedHosts: []
  }
}
