import { EventEmitter } from 'node:events'
import { INFERENCE_PROTOCOL, Mesh, TrustPolicy, peerIdOf, readSwarmKey, type DuplicateIdentity, type PeerRecord, type PeerStatus, type MeshStats, type MemberExchangeStats, type RedialStats, type SwimDriverStats, type SwimHealth, type TrustState } from '../p2p/index.js'
import type { NodeOptions } from '../config/index.js'
import { createLogger } from '../logger.js'
import { VERSION } from '../version.js'
import { ResourceMonitor, scaledMetricsGapMs, type NodeResources } from './resources/index.js'
import { isNodeSnapshot, summarizeModel, type ModelSummary, type NodeSnapshot } from './snapshot.js'
import { Store } from './store.js'
import { loadOrCreateIdentity } from './identity.js'
import { EngineHub } from './engine-hub.js'
import { RemoteInference, relayHandler } from './relay.js'
import { cachedLlamaServerDirs, createEngines } from './engine-setup.js'
import type { ModelFile } from './resources/index.js'
import { RPC_TUNNEL_REFUSED, ShepherdError } from '../errors.js'
import { GroupManager } from './groups/index.js'
import { DeploymentStore } from './deployments.js'
import { ControlPlane } from './control-plane.js'
import { SplitNode } from './split/split-node.js'
import { Membership, type MemberView } from './membership.js'
import { SnapshotMerger } from './snapshot-merge.js'
import { TransferTracker, type TransferRow } from './transfers.js'
import path from 'node:path'
import fs from 'node:fs/promises'

/** One peer (or this node) as the API shows it. */
export interface PeerView {
  id: string
  name: string
  /** `pending`: said hello, is no member (nothing taken from it); see `otherPeers`. */
  status: PeerStatus | 'pending'
  /** ISO 8601; null for a peer never heard from. */
  lastSeen: string | null
  rttMs: number | null
  addresses: string[]
  groups: string[]
  connected: boolean
  version: string | null
  resources: NodeResources | null
  models: ModelSummary[]
  /** When the snapshot shown was received (ISO 8601). */
  snapshotAt: string | null
  /** Requests running and waiting on the peer (its last heartbeat). */
  load: { active: number, queued: number } | null
  labels: Record<string, string>
  /** `member`, `pending` (awaits admit), `denied` (revoked or denied), `none`. */
  trust: TrustState
  /** Whether the node serves peers' requests (false: its own clients only). */
  servesPeers: boolean
}

export type PeerEventType = 'peer:joined' | 'peer:alive' | 'peer:suspect' | 'peer:dead' | 'peer:left' | 'peer:snapshot' | 'group:leader' | 'peer:pending' | 'peer:member'

export interface PeerEvent {
  type: PeerEventType
  id: string
  name: string
  status: PeerStatus | 'pending' | 'member'
  at: string
  /** For `group:leader`: the group and its term. */
  group?: string
  term?: number
}

export interface NodeMetrics {
  gossip: MeshStats
  /** SWIM failure detection's frame counters; absent with `--membership flood`. */
  swim?: SwimDriverStats
  /** SWIM's local health: Lifeguard awareness and the smoothed round trip of its probes' acks. */
  swimHealth?: SwimHealth
  /** Open libp2p connections (bounded by `maxConnections`). */
  connections: number
  /** Redial targets (those heard of only through gossip or member lists counted apart) and dials made. */
  redial: RedialStats
  /** Member-list exchanges (`/shepherd/members/1.0.0`) run, failed, answered and refused. */
  members: MemberExchangeStats
  /** The inference relay: requests sent to peers (on reused or new streams), served for peers, idle pooled streams. */
  relay: { requested: number, reused: number, staleRetries: number, served: number, failed: number, violations: number, idleStreams: number }
  peersByStatus: Record<PeerStatus, number>
  snapshotVersion: number
  uptimeSec: number
}

export interface MeshNodeEvents {
  peer: [PeerEvent]
  /** A model transfer/load row of this node or a member changed (SSE `deployment:progress`). */
  progress: [ProgressEvent]
}

/** One replica's progress as the API relays it: a transfer row and the node it runs on. */
export interface ProgressEvent extends TransferRow {
  nodeId: string
  name: string
}

/** Delay from start to the first prune of old records. */
const PRUNE_FIRST_DELAY_MS = 10_000

