import { EventEmitter } from 'node:events'
import { multiaddr, type Multiaddr } from '@multiformats/multiaddr'
import { peerIdFromString } from '@libp2p/peer-id'
import type { PeerId } from '@libp2p/interface'
import type { MeshEvents, MeshOptions, MeshStats } from './mesh-types.js'
import { createLogger, type Logger } from '../logger.js'
import { MEMBERSHIP_TOPIC, MEMBERSHIP_VERSION } from './constants.js'
import { createHost, type Host } from './host.js'
import { DelayHistogram } from './delay-histogram.js'
import { decodeMembership, encodeMembership, type MembershipMessage } from './messages.js'
import { DEAD_PEER_TTL_MS, shouldEvict, PeerTable, onDisconnected, onHeard, onLeave, onRefused, onSilence, onTick, type PeerRecord } from './membership.js'
import type { SwimStatus } from './swim.js'
import type { SwimDriver, SwimDriverStats, SwimHealth } from './swim-driver.js'
import { SWIM_PROTOCOL } from './swim-protocol.js'
import { startMeshSwim } from './mesh-swim.js'
import { Redialer, type RedialStats } from './redialer.js'
import { InferenceService } from './inference.js'
import { CommandService } from './command-protocol.js'
import { BlobService } from './blob-protocol.js'
import { RpcTunnelService } from './rpc-tunnel.js'
import { SNAPSHOT_PROTOCOL, SnapshotExchange } from './snapshot-exchange.js'
import { reachableAddresses } from './addresses.js'
import { MAX_CLOCK_SKEW_MS, MAX_WANTS, MIN_SNAPSHOT_GAP_MS } from './membership-limits.js'
import { MemberExchange, MEMBERS_PROTOCOL, MEMBER_EXCHANGE_FAST_WINDOW_MS, nextExchangeMs, type MemberEntry, type MemberExchangeStats } from './member-exchange.js'
import { GossipGate } from './gossip-gate.js'
import { TopicValidatorResult } from '@libp2p/gossipsub'
import { ConnectionListenAddrs, DuplicateIdentityDetector, type DuplicateIdentity, type Observation } from './duplicate-identity.js'

/** A peer met before and evicted is still redialed (it may restart), but at most this often. */
const DEAD_PEER_REDIAL_MS = 30_000
/** A snapshot advertised and missing this long is pulled (it may still be on its way by gossip). */
const PULL_AFTER_MS = 250
/** How long after meeting its first peer a node still publishes its snapshot as it meets others. */
const JOIN_PUBLISH_MS = 10_000
/** Least time between those publications (a newcomer meets a 48-node mesh within a few seconds). */
const JOIN_PUBLISH_GAP_MS = 1000
/** Member exchanges a joining node starts as it meets its first peers. */
const JOIN_EXCHANGES = 2
/** Dial hints one member list may add. */
const MAX_HINTS_PER_EXCHANGE = 64

export type { MeshOptions, MeshStats, MeshEvents } from './mesh-types.js'

function want (ids: string[]): { want?: string[] } {
  return ids.length > 0 ? { want: ids } : {}
}

function loadTuple (l: { active: number, queued: number }): [number, number] {
  return [Math.max(0, Math.floor(l.active)), Math.max(0, Math.floor(l.queued))]
}

/**
 * The membership layer of the mesh: heartbeats and snapshots over gossipsub, a peer table fed by
 * them and by connection events, failure detection, RTT probes and redialing of lost peers.
 */
export class Mesh<S = Record<string, unknown>> extends EventEmitter<MeshEvents<S>> {
  readonly table = new PeerTable<S>()
  readonly stats: MeshStats = {
    gossipBytesSent: 0,
    gossipBytesReceived: 0,
    messagesSent: 0,
    messagesReceived: 0,
    dropped: { oversized: 0, malformed_json: 0, invalid_schema: 0, unsupported_version: 0, stale: 0, invalid_snapshot: 0, untrusted: 0, rate_limited: 0, unverified: 0, state_rate: 0 },
    work: { snapshotsValidated: 0, snapshotsApplied: 0, snapshotsPublished: 0, snapshotsPulled: 0, pullsServed: 0, evicted: 0, wantsSent: 0, wantsAnswered: 0 },
    mdns: { queries: 0, announced: 0, suppressed: 0 },
    heartbeatDelay: new DelayHistogram()
  }

  /** Decode results of validated messages, keyed by their payload, consumed by the handler. */
  private readonly decoded = new WeakMap<Uint8Array, ReturnType<typeof decodeMembership>>()
  /** Rate, verification and byte budget of the membership topic, before parsing (see gossip-gate.ts). */
  private readonly gate: GossipGate
  /** Peers whose advertised snapshot this node lacks, since when (asked for with `want`). */
  private readonly missing = new Map<string, { since: number, askedAt: number }>()
  private lastSnapshotAt = 0
  /** When this node met its first peer (its join window starts): see JOIN_PUBLISH_MS. */
  private joiningSince?: number
  /** Pulls of members' snapshots, and answers to theirs (`/shepherd/snapshot/1.0.0`). */
  private snapshots?: SnapshotExchange
  /**
   * What each identified peer's identify said: `true`, it lists the snapshot protocol (it pulls
   * ours and we pull its, instead of publishes to everyone); `false`, it does not (an older node:
   * only these are sent our snapshot on the topic when they subscribe or are met). A peer not
   * identified yet is absent: its subscription often arrives first, and publishing then made every
   * member publish to every member on each join again (88 snapshots from one node of a 48-node
   * ramp in 8 minutes).
   */
  private readonly pulls = new Map<string, boolean>()
  /**
   * Peers with at least one open connection (libp2p's peer:connect / peer:disconnect). Every
   * gossiped message asks whether its origin is connected: parsing the id (base58 and a key) for
   * `getConnections` each time was 40 % of a 48-node mesh's bootstrap node, whose accept queue
   * then filled and newcomers never met anyone.
   */
  private readonly connectedIds = new Set<string>()
  /** Member-list anti-entropy (`/shepherd/members/1.0.0`), and the connected peers that speak it. */
  private members?: MemberExchange
  private readonly listsMembers = new Set<string>()
  /** Exchanges this node started on meeting peers while it joins (its seed's list is the mesh). */
  private joinExchanges = 0
  private exchangeTimer?: NodeJS.Timeout
  /** Until when exchanges run fast (see `MEMBER_EXCHANGE_FAST_MS`). */
  private exchangeFastUntil = 0
  private lastPublishedVersion = -1
  private lastPublishedConnections = -1