/**
 * A shepherd-mesh node: its identity and store, its resources, and its view of the mesh.
 * The API and the scheduler talk to this class only.
 */
export class MeshNode extends EventEmitter<MeshNodeEvents> {
  readonly mesh: Mesh<NodeSnapshot>
  /** The engines of this node; their models are what it serves. */
  readonly hub: EngineHub
  /** Swarm groups this node is in, and their leaders. */
  readonly groups: GroupManager
  /** Desired state: which models should run where (replicated). */
  readonly deployments: DeploymentStore
  /** Serializes the merges of peers' gossiped deployments. */
  readonly merger: SnapshotMerger
  readonly labels: Record<string, string>
  /** Signed commands: the executor, sending, the command audit log. */
  control!: ControlPlane
  /** Split replicas (issue 16): this node as a head or a worker. */
  split!: SplitNode
  /** Allow and deny lists (config plus changes made through the API, persisted). */
  trust!: TrustPolicy
  /** Who is a member: the mode, the signed ledger, pending peers, admission and invites. */
  membership!: Membership
  /** Whether the mesh is private (a swarm key is set). */
  private = false
  private modelFiles: ModelFile[] = []
  /** Grows whenever the gossiped snapshot content changes. */
  snapshotVersion = 1
  /** This node's model pulls and loads in progress (gossiped in the snapshot as `transfers`). */
  readonly transfers = new TransferTracker()
  /** When a peer's transfer row was last relayed as an event (`peer|model` → its `at`). */
  private readonly relayedRows = new Map<string, number>()
  private transferSnapshotTimer?: NodeJS.Timeout
  private apiPort: number | null = null
  private readonly startedAt = Date.now()
  private pruneTimer?: NodeJS.Timeout
  private pruneFirst?: NodeJS.Timeout
  private pruning?: Promise<unknown>
  private readonly log = createLogger('node')
  /** Per-request lines of the relay (request ids), on both sides of a hop. */
  private readonly relayLog = createLogger('node:relay')
  private remoteInference?: RemoteInference

  /** Typed calls to peers' engines over the inference protocol (the router's remote call). */
  get remote (): RemoteInference {
    this.remoteInference ??= new RemoteInference(this.mesh.inference, this.relayLog)
    return this.remoteInference
  }

  private constructor (
    readonly options: NodeOptions,
    readonly store: Store,
    readonly monitor: ResourceMonitor,
    mesh: Mesh<NodeSnapshot>,
    hub: EngineHub,
    groups: GroupManager,
    deployments: DeploymentStore
  ) {
    super()
    this.deployments = deployments
    this.merger = new SnapshotMerger(deployments)
    this.labels = Object.fromEntries(options.labels.map(l => [l.slice(0, l.indexOf('=')), l.slice(l.indexOf('=') + 1)]))
    deployments.on('change', () => { this.snapshotChanged() })
    // The snapshot lists duplicate ids: a new version tells their owners.
    mesh.on('duplicates:changed', () => { this.snapshotChanged() })
    mesh.on('peer:snapshot', rec => {
      // A member that sees this node's own id run twice says so: only it can (see duplicate-identity.ts).
      if (rec.snapshot?.duplicateIds?.includes(mesh.peerId) === true) mesh.reportDuplicateOfSelf(rec.id)
      this.relayTransferRows(rec.id, rec.name, rec.snapshot?.transfers ?? [])
      const incoming = rec.snapshot?.deployments
      if (incoming != null && incoming.length > 0) {
        // One merge at a time, newest set per peer, unchanged sets skipped (see snapshot-merge.ts).
        this.merger.offer(rec.id, incoming)
      }
    })
    this.mesh = mesh
    this.hub = hub
    this.groups = groups
    hub.on('change', () => { this.snapshotChanged() })
    this.transfers.on('change', row => {
      this.emit('progress', { ...row, nodeId: this.mesh.peerId, name: this.name })
      // Progress is gossiped at most once a second; a phase change goes out at once.
      if (row.phase !== 'transferring') { clearTimeout(this.transferSnapshotTimer); this.transferSnapshotTimer = undefined; this.snapshotChanged(); return }
      this.transferSnapshotTimer ??= setTimeout(() => { this.transferSnapshotTimer = undefined; this.snapshotChanged() }, 1000)
      this.transferSnapshotTimer.unref()
    })
    groups.on('leader', (group, leader, term) => {
      const name = leader == null ? '' : leader === this.mesh.peerId ? this.name : this.mesh.table.get(leader)?.name ?? leader
      this.emit('peer', { type: 'group:leader', id: leader ?? '', name, status: 'alive', at: new Date().toISOString(), group, term })
    })
    for (const type of ['peer:joined', 'peer:alive', 'peer:suspect', 'peer:dead', 'peer:left', 'peer:snapshot'] as const) {
      mesh.on(type, rec => {
        this.emit('peer', { type, id: rec.id, name: rec.name, status: rec.status, at: new Date().toISOString() })
      })
    }
    mesh.on('peer:alive', rec => { this.remember(rec) })
    mesh.on('peer:addresses', rec => { this.remember(rec) })
    monitor.on('change', change => {
      this.modelFiles = change.snapshot.models
      this.snapshotChanged()
    })
  }

  /** Opens the store, loads or creates the identity and prepares (but does not start) the node. */
  static async create (options: NodeOptions): Promise<MeshNode> {
    const store = await Store.open(options.dataDir)
    try {
      const { key } = await loadOrCreateIdentity(store)
      const knownPeers = (await store.knownPeers()).map(p => ({ id: p.id, addresses: p.addresses }))
      // Models pulled from peers land in the first models dir (or <data-dir>/models), always scanned.
      const pullDir = options.modelsDirs[0] ?? path.join(options.dataDir, 'models')
      await fs.mkdir(pullDir, { recursive: true }).catch(() => {})
      const monitor = new ResourceMonitor({
        dataDir: options.dataDir,
        modelsDirs: [...new Set([...options.modelsDirs, pullDir])],
        modelHashFile: path.join(options.dataDir, 'model-hashes.json'),
        // `--engine auto` also looks in scripts/build-llama-server.sh's cache.
        llamacppPaths: options.engine === 'auto' || options.engine === 'llama-server' ? [...options.llamacppPaths, ...cachedLlamaServerDirs()] : options.llamacppPaths,
        sampleIntervalMs: options.sampleIntervalMs,
        // Stretched with the mesh: each such snapshot reaches every member (see scaledMetricsGapMs).
        metricsMinGapMs: () => scaledMetricsGapMs(options.metricsRepublishMs, node?.memberCount() ?? 0),
        gpuIntervalMs: options.gpuIntervalMs
      })
      let node: MeshNode | undefined
      // Engines are added at start, once the resource scan has found models and llama.cpp builds.
      const hub = new EngineHub({ engines: [], maxConcurrency: options.maxConcurrency, maxQueue: options.maxQueue })
      const swarmKey = options.swarmKeyFile !== '' ? await readSwarmKey(options.swarmKeyFile) : undefined
      // Membership is known before the first connection: gossip and streams are gated from the start.
      const membership = await Membership.open({
        store,
        key,
        selfId: peerIdOf(key),
        name: options.name,
        mode: options.open ? 'open' : swarmKey != null ? 'swarm-key' : 'admission',
        allow: options.trustAllow,
        deny: options.trustDeny
      })
      const trust = membership.trust
      const { manager: groups, groups: groupNames } = await GroupManager.create(store, options.groups, {
        settleMs: options.electionSettleMs,
        backoffPerRankMs: options.electionBackoffMs,
        startupGraceMs: options.electionGraceMs,
        quietStartMs: options.deadAfterMs,
        expectPeers: knownPeers.length > 0 || options.bootstrap.length > 0,
        tickMs: 100
      }, () => node!.id, options.name, { key, isMember: peer => trust.isMember(peer) })
      const mesh = new Mesh<NodeSnapshot>({
        ...options,
        groups: groupNames,
        leadership: () => groups.leadership(),
        privateKey: key,
        swarmKey,
        trust,
        knownPeers,
        snapshotVersion: () => node!.snapshotVersion,
        snapshotData: () => node!.currentSnapshot(),
        load: () => hub.load(),
        validateSnapshot: isNodeSnapshot
      })
      groups.attach(mesh)
      const deployments = await DeploymentStore.open(store, () => node!.id, {
        key,
        isMember: peer => trust.isMember(peer),
        audit: (kind, peer, detail) => { void store.appendAudit({ kind, peer, detail, verdict: 'rejected' }).catch(() => {}) }
      })
      node = new MeshNode(options, store, monitor, mesh, hub, groups, deployments)
      node.trust = trust
      node.membership = membership
      node.private = swarmKey != null
      trust.on('pending', (peer, name) => {
        node!.emit('peer', { type: 'peer:pending', id: peer, name, status: 'pending', at: new Date().toISOString() })
      })
      trust.on('member', peer => {
        if (peer !== node!.id) node!.emit('peer', { type: 'peer:member', id: peer, name: trust.ledger?.members.get(peer)?.name ?? '', status: 'member', at: new Date().toISOString() })
      })
      const splitNode = new SplitNode({
        mesh,
        selfId: () => node!.id,
        threads: Math.max(1, options.threads),
        rpcServerPath: options.rpcServerPath,
        llamaServerPaths: () => monitor.snapshot().resources.llamacpp.map(b => b.path),
        audit: (peer, detail) => { void store.appendAudit({ kind: RPC_TUNNEL_REFUSED, peer, detail, verdict: 'rejected' }).catch(() => {}) },
        changed: () => { node!.snapshotChanged() }
      })
      node.split = splitNode
      node.control = new ControlPlane({
        split: splitNode,
        key,
        selfId: () => node!.id,
        store,
        mesh,
        hub,
        monitor,
        groups,
        options,
        modelFiles: () => node!.modelFiles,
        pullDir,
        isMember: peer => trust.isMember(peer),
        mode: membership.mode,
        transfers: node.transfers
      })
      return node
    } catch (err) {
      await store.close()
      throw err
    }
  }