  private host?: Host
  private readonly log: Logger
  private readonly incarnation = Date.now()
  private seq = 0
  private readonly timers: NodeJS.Timeout[] = []
  private snapshotDebounce?: NodeJS.Timeout
  private redialer?: Redialer
  private stopping = false
  /** SWIM failure detection (membership `swim`). */
  private swim?: SwimDriver
  /** What the last heartbeat carried: with SWIM, a heartbeat goes out only when it changes. */
  private lastHeartbeatKey = ''
  /** When this node last heard from any member (gossip or a SWIM frame): see `tick`. */
  private lastHeardAt = Date.now()

  constructor (private readonly opts: MeshOptions<S>) {
    super()
    this.gate = new GossipGate({
      selfId: () => this.peerId,
      connected: id => this.connectedIds.has(id),
      trust: opts.trust
    })
    this.log = createLogger('p2p:mesh')
    // Re-emit table events so consumers subscribe to the mesh alone.
    for (const ev of ['peer:joined', 'peer:alive', 'peer:suspect', 'peer:dead', 'peer:left', 'peer:snapshot'] as const) {
      this.table.on(ev, (rec: PeerRecord<S>) => {
        // Snapshots arrive every 15 s per peer: at info they drowned the transitions that matter.
        if (ev === 'peer:snapshot') this.log.debug(ev, { peer: rec.id, name: rec.name })
        else this.log.info(ev, { peer: rec.id, name: rec.name })
        this.emit(ev, rec)
      })
    }
    // A peer declared dead by silence may still have a half-open connection (link gone): close it,
    // so streams to it (inference relays, commands) fail now instead of waiting for TCP timeouts.
    // With SWIM, not: a member declared dead while merely starved of CPU would otherwise lose its
    // connections, and the handshakes to restore them load every node further.
    this.table.on('peer:dead', rec => {
      if (this.host != null && !this.stopping && this.swim == null) void this.host.hangUp(peerIdFromString(rec.id)).catch(() => {})
    })
  }

  private inferenceService?: InferenceService
  private commandService?: CommandService
  private blobService?: BlobService
  private rpcTunnelService?: RpcTunnelService

  /** `/shepherd/rpc-tunnel/1.0.0`: llama.cpp RPC of split replicas, head to workers (issue 16). */
  get rpcTunnel (): RpcTunnelService {
    this.rpcTunnelService ??= new RpcTunnelService(this.libp2p)
    return this.rpcTunnelService
  }

  /** `/shepherd/cmd/1.0.0`: signed commands. */
  get commands (): CommandService {
    this.commandService ??= new CommandService(this.libp2p)
    return this.commandService
  }

  /** `/shepherd/blob/2.0.0`: model files between nodes. */
  get blob (): BlobService {
    this.blobService ??= new BlobService(this.libp2p)
    return this.blobService
  }

  /** `/shepherd/openai/2.0.0`: serve peers' inference requests and send ours. */
  get inference (): InferenceService {
    const idle = this.opts.relayStreamIdleMs
    this.inferenceService ??= new InferenceService(this.libp2p, idle != null ? { requesterIdleMs: idle, hostIdleMs: 2 * idle } : {})
    return this.inferenceService
  }

  /** The libp2p host, for protocol handlers of other parts (openai, cmd, blob). */
  get libp2p (): Host {
    if (this.host == null) throw new Error('mesh not started')
    return this.host
  }

  get peerId (): string {
    return this.libp2p.peerId.toString()
  }

  get incarnationId (): number {
    return this.incarnation
  }

  private duplicateIds?: DuplicateIdentityDetector
  /** Peer ids two processes run as (a copied data dir), this node's own included (see duplicate-identity.ts). */
  get duplicates (): DuplicateIdentityDetector {
    this.duplicateIds ??= new DuplicateIdentityDetector(this.peerId, this.incarnation, this.incarnation)
    return this.duplicateIds
  }

  /** Every duplicate mark now; none before the mesh started. */
  duplicateList (): DuplicateIdentity[] {
    return this.host == null ? [] : this.duplicates.list(Date.now())
  }

  /** The duplicate mark of `id` now (this node's own id included), or undefined. */
  duplicateIdentity (id: string): DuplicateIdentity | undefined {
    return this.host == null ? undefined : this.duplicates.get(id, Date.now())
  }

  /**
   * Feeds one message's incarnation to the duplicate detector; true while `from` is marked. A
   * marked id is ambiguous: its snapshot is dropped (so nothing routes to it) and no new one is
   * taken until the mark clears. Named in the logs once per period.
   */
  private checkIdentity (from: string, inc: number, now: number): boolean {
    const self = from === this.peerId
    return this.onDuplicateEvidence(from, self ? this.duplicates.heardSelf(inc, now) : this.duplicates.heard(from, inc, now), now)
  }

  private readonly connectionAddrs = new ConnectionListenAddrs()
  private lastDuplicates: string[] = []
  /** Two open connections of `peer` to processes listening on disjoint addresses: two processes. */
  private checkConnections (peer: PeerId, now: number): void {
    const open = this.libp2p.getConnections(peer)
    if (open.length < 2) return
    const id = peer.toString()
    if (this.connectionAddrs.conflict(id, open.map(c => c.id))) this.onDuplicateEvidence(id, this.duplicates.conflictingConnections(id, now), now)
  }

  /** A member (`by`) reports that it sees this node's own id run as two processes. */
  reportDuplicateOfSelf (by: string): void {
    if (this.host != null) this.onDuplicateEvidence(this.peerId, this.duplicates.reportedBy(by, Date.now()), Date.now())
  }

  /**
   * Names a duplicate in the logs (once per period); when first seen, drops its snapshot and
   * sends ours soon (it lists the id, so the id's owner learns it).
   */
  private onDuplicateEvidence (from: string, o: Observation, now: number): boolean {
    const self = from === this.peerId
    if (o.warn) {
      const dup = this.duplicates.get(from, now)
      this.log.warn(self ? 'another process runs with this node\'s peer id (a copied data dir?): give one of them a new data dir' : 'two processes run with one peer id (a copied data dir?): not routing to it', { peer: from, evidence: dup?.evidence, incarnations: dup?.incarnations, reportedBy: dup?.reportedBy })
    }
    if (o.detected && !self) {
      this.table.patch(from, { snapshot: null, snapshotVersion: -1, snapshotAt: null })
      this.scheduleSnapshot(20)
    }
    return o.duplicate
  }

  /** The redialer's targets (peers heard of only through gossip counted apart) and dials made. */
  redialStats (): RedialStats {
    const r = this.redialer
    return r == null ? { targets: 0, hinted: 0, dials: 0, hintDials: 0, hintsRefused: 0, hintsDropped: 0, failed: 0 } : { ...r.size(), ...r.stats }
  }

  /** Member-list exchanges run, failed, answered and refused (zero before start). */
  memberStats (): MemberExchangeStats {
    return { ...(this.members?.stats ?? { exchanged: 0, failures: 0, served: 0, refused: 0 }) }
  }

  addresses (): string[] {
    return this.libp2p.getMultiaddrs().map(ma => ma.toString())
  }

  /** Addresses worth telling peers: loopback ones only when there is nothing else. */
  private dialableAddresses (): string[] {
    return reachableAddresses(this.addresses()).slice(0, 16)
  }

  /** Every peer ever heard from, self excluded. */
  peers (): Array<PeerRecord<S>> {
    return this.table.list().filter(r => r.lastSeen > 0)
  }