  get id (): string {
    return this.mesh.peerId
  }

  get name (): string {
    return this.options.name
  }

  /** True when a swarm key makes this a private mesh. */
  get isPrivate (): boolean {
    return this.private
  }

  async start (): Promise<void> {
    await this.monitor.start()
    const scanned = this.monitor.snapshot()
    this.modelFiles = scanned.models
    for (const engine of createEngines(this.options, { modelFiles: () => this.modelFiles, builds: scanned.resources.llamacpp })) this.hub.add(engine)
    // A member breaking the membership layer's own protocols (SWIM frames) is audited like any wire violation.
    this.mesh.on('wire:violation', (peer, protocol, reason) => {
      void this.store.appendAudit({ kind: 'wire_violation', peer, detail: `${protocol}: ${reason}`, verdict: 'rejected' }).catch(() => {})
    })
    await this.mesh.start()
    const admission = await this.membership.start(this.mesh.libp2p)
    // A changed ledger can make peers members: they lack our heartbeat and snapshot.
    admission.on('changed', () => { this.mesh.heartbeatNow(); this.mesh.scheduleSnapshot(20) })
    if (this.options.join !== '') await this.membership.join(this.options.join, this.mesh.libp2p)
    await this.groups.start()
    await this.mesh.inference.serve(relayHandler(async (call, signal, peer) => {
      if (!this.options.allowRemote) {
        throw new ShepherdError('This node serves its own clients only (allowRemote is off)', { code: 'remote_access_disabled', status: 403, type: 'permission_error' })
      }
      return await this.hub.run(call, signal, peer)
    }, this.relayLog), {
      onViolation: (peer, reason) => {
        void this.store.appendAudit({ kind: 'wire_violation', peer, detail: `${INFERENCE_PROTOCOL}: ${reason}`, verdict: 'rejected' }).catch(() => {})
      }
    })
    await this.control.start()
    await this.split.start()
    // A split replica's worker or head gone: what depended on it is released (see split-node.ts).
    for (const ev of ['peer:dead', 'peer:left'] as const) this.mesh.on(ev, rec => { void this.split.peerGone(rec.id) })
    // The first prune waits a little: a start is busy enough, and one that fails right after
    // (a taken API port) must not find a prune writing to the store it is closing.
    this.pruneFirst = setTimeout(() => { this.schedulePrune() }, Math.min(PRUNE_FIRST_DELAY_MS, this.options.pruneIntervalMs))
    this.pruneTimer = setInterval(() => { this.schedulePrune() }, this.options.pruneIntervalMs)
    this.pruneFirst.unref()
    this.pruneTimer.unref()
    this.log.info('started', { id: this.id, addresses: this.mesh.addresses() })
  }

  private schedulePrune (): void {
    if (this.pruning != null) return
    this.pruning = this.pruneLogs().finally(() => { this.pruning = undefined })
  }