  async start (): Promise<void> {
    const o = this.opts
    const host = this.host = await createHost({ privateKey: o.privateKey, listen: o.listen, mdns: o.mdns, mdnsIntervalMs: o.mdnsIntervalMs, mdnsMaxIntervalMs: o.mdnsMaxIntervalMs, mdnsStats: this.stats.mdns, swarmKey: o.swarmKey, trust: o.trust, maxConnections: o.maxConnections })
    // A revoked peer is cut off at once; its record stays (shown as denied) and goes dead.
    o.trust?.on('revoked', peer => {
      // A malformed id must not throw here (the change is made already): it has no connection to close.
      if (peer !== host.peerId.toString()) void Promise.resolve().then(async () => { await host.hangUp(peerIdFromString(peer)) }).catch(() => {})
    })
    // A new member lacks our snapshot (we ignored each other until now). Gossipsub publishes to it
    // once its score is recomputed (within a gossip heartbeat, 700 ms): send again after that.
    o.trust?.on('member', peer => {
      const connected = this.connectedIds.has(peer)
      if (connected) this.swim?.add(peer)
      this.heartbeat()
      // Each side pulls the other's snapshot; one that does not pull is sent ours on the topic.
      if (connected && this.pulls.get(peer) !== false) {
        // Not identified yet: onIdentified pulls once it is.
        if (this.pulls.get(peer) === true) this.snapshots?.want(peer)
        setTimeout(() => { this.heartbeat() }, 1000).unref()
        return
      }
      this.scheduleSnapshot(20)
      setTimeout(() => { this.heartbeat(); this.scheduleSnapshot(0) }, 1000).unref()
    })
    const pubsub = host.services.pubsub

    pubsub.subscribe(MEMBERSHIP_TOPIC)
    // Validation happens before gossipsub forwards a message: invalid ones are rejected (the
    // delivering peer is penalised), a flooding origin is throttled (ignored, not forwarded).
    pubsub.topicValidators.set(MEMBERSHIP_TOPIC, (source, msg) => {
      if (msg.type !== 'signed') return TopicValidatorResult.Reject
      const from = msg.from.toString()
      // State (heartbeats, snapshots, leadership views, leave) is taken from members only, and
      // never relayed for anyone else. A non-member sending its own is penalised; a member that
      // relays one (its view of membership may lag ours) is not.
      if (this.opts.trust != null && !this.opts.trust.isMember(from)) {
        this.stats.dropped.untrusted++
        return source.toString() === from ? TopicValidatorResult.Reject : TopicValidatorResult.Ignore
      }
      // Only a peer this node can verify (connected, or in its ledger) gets a record. Anyone else
      // named by a relaying connection is at most a dial hint, a few per connection: throw-away
      // keys cost an attacker nothing, and each once became a record dialed for ever. Snapshot
      // bytes per origin are budgeted before they are parsed.
      const verdict = this.gate.check(source.toString(), from, msg.data.byteLength, Date.now())
      if (!verdict.ok) {
        this.stats.dropped[verdict.reason]++
        return TopicValidatorResult.Ignore
      }
      const verified = verdict.verified
      const decoded = decodeMembership(msg.data)
      if (!decoded.ok) {
        this.stats.dropped[decoded.reason]++
        return decoded.reason === 'unsupported_version' ? TopicValidatorResult.Ignore : TopicValidatorResult.Reject
      }
      if (!verified) {
        // Not relayed either: a peer this node does not know is not vouched for to others.
        this.stats.dropped.unverified++
        this.hint(from, decoded.message)
        return TopicValidatorResult.Ignore
      }
      this.decoded.set(msg.data, decoded)
      return TopicValidatorResult.Accept
    })
    pubsub.addEventListener('message', evt => {
      const msg = evt.detail
      if (msg.topic !== MEMBERSHIP_TOPIC || msg.type !== 'signed') return
      this.onMessage(msg.from.toString(), msg.data)
    })
    // A peer that (re)subscribes is new to us or restarted: it lacks our snapshot. One that pulls
    // snapshots (identify named the protocol) takes ours itself; to any other we publish it.
    pubsub.addEventListener('subscription-change', evt => {
      if (evt.detail.subscriptions.some(s => s.topic === MEMBERSHIP_TOPIC && s.subscribe)) {
        const id = evt.detail.peerId.toString()
        // While this node joins, its snapshot goes out on the topic as it meets peers: relayed, it
        // names us to members not connected yet, which dial us (and then pull it). Once is not
        // enough: a peer that met our first peer at the same moment is not yet in its topic mesh,
        // so missed the relay, and two nodes that joined together then met only 14 s later (the
        // safety net). A member meeting a newcomer that pulls publishes nothing (it pulls ours).
        this.joiningSince ??= Date.now()
        const joining = Date.now() - this.joiningSince < JOIN_PUBLISH_MS
        if (this.pulls.get(id) === false || joining) this.scheduleSnapshot(joining ? Math.max(20, this.lastSnapshotAt + JOIN_PUBLISH_GAP_MS - Date.now()) : 20)
      }
    })

    host.addEventListener('peer:discovery', evt => {
      const { id, multiaddrs } = evt.detail
      if (id.equals(host.peerId)) return
      if (this.redialer?.addDiscovered(id.toString(), multiaddrs.map(m => m.toString())) !== true) return
      if (host.getConnections(id).length === 0) this.redialer?.dialNow(id.toString())
    })
    host.addEventListener('peer:connect', evt => { this.connectedIds.add(evt.detail.toString()); this.onConnect(evt.detail) })
    host.addEventListener('peer:disconnect', evt => { this.connectedIds.delete(evt.detail.toString()); this.onDisconnect(evt.detail) })
    host.addEventListener('connection:close', evt => { this.connectionAddrs.closed(evt.detail.id) })
    host.addEventListener('peer:identify', evt => {
      const id = evt.detail.peerId.toString()
      this.connectionAddrs.identified(id, evt.detail.connection.id, evt.detail.listenAddrs.map(a => a.toString()))
      this.checkConnections(evt.detail.peerId, Date.now())
      this.onIdentified(id, evt.detail.protocols)
      const addrs = reachableAddresses(evt.detail.listenAddrs.map(a => a.toString()))
      const rec = this.table.get(id)
      if (rec != null && addrs.length > 0) {
        const next = this.table.patch(id, { addresses: addrs })
        if (next != null && next.lastSeen > 0) this.emit('peer:addresses', next)
      }
      this.redialer?.addPeer(id, addrs)
    })

    // A full mesh up to 3/4 of the connection cap; beyond, SWIM probes (and inference, blob and
    // command streams) dial the peer they need on demand, within the rest.
    const keepConnected = Math.floor(0.75 * (o.maxConnections ?? 256))
    this.redialer = new Redialer(host, {
      minMs: o.redialMinMs,
      maxMs: o.redialMaxMs,
      onRefused: id => { this.refused(id) },
      hintDialsPerSec: 10,
      isWanted: id => {
        const rec = this.table.get(id)
        // Every peer not connected is dialed (the LAN mesh is a full mesh) except one that said goodbye.
        return (rec == null || rec.status !== 'left') && (o.trust == null || o.trust.allows(id)) && this.connectionCount() < keepConnected
      }
    })
    for (const kp of o.knownPeers ?? []) {
      if (kp.id !== host.peerId.toString()) this.redialer.addPeer(kp.id, kp.addresses)
    }
    for (const addr of o.bootstrap) this.redialer.addBootstrap(addr)
    this.redialer.start()

    this.snapshots = new SnapshotExchange(host, {
      current: () => {
        this.stats.work.pullsServed++
        return encodeMembership(this.snapshotMessage())
      },
      onSnapshot: (from, bytes) => { this.acceptPulled(from, bytes) },
      isMember: id => o.trust == null || o.trust.isMember(id),
      onViolation: (peer, reason) => { this.emit('wire:violation', peer, SNAPSHOT_PROTOCOL, reason) }
    })
    await this.snapshots.start()

    this.members = new MemberExchange(host, {
      list: () => this.memberList(),
      onMembers: (from, entries) => { this.onMemberList(from, entries) },
      isMember: id => o.trust == null || o.trust.isMember(id),
      onViolation: (peer, reason) => { this.emit('wire:violation', peer, MEMBERS_PROTOCOL, reason) }
    })
    await this.members.start()
    this.scheduleExchange()

    if (o.membership === 'swim') await this.startSwim(host)

    const tickMs = Math.max(50, Math.min(250, Math.floor(o.heartbeatMs / 4)))
    // With SWIM, liveness comes from probes: a heartbeat goes out only when what it carries (load,
    // leadership views, groups, snapshot version, wants) changed, checked every period.
    this.timers.push(setInterval(() => { this.heartbeat({ ifChanged: this.swim != null }) }, o.heartbeatMs))
    this.timers.push(setInterval(() => { this.tick() }, tickMs))
    // A safety net, idle in a settled mesh: snapshots go out on change (and when a peer asks for
    // one it missed, `want`), not to everyone every period. Again here only when a change was not
    // published; with flooded heartbeats also when this node's connections changed since (a
    // newcomer is still being met). With SWIM, member exchanges introduce newcomers instead: a
    // re-publish reaches every node, and in a 48-node ramp each node published 240 of them.
    this.timers.push(setInterval(() => {
      if (this.opts.snapshotVersion() !== this.lastPublishedVersion || (this.swim == null && this.connectionCount() !== this.lastPublishedConnections)) this.scheduleSnapshot(0)
    }, o.snapshotIntervalMs))
    // With SWIM, round trips come from its acks: pinging every peer would grow with the mesh.
    if (this.swim == null) this.timers.push(setInterval(() => { void this.probeRtt() }, o.pingIntervalMs))
    for (const t of this.timers) t.unref()
    this.heartbeat()
  }

  /** Stops; with `announce` (a clean stop) peers are told at once that this node leaves. */
  async stop (opts: { announce?: boolean } = {}): Promise<void> {
    if (this.host == null || this.stopping) return
    this.stopping = true
    for (const t of this.timers) clearInterval(t)
    clearTimeout(this.snapshotDebounce)
    this.redialer?.stop()
    clearTimeout(this.exchangeTimer)
    await this.members?.stop()
    await this.snapshots?.stop()
    await this.swim?.stop({ leave: opts.announce !== false })
    await this.inferenceService?.stop()
    await this.commandService?.stop()
    await this.blobService?.stop()
    await this.rpcTunnelService?.stop()
    if (opts.announce !== false) {
      await this.publish({ v: MEMBERSHIP_VERSION, t: 'leave', inc: this.incarnation, seq: ++this.seq, at: Date.now() })
      // Give the frame a moment to leave the socket before the connections close.
      await new Promise(resolve => setTimeout(resolve, 50))
    }
    await this.host.stop()
  }

  /**
   * Publishes the current snapshot soon; calls within the delay are merged into one, and two
   * publishes are at least `MIN_SNAPSHOT_GAP_MS` apart (a burst of changes, say a merge of 1,024
   * deployments, is one snapshot, not one per change).
   */
  scheduleSnapshot (delayMs = 50): void {
    if (this.snapshotDebounce != null || this.stopping) return
    delayMs = Math.max(delayMs, this.lastSnapshotAt + MIN_SNAPSHOT_GAP_MS - Date.now())
    this.snapshotDebounce = setTimeout(() => {
      this.snapshotDebounce = undefined
      this.publishSnapshot()
    }, delayMs)
    this.snapshotDebounce.unref()
  }

  private publishSnapshot (): void {
    if (this.host == null || this.stopping) return
    this.lastSnapshotAt = Date.now()
    this.stats.work.snapshotsPublished++
    const msg = this.snapshotMessage()
    this.lastPublishedVersion = msg.snap
    this.lastPublishedConnections = this.connectionCount()
    void this.publish(msg)
  }

  /** This node's snapshot as a membership message (a fresh `seq`): published, or given to a puller. */
  private snapshotMessage (): MembershipMessage & { t: 'snap' } {
    return {
      v: MEMBERSHIP_VERSION, t: 'snap', inc: this.incarnation, seq: ++this.seq, at: Date.now(),
      name: this.opts.name, groups: this.opts.groups, snap: this.opts.snapshotVersion(), addrs: this.dialableAddresses(), data: this.opts.snapshotData() as Record<string, unknown>,
      ...this.meta()
    }
  }

  /**
   * A connection's identify: a member that pulls snapshots is not sent ours on the topic (it
   * pulls it), and its own is pulled now when this node lacks it.
   */
  private onIdentified (id: string, protocols: string[]): void {
    if (protocols.includes(MEMBERS_PROTOCOL)) {
      this.listsMembers.add(id)
      // memberlist's push-pull on join: a newcomer learns the whole mesh from its first peers.
      if (this.joinExchanges < JOIN_EXCHANGES && (this.opts.trust == null || this.opts.trust.isMember(id))) {
        this.joinExchanges++
        void this.members?.exchange(id)
      }
    } else {
      this.listsMembers.delete(id)
    }
    if (!protocols.includes(SNAPSHOT_PROTOCOL)) {
      // It does not pull: it is sent ours on the topic (it subscribed, or is sent it when it does).
      if (this.pulls.get(id) !== false) this.scheduleSnapshot(20)
      this.pulls.set(id, false)
      return
    }
    this.pulls.set(id, true)
    if (this.opts.trust != null && !this.opts.trust.isMember(id)) return
    // An id two processes run as is ambiguous: a pull would take whichever process libp2p picks
    // (its name, its incarnation, so the other's messages then look stale). Pulled once it clears.
    if (this.duplicateIdentity(id) != null) return
    const rec = this.table.get(id)
    if (rec == null || rec.lastSeen === 0 || rec.snapshotVersion < 0 || this.missing.has(id)) this.snapshots?.want(id)
  }

  /**
   * A snapshot pulled from `from` (the stream's authenticated peer): held to the topic's rules
   * (membership, byte budget, schema), then merged as a gossiped one would be.
   */
  private acceptPulled (from: string, bytes: Uint8Array): void {
    if (this.stopping || (this.opts.trust != null && !this.opts.trust.isMember(from))) return
    if (this.duplicateIdentity(from) != null) return
    const verdict = this.gate.check(from, from, bytes.byteLength, Date.now())
    if (!verdict.ok) {
      this.stats.dropped[verdict.reason]++
      return
    }
    const decoded = decodeMembership(bytes)
    if (!decoded.ok || decoded.message.t !== 'snap') {
      if (!decoded.ok) this.stats.dropped[decoded.reason]++
      this.emit('wire:violation', from, SNAPSHOT_PROTOCOL, 'the answer is not a snapshot')
      return
    }
    this.stats.work.snapshotsPulled++
    this.decoded.set(bytes, decoded)
    this.onMessage(from, bytes)
  }

  private connectionCount (): number {
    return this.host?.getPeers().length ?? 0
  }

  /**
   * Peers whose advertised snapshot has been missing for a while (asked at most every 2
   * heartbeats). One that answers pulls and is connected is pulled from instead (see `pullMissing`).
   */
  private wants (now: number): string[] {
    const out: string[] = []
    for (const [id, m] of this.missing) {
      if (out.length >= MAX_WANTS) break
      if (now - m.since < this.opts.heartbeatMs / 2 || now - m.askedAt < 2 * this.opts.heartbeatMs) continue
      const rec = this.table.get(id)
      if (rec == null || rec.status === 'dead' || rec.status === 'left') { this.missing.delete(id); continue }
      if (this.pulls.get(id) === true && rec.connected) continue
      m.askedAt = now
      out.push(id)
    }
    this.stats.work.wantsSent += out.length
    return out
  }