  /**
   * Deletes what no one can ask for any more: expired command records past their retention, and
   * audit entries past the audit retention (both logs). Runs at start and every `pruneIntervalMs`.
   */
  async pruneLogs (): Promise<{ commandRuns: number, commandAudit: number, audit: number }> {
    const audit = { maxAgeMs: this.options.auditRetentionMs, maxEntries: this.options.auditMaxEntries }
    try {
      const commands = await this.control.commands.prune({ keepResultsMs: this.options.commandResultsRetentionMs, audit })
      const pruned = { commandRuns: commands.runs, commandAudit: commands.audit, audit: await this.store.pruneAudit(audit) }
      if (pruned.commandRuns + pruned.commandAudit + pruned.audit > 0) this.log.info('pruned old records', pruned)
      return pruned
    } catch (err) {
      // A store closing under a running prune is a stop, not a failure worth more than a line.
      this.log.warn('pruning failed', { err })
      return { commandRuns: 0, commandAudit: 0, audit: 0 }
    }
  }

  /** Stops the node; a clean stop tells peers at once (status `left`). */
  async stop (opts: { announce?: boolean } = {}): Promise<void> {
    clearTimeout(this.transferSnapshotTimer)
    clearTimeout(this.pruneFirst)
    clearInterval(this.pruneTimer)
    await this.pruning
    await this.groups.stop()
    await this.membership.stop()
    await this.mesh.stop(opts)
    // No merge may write to the store once it closes.
    await this.merger.idle()
    await this.control.stop()
    await this.split?.stop()
    await this.hub.close()
    this.monitor.stop()
    await this.store.close()
  }

  /** Changes the trust lists (persisted); peers that lose access are disconnected at once. */
  async updateTrust (change: { allow?: string[], deny?: string[], remove?: string[] }): Promise<{ allow: string[], deny: string[] }> {
    // Checked (400) and saved before anything changes; a deny of a member is also a signed revoke.
    const lists = await this.membership.updateLists(change)
    for (const id of change.deny ?? []) if (this.trust.ledger?.members.has(id) === true) await this.membership.revoke(id)
    await this.store.appendAudit({ kind: 'trust_change', detail: JSON.stringify(change), verdict: 'accepted' })
    return lists
  }

  /** The API tells the node where it listens, so peers can reach it (gossiped). */
  setApiPort (port: number): void {
    this.apiPort = port
    this.snapshotChanged()
  }

  /** Something in the snapshot changed: bump its version and publish it now. */
  snapshotChanged (): void {
    this.snapshotVersion++
    this.mesh.scheduleSnapshot(20)
  }

  currentSnapshot (): NodeSnapshot {
    const snap = this.monitor.snapshot()
    // The model budget rides with memory, so the leader's placement respects it (issue 16).
    const budget = this.options.maxLoadedMb > 0 ? this.options.maxLoadedMb * 2 ** 20 : undefined
    return {
      version: VERSION,
      resources: this.withSplitMemory(snap.resources, budget),
      models: this.servedModels(),
      api: this.apiPort != null ? { port: this.apiPort } : null,
      labels: this.labels,
      servesPeers: this.options.allowRemote,
      deployments: this.deployments.gossip(),
      ...this.duplicateIds(),
      ...this.transferRows()
    }
  }

  /** The model budget and what rpc-servers hold for split replicas, beside memory (issue 16). */
  private withSplitMemory (r: NodeSnapshot['resources'], budget: number | undefined): NodeSnapshot['resources'] {
    const rpc = this.split?.rpcServerBytes() ?? 0
    if (budget == null && rpc === 0) return r
    return { ...r, memory: { ...r.memory, ...(budget != null ? { modelBudgetBytes: budget } : {}), ...(rpc > 0 ? { rpcServerBytes: rpc } : {}) } }
  }

  /** This node's transfer rows for the snapshot (absent when none). */
  private transferRows (): { transfers?: TransferRow[] } {
    const rows = this.transfers.list()
    return rows.length > 0 ? { transfers: rows } : {}
  }

  /** Every member's transfer rows (this node's first), for deployment progress. */
  progressRows (): ProgressEvent[] {
    const own = this.transfers.list().map(r => ({ ...r, nodeId: this.id, name: this.name }))
    const theirs = this.mesh.peers()
      .filter(rec => this.trust.isMember(rec.id) && (rec.status === 'alive' || rec.status === 'suspect'))
      .flatMap(rec => (rec.snapshot?.transfers ?? []).map(r => ({ ...r, nodeId: rec.id, name: rec.name })))
    return [...own, ...theirs]
  }

  /** Relays a member's rows that changed since its last snapshot as `progress` events. */
  private relayTransferRows (peer: string, name: string, rows: TransferRow[]): void {
    if (!this.trust.isMember(peer)) return
    for (const r of rows) {
      const key = `${peer}|${r.model}`
      if (this.relayedRows.get(key) === r.at) continue
      this.relayedRows.set(key, r.at)
      this.emit('progress', { ...r, nodeId: peer, name })
    }
    if (this.relayedRows.size > 4096) this.relayedRows.clear()
  }

  /** Models this node serves: the engines' list, with GGUF header facts where a file backs it. */
  servedModels (): ModelSummary[] {
    const files = new Map(this.modelFiles.map(f => [f.name, f]))
    return this.hub.models().map(m => {
      const file = files.get(m.id)
      // An unloaded copy is no split replica, whatever flags it would load with again.
      const shards = m.state !== 'on_disk' ? this.split?.shardsOf(m.id) : undefined
      if (file != null) return { ...summarizeModel(file, m.state, m.pinned === true), ...(shards != null ? { shards } : {}) }
      return {
        name: m.id,
        sizeBytes: m.sizeBytes ?? 0,
        architecture: null,
        quantization: null,
        parameterCount: null,
        contextLength: m.contextLength ?? null,
        fingerprint: m.fingerprint ?? `${m.engineKind}:${m.engine}:${m.id}`,
        state: m.state,
        ...(m.pinned === true ? { pinned: true } : {})
      }
    })
  }

  self (): PeerView {
    const data = this.currentSnapshot()
    return {
      id: this.id,
      name: this.name,
      status: 'alive',
      lastSeen: new Date().toISOString(),
      rttMs: 0,
      addresses: this.mesh.addresses(),
      groups: this.mesh.groups,
      connected: true,
      version: VERSION,
      resources: data.resources,
      models: data.models,
      snapshotAt: new Date().toISOString(),
      load: this.hub.load(),
      labels: this.labels,
      trust: 'member',
      servesPeers: this.options.allowRemote
    }
  }

  /**
   * The members this node has heard from: what the router, the reconciler and commands see (a
   * peer that is no member never gets a prompt, a deployment or a command from here).
   */
  peers (): PeerView[] {
    return this.mesh.peers().filter(rec => this.trust.isMember(rec.id)).map(rec => toView(rec, this.trust.state(rec.id))).sort((a, b) => a.name.localeCompare(b.name) || a.id.localeCompare(b.id))
  }

  /**
   * Everyone else, for people to see (`peers`, GET /api/peers): peers heard from that are no
   * members any more (revoked, denied) and pending peers (said hello, await `admit`).
   */
  otherPeers (): PeerView[] {
    const known = this.mesh.peers().filter(rec => !this.trust.isMember(rec.id))
    const seen = new Set(known.map(r => r.id))
    const views = known.map(rec => toView(rec, this.trust.state(rec.id)))
    for (const p of this.trust.pending.list()) {
      if (seen.has(p.id) || this.trust.isMember(p.id)) continue
      const connected = this.mesh.libp2p.getConnections().some(c => c.remotePeer.toString() === p.id)
      views.push(pendingView(p.id, p.name, p.lastSeen, connected))
    }
    return views.sort((a, b) => a.name.localeCompare(b.name) || a.id.localeCompare(b.id))
  }

  peer (id: string): PeerView | undefined {
    if (id === this.id) return this.self()
    const rec = this.mesh.table.get(id)
    if (rec != null && rec.lastSeen > 0) return toView(rec, this.trust.state(rec.id))
    const p = this.trust.pending.get(id)
    return p != null && !this.trust.isMember(id) ? pendingView(p.id, p.name, p.lastSeen, this.mesh.libp2p.getConnections().some(c => c.remotePeer.toString() === id)) : undefined
  }

  /**
   * The duplicate mark of `id` (this node's own id included): two processes run as it, e.g. from
   * a copied data dir. Null when none. A marked peer's snapshot is not taken, so nothing routes to it.
   */
  duplicateIdentity (id: string): DuplicateIdentity | null {
    return this.mesh.duplicateIdentity(id) ?? null
  }