  /** Publishes a heartbeat; `ifChanged`: only when its content changed or a snapshot is wanted. */
  private heartbeat (opts: { ifChanged?: boolean } = {}): void {
    if (this.host == null || this.stopping) return
    const body = {
      name: this.opts.name, groups: this.opts.groups, snap: this.opts.snapshotVersion(),
      ...this.meta()
    }
    const key = JSON.stringify(body)
    const wants = this.wants(Date.now())
    if (opts.ifChanged === true && key === this.lastHeartbeatKey && wants.length === 0) return
    this.lastHeartbeatKey = key
    void this.publish({ v: MEMBERSHIP_VERSION, t: 'hb', inc: this.incarnation, seq: ++this.seq, at: Date.now(), ...body, ...want(wants) })
  }

  /** Sends a heartbeat now (a leadership claim should not wait for the next interval). */
  heartbeatNow (): void {
    this.heartbeat()
  }

  /** Changes the groups this node announces (join/leave at run time). */
  setGroups (groups: string[]): void {
    this.opts.groups = [...groups]
    this.heartbeat()
    this.scheduleSnapshot(0)
  }

  get groups (): string[] {
    return this.opts.groups
  }

  private async publish (msg: MembershipMessage): Promise<void> {
    const bytes = encodeMembership(msg)
    try {
      const res = await this.libp2p.services.pubsub.publish(MEMBERSHIP_TOPIC, bytes)
      this.stats.messagesSent++
      this.stats.gossipBytesSent += bytes.byteLength * Math.max(1, res.recipients.length)
    } catch (err) {
      this.log.debug('publish failed', { err })
    }
  }

  /** Applies one received membership message. Never throws: bad input is counted and dropped. */
  onMessage (from: string, data: Uint8Array): void {
    this.stats.gossipBytesReceived += data.byteLength
    this.stats.messagesReceived++
    if (from === this.host?.peerId.toString()) {
      // Our own id on a message from elsewhere: another process runs with our key.
      const own = this.decoded.get(data) ?? decodeMembership(data)
      this.decoded.delete(data)
      if (own.ok) this.checkIdentity(from, own.message.inc, Date.now())
      return
    }
    // Gossip is relayed: a non-member's messages can arrive through a member.
    if (this.opts.trust != null && !this.opts.trust.isMember(from)) {
      this.stats.dropped.untrusted++
      return
    }
    // Decoded once, by the topic validator (which also counted failures); decoded here only
    // when a message arrives without going through it.
    let decoded = this.decoded.get(data)
    this.decoded.delete(data)
    if (decoded == null) {
      decoded = decodeMembership(data)
      if (!decoded.ok) this.stats.dropped[decoded.reason]++
    }
    if (!decoded.ok) {
      this.log.debug('dropped membership message', { from, reason: decoded.reason })
      return
    }
    const msg = decoded.message
    const now = Date.now()
    // The topic validator lets only verified peers' messages through; a direct call is held to the same rule.
    if (this.host == null || !this.gate.verified(from)) {
      this.stats.dropped.unverified++
      return
    }
    const duplicate = this.checkIdentity(from, msg.inc, now)
    const prev = this.table.ensure(from, now)
    if (msg.t === 'leave') {
      const res = onLeave(prev, { incarnation: msg.inc, seq: msg.seq }, now)
      if (!res.accepted) this.stats.dropped.stale++
      this.table.apply(prev, res)
      return
    }
    // A snapshot of a version this node holds already (a re-publish) is not validated again:
    // it counts as a heartbeat. Validating 240 KiB every 50 ms once cost a third of a core.
    const freshSnapshot = msg.t === 'snap' && (msg.inc > prev.incarnation || (msg.inc === prev.incarnation && msg.snap > prev.snapshotVersion))
    if (freshSnapshot) {
      this.stats.work.snapshotsValidated++
      if (!this.opts.validateSnapshot(msg.data)) {
        this.stats.dropped.invalid_snapshot++
        return
      }
    }
    const wasNew = prev.lastSeen === 0 || msg.inc > prev.incarnation
    const res = onHeard(prev, { incarnation: msg.inc, seq: msg.seq, name: msg.name, groups: msg.groups }, now)
    if (!res.accepted) {
      this.stats.dropped.stale++
      return
    }
    if (res.record.addresses.length === 0 && this.host != null) {
      res.record.addresses = this.host.getConnections(peerIdFromString(from)).map(c => c.remoteAddr.toString())
    }
    this.lastHeardAt = now
    res.record.connected = this.connectedIds.has(from)
    // A timestamp ahead of our clock by more than the skew allowed is clamped (it is informational only).
    if (msg.t === 'hb') this.stats.heartbeatDelay.push(now - Math.min(msg.at, now + MAX_CLOCK_SKEW_MS))
    if (msg.load != null) res.record.load = { active: msg.load[0], queued: msg.load[1], at: now }
    const rec = this.table.apply(prev, res)
    if (this.swim != null) {
      this.swim.add(from)
      // It speaks, yet SWIM holds it suspect or dead (a frozen process that resumed): tell it, so it refutes.
      this.swim.poke(from)
    }
    if (msg.lead != null && msg.lead.length > 0) this.emit('peer:lead', from, msg.lead)
    // The LAN mesh is a full mesh: a peer known only through gossip is dialed directly, so its
    // crash is seen by every node (connection refused), not only by those it happened to dial.
    if (!rec.connected) {
      if (msg.t === 'snap') this.redialer?.addPeer(from, msg.addrs)
      this.redialer?.dialSoon(from)
    }
    if (freshSnapshot && msg.t === 'snap' && msg.snap > rec.snapshotVersion && !duplicate) {
      this.stats.work.snapshotsApplied++
      this.missing.delete(from)
      const next = this.table.patch(from, { snapshot: msg.data as S, snapshotVersion: msg.snap, snapshotAt: now })
      if (next != null) this.table.emit('peer:snapshot', next)
    }
    if (msg.t === 'hb') {
      // A heartbeat names the sender's snapshot version: one this node lacks is asked for (`want`).
      const current = this.table.get(from)
      if (current != null && msg.snap > current.snapshotVersion && !duplicate) {
        if (!this.missing.has(from)) this.missing.set(from, { since: now, askedAt: 0 })
      } else {
        this.missing.delete(from)
      }
      if (msg.want?.includes(this.peerId) === true) {
        this.stats.work.wantsAnswered++
        this.scheduleSnapshot(20)
      }
    }
    if (wasNew) {
      this.emit('peer:addresses', rec)
      // A peer we just met lacks our snapshot: one that pulls takes it on identify; others are sent it.
      if (this.pulls.get(from) === false) this.scheduleSnapshot(20)
    }
  }

  private tick (): void {
    const now = Date.now()
    // A duplicate stays marked while both its connections stay open.
    const seen = new Set<string>()
    for (const c of this.host?.getConnections() ?? []) {
      const id = c.remotePeer.toString()
      if (!seen.has(id)) { seen.add(id); this.checkConnections(c.remotePeer, now) }
    }
    const dups = this.duplicateList().map(d => d.peer)
    if (dups.join() !== this.lastDuplicates.join()) {
      this.lastDuplicates = dups
      this.emit('duplicates:changed', dups)
    }
    const timings = { suspectAfterMs: this.opts.suspectAfterMs, deadAfterMs: this.opts.deadAfterMs }
    const ttl = this.opts.deadPeerTtlMs ?? DEAD_PEER_TTL_MS
    for (const rec of this.table.list()) {
      if (shouldEvict(rec, now, ttl)) {
        this.evict(rec.id)
        continue
      }
      if (rec.lastSeen === 0) continue
      if (this.swim != null) {
        // With SWIM a quiet peer publishes nothing: its silence says nothing, its probes decide. But
        // a node that hears from no member at all (no ack to its probes, no probe, no gossip) while
        // its own frames fail to reach every member it holds live, two or more (a peer that died
        // fails alone; members that stopped fail while a live one still answers), is the one cut
        // off, and Lifeguard slows its probes down to 8× there: N × 4 s to see the others gone.
        // Its table then follows the flood rules, counted from when it last heard anyone. Silence
        // alone is no sign: a slow prober in a quiet mesh may hear nobody for seconds.
        const r = this.swim.reachability()
        if (now - this.lastHeardAt > timings.suspectAfterMs && r.unreached >= Math.min(2, this.table.list().length) && r.unreached === r.live) {
          const res = onSilence(rec, now - Math.max(rec.lastSeen, this.lastHeardAt), now, timings)
          if (res.changed) this.table.apply(rec, res)
        }
        continue
      }
      const res = onTick(rec, now, timings)
      if (res.changed) this.table.apply(rec, res)
    }
    this.gate.sweep(now)
    this.pullMissing(now)
  }

  /** Snapshots advertised (heartbeat or SWIM frame) and missing for a moment are pulled from their owners. */
  private pullMissing (now: number): void {
    if (this.snapshots == null) return
    for (const [id, m] of this.missing) {
      if (now - m.since < PULL_AFTER_MS || now - m.askedAt < 2 * this.opts.heartbeatMs || this.pulls.get(id) !== true) continue
      if (this.table.get(id)?.connected !== true || this.snapshots.pending(id) || this.duplicateIdentity(id) != null) continue
      m.askedAt = now
      this.snapshots.want(id)
    }
  }

  /** The next periodic member exchange, scaled with the mesh (memberlist's push-pull scale). */
  private scheduleExchange (): void {
    if (this.stopping) return
    clearTimeout(this.exchangeTimer)
    // Jittered, so nodes started together do not exchange in step.
    const ms = Math.round(nextExchangeMs(Date.now(), this.exchangeFastUntil, this.connectedIds.size + 1) * (0.75 + Math.random() / 2))
    this.exchangeTimer = setTimeout(() => {
      const peers = [...this.listsMembers].filter(id => this.connectedIds.has(id))
      if (peers.length > 0) void this.members?.exchange(peers[Math.floor(Math.random() * peers.length)])
      this.scheduleExchange()
    }, ms)
    this.exchangeTimer.unref()
  }

  /** What this node vouches for in a member exchange: itself and the members it is connected to. */
  private memberList (): MemberEntry[] {
    const out: MemberEntry[] = [[this.peerId, this.dialableAddresses()]]
    for (const rec of this.table.list()) {
      if (!this.connectedIds.has(rec.id) || (rec.status !== 'alive' && rec.status !== 'suspect')) continue
      if (this.opts.trust != null && !this.opts.trust.isMember(rec.id)) continue
      const addrs = reachableAddresses(rec.addresses)
      if (addrs.length > 0) out.push([rec.id, addrs])
    }
    return out
  }

  /**
   * A member's list: members this node is not connected to are dial hints (bounded, rate-limited
   * and dropped after failed dials by the redialer; a connection is what verifies them).
   */
  private onMemberList (from: string, entries: MemberEntry[]): void {
    if (this.redialer == null || this.stopping) return
    let hinted = 0
    let learned = 0
    for (const [id, addrs] of entries) {
      if (hinted >= MAX_HINTS_PER_EXCHANGE) break
      if (id === this.peerId || id === from || this.connectedIds.has(id)) continue
      if (this.opts.trust != null && !this.opts.trust.allows(id)) continue
      if (this.table.get(id)?.status === 'left') continue
      const known = this.redialer.has(id)
      if (this.redialer.addHint(id, addrs)) {
        hinted++
        if (!known) learned++
        this.redialer.dialSoon(id)
      }
    }
    // A member this node lacked (not even a dial target): its view is still incomplete, so the
    // next exchanges come fast, with random members, until lists stop teaching it anything.
    if (learned > 0) {
      const now = Date.now()
      const wasFast = now < this.exchangeFastUntil
      this.exchangeFastUntil = now + MEMBER_EXCHANGE_FAST_WINDOW_MS
      // Entering fast mode: the pending exchange is a scaled period away, so it is brought forward.
      if (!wasFast && this.exchangeTimer != null) this.scheduleExchange()
    }
  }