  /** The ids this node sees run as two processes, for its snapshot (absent when none). */
  private duplicateIds (): { duplicateIds?: string[] } {
    const ids = this.mesh.duplicateList().filter(d => !d.self).map(d => d.peer).slice(0, 64)
    return ids.length > 0 ? { duplicateIds: ids } : {}
  }

  /** Admits the peer a name or id names (409 when a name names several); returns its id. */
  async admit (ref: string): Promise<string> {
    const id = this.membership.resolve(ref, this.mesh.peers().map(p => ({ id: p.id, name: p.name })))
    await this.membership.admit(id)
    await this.store.appendAudit({ kind: 'membership_change', peer: id, detail: 'admitted', verdict: 'accepted' }).catch(() => {})
    return id
  }

  /** Revokes the peer a name or id names: signed, pushed to members, cut off at once; returns its id. */
  async revoke (ref: string): Promise<string> {
    const id = this.membership.resolve(ref, this.mesh.peers().map(p => ({ id: p.id, name: p.name })))
    await this.membership.revoke(id)
    await this.store.appendAudit({ kind: 'membership_change', peer: id, detail: 'revoked', verdict: 'accepted' }).catch(() => {})
    return id
  }

  /** Members, pending and revoked peers of this node's mesh (GET /api/members). */
  members (): { mesh: string | null, mode: string, members: MemberView[] } {
    const connected = (id: string): boolean => this.mesh.libp2p.getConnections().some(c => c.remotePeer.toString() === id)
    return { mesh: this.trust.ledger?.mesh ?? null, mode: this.membership.mode, members: this.membership.list(connected) }
  }

  /** Peers this node holds alive or suspect (what a snapshot it publishes reaches). */
  memberCount (): number {
    let n = 0
    for (const p of this.mesh.peers()) if (p.status === 'alive' || p.status === 'suspect') n++
    return n
  }

  metrics (): NodeMetrics {
    const peersByStatus: Record<PeerStatus, number> = { alive: 0, suspect: 0, dead: 0, left: 0 }
    for (const p of this.mesh.peers()) peersByStatus[p.status]++
    const inference = this.mesh.inference
    return {
      gossip: this.mesh.stats,
      ...(this.mesh.swimStats() != null ? { swim: this.mesh.swimStats() } : {}),
      ...(this.mesh.swimHealth() != null ? { swimHealth: this.mesh.swimHealth() } : {}),
      connections: this.mesh.libp2p.getConnections().length,
      redial: this.mesh.redialStats(),
      members: this.mesh.memberStats(),
      relay: { ...inference.stats, idleStreams: inference.pool.idleCount() },
      peersByStatus,
      snapshotVersion: this.snapshotVersion,
      uptimeSec: Math.round((Date.now() - this.startedAt) / 1000)
    }
  }

  private remember (rec: PeerRecord<NodeSnapshot>): void {
    if (rec.addresses.length === 0) return
    this.store.rememberPeer({ id: rec.id, name: rec.name, addresses: rec.addresses, lastSeen: rec.lastSeen })
      .catch(err => { this.log.debug('could not remember peer', { err }) })
  }
}

/** A pending peer: no state taken from it, so only what its hello said. */
function pendingView (id: string, name: string, lastSeen: number, connected: boolean): PeerView {
  return {
    id, name, status: 'pending', lastSeen: new Date(lastSeen).toISOString(), rttMs: null, addresses: [], groups: [], connected, version: null,
    resources: null, models: [], snapshotAt: null, load: null, labels: {}, trust: 'pending', servesPeers: false
  }
}

function toView (rec: PeerRecord<NodeSnapshot>, trust: TrustState): PeerView {
  return {
    id: rec.id,
    name: rec.name,
    status: rec.status,
    lastSeen: rec.lastSeen > 0 ? new Date(rec.lastSeen).toISOString() : null,
    rttMs: rec.rttMs,
    addresses: rec.addresses,
    groups: rec.groups,
    connected: rec.connected,
    version: rec.snapshot?.version ?? null,
    resources: rec.snapshot?.resources ?? null,
    models: rec.snapshot?.models ?? [],
    snapshotAt: rec.snapshotAt != null ? new Date(rec.snapshotAt).toISOString() : null,
    load: rec.load != null ? { active: rec.load.active, queued: rec.load.queued } : null,
    labels: rec.snapshot?.labels ?? {},
    trust,
    servesPeers: rec.snapshot?.servesPeers !== false
  }
}