  /** Forgets a peer gone for longer than the TTL: its record and snapshot; a gossip-only redial target too. */
  private evict (id: string): void {
    this.table.delete(id)
    this.missing.delete(id)
    this.pulls.delete(id)
    this.listsMembers.delete(id)
    this.redialer?.forget(id, DEAD_PEER_REDIAL_MS)
    this.stats.work.evicted++
  }

  /** What an unverified peer's message may do: name addresses to dial (bounded, rate-limited). */
  private hint (from: string, msg: MembershipMessage): void {
    if (this.redialer == null || this.stopping) return
    if (msg.t === 'snap') {
      // If our dial fails (a seed swamped with handshakes), the newcomer still hears of us: its
      // member exchanges name us (this used to publish our snapshot to everyone for it).
      if (this.redialer.addHint(from, msg.addrs)) this.redialer.dialSoon(from)
    } else if (msg.t === 'hb' && this.redialer.has(from)) {
      this.redialer.dialSoon(from)
    }
  }

  private onConnect (peer: PeerId): void {
    const id = peer.toString()
    const now = Date.now()
    const rec = this.table.ensure(id, now)
    const addrs = this.libp2p.getConnections(peer).map(c => c.remoteAddr.toString())
    this.table.patch(id, { connected: true, addresses: rec.addresses.length > 0 ? rec.addresses : addrs })
    void this.probeOne(peer)
    if (this.opts.trust == null || this.opts.trust.isMember(id)) {
      this.swim?.add(id)
      // A connection from a member SWIM holds dead (a healed partition whose connections had
      // closed, a restart) is a sign of life: tell it, so it refutes now rather than on the next poke.
      this.swim?.poke(id)
    }
  }

  /** SWIM's counters and its view of `id` (for tests and metrics); undefined without SWIM. */
  swimStats (): SwimDriverStats | undefined {
    return this.swim?.stats
  }

  /** SWIM's local health (Lifeguard awareness, smoothed round trip of acks); undefined without SWIM. */
  swimHealth (): SwimHealth | undefined {
    return this.swim?.health()
  }

  swimView (id: string): { inc: number, status: SwimStatus } | undefined {
    return this.swim?.member(id)
  }

  /** For tests: SWIM goes silent as a frozen process would (`resume` wakes it); see SwimDriver.pause. */
  swimPause (paused: boolean): void {
    if (paused) this.swim?.pause()
    else this.swim?.resume()
  }

  private async startSwim (host: Host): Promise<void> {
    const o = this.opts
    const isMember = (id: string): boolean => o.trust == null || o.trust.isMember(id)
    this.swim = await startMeshSwim(host, o, {
      table: this.table,
      missing: this.missing,
      incarnation: this.incarnation,
      snapshotVersion: () => o.snapshotVersion(),
      meta: () => this.meta(),
      verified: id => this.gate.verified(id) && isMember(id),
      checkIdentity: (from, boot, now) => this.checkIdentity(from, boot, now),
      heard: now => { this.lastHeardAt = now },
      stopping: () => this.stopping,
      onLead: (from, lead) => { this.emit('peer:lead', from, lead) },
      onViolation: (peer, reason) => { this.emit('wire:violation', peer, SWIM_PROTOCOL, reason) }
    })
    for (const peer of host.getPeers()) {
      if (isMember(peer.toString())) this.swim.add(peer.toString())
    }
  }

  /** This node's load and leadership views, as heartbeats, snapshots and SWIM frames carry them. */
  private meta (): { load?: [number, number], lead?: ReturnType<NonNullable<MeshOptions<S>['leadership']>> } {
    return {
      ...(this.opts.load != null ? { load: loadTuple(this.opts.load()) } : {}),
      ...(this.opts.leadership != null ? { lead: this.opts.leadership() } : {})
    }
  }

  private onDisconnect (peer: PeerId): void {
    if (this.stopping) return
    const id = peer.toString()
    this.gate.forgetSource(id)
    const rec = this.table.get(id)
    if (rec == null) return
    if (rec.lastSeen === 0) {
      // Never heard from (a pending peer, or one that left before its first heartbeat): nothing of
      // it is worth keeping, and a peer cycling fresh ids must not grow this table for ever.
      this.table.delete(id)
      this.redialer?.dialNow(id)
      return
    }
    this.table.apply(rec, onDisconnected(rec, Date.now()))
    // A crashed process leaves a closed port: one immediate redial tells crash from hiccup.
    if (rec.status !== 'left') this.redialer?.dialNow(id)
  }

  private refused (id: string): void {
    const rec = this.table.get(id)
    if (rec == null || rec.lastSeen === 0) return
    if (this.connectedIds.has(id)) return
    this.table.apply(rec, onRefused({ ...rec, connected: false }, Date.now()))
  }

  private async probeOne (peer: PeerId): Promise<void> {
    try {
      const rtt = await this.libp2p.services.ping.ping(peer, { signal: AbortSignal.timeout(2000) })
      this.table.patch(peer.toString(), { rttMs: Math.round(rtt * 100) / 100 })
    } catch (err) {
      this.log.debug('ping failed', { peer: peer.toString(), err })
    }
  }

  private async probeRtt (): Promise<void> {
    if (this.host == null) return
    const peers = this.host.getPeers()
    await Promise.all(peers.map(async p => { await this.probeOne(p) }))
  }

  /** Dial a multiaddr now (used by tests and by `POST /api/peers/dial`-like tooling). */
  async dial (addr: string | Multiaddr): Promise<void> {
    await this.libp2p.dial(typeof addr === 'string' ? multiaddr(addr) : addr, { signal: AbortSignal.timeout(5000) })
  }
}
