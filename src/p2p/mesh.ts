import { EventEmitter } from 'node:events'
import { multiaddr, type Multiaddr } from '@multiformats/multiaddr'
import { peerIdFromString } from '@libp2p/peer-id'
import type { PeerId, PrivateKey } from '@libp2p/interface'
import { createLogger, type Logger } from '../logger.js'
import { MEMBERSHIP_TOPIC, MEMBERSHIP_VERSION } from './constants.js'
import { createHost, type Host } from './host.js'
import type { LanDiscoveryStats } from './lan-discovery.js'
import { DelayHistogram } from './delay-histogram.js'
import { decodeMembership, encodeMembership, type DropReason, type MembershipMessage } from './messages.js'
import { PeerTable, onDisconnected, onHeard, onLeave, onRefused, onTick, type PeerRecord, type PeerTableEvents } from './membership.js'
import { Redialer } from './redialer.js'
import { InferenceService } from './inference.js'
import { CommandService } from './command-protocol.js'
import { BlobService } from './blob-protocol.js'
import { reachableAddresses } from './addresses.js'
import { TokenBuckets } from './token-buckets.js'
import { TopicValidatorResult } from '@libp2p/gossipsub'
import type { TrustPolicy } from './trust.js'
import { ConnectionListenAddrs, DuplicateIdentityDetector, type DuplicateIdentity, type Observation } from './duplicate-identity.js'

export interface MeshOptions<S> {
  privateKey: PrivateKey
  name: string
  groups: string[]
  listen: string[]
  bootstrap: string[]
  mdns: boolean
  mdnsIntervalMs: number
  /** Longest mDNS query interval once connected to a peer. */
  mdnsMaxIntervalMs?: number
  heartbeatMs: number
  suspectAfterMs: number
  deadAfterMs: number
  snapshotIntervalMs: number
  pingIntervalMs: number
  redialMinMs: number
  redialMaxMs: number
  /** Idle time of a pooled inference stream (the requester's side; a host waits twice as long). */
  relayStreamIdleMs?: number
  /** Private swarm key (v1 PSK file content); without it the mesh is open to the LAN. */
  swarmKey?: Uint8Array
  /** Who may talk to this node. */
  trust?: TrustPolicy
  /** Peers remembered from an earlier run: dialed at start. */
  knownPeers?: Array<{ id: string, addresses: string[] }>
  /** Version of this node's snapshot; grows on every change (cheap: read every heartbeat). */
  snapshotVersion: () => number
  /** Content of this node's snapshot (built only when a snapshot is published). */
  snapshotData: () => S
  /** This node's view of its groups' leadership, sent with every heartbeat. */
  leadership?: () => Array<[group: string, term: number, leader: string]>
  /** Requests running and waiting here, sent with every heartbeat. */
  load?: () => { active: number, queued: number }
  /** Validates a peer's snapshot content (the owner's schema); false drops the message. */
  validateSnapshot: (data: unknown) => data is S
}

export interface MeshStats {
  gossipBytesSent: number
  gossipBytesReceived: number
  messagesSent: number
  messagesReceived: number
  dropped: Record<DropReason | 'stale' | 'invalid_snapshot' | 'untrusted' | 'rate_limited', number>
  /** mDNS queries sent, and peers its answers named: passed on to libp2p, or dropped as connected already. */
  mdns: LanDiscoveryStats
  /**
   * Heartbeat delivery delays: receiver's clock minus the sender's at publish, ms. Exact on one
   * machine (the namespace LAN); across machines it includes their clock offset.
   */
  heartbeatDelay: DelayHistogram
}

export interface MeshEvents<S> extends PeerTableEvents<S> {
  'peer:addresses': [PeerRecord<S>]
  /** A peer's view of its groups' leadership (from its heartbeat). */
  'peer:lead': [peer: string, lead: Array<[group: string, term: number, leader: string]>]
  /** The set of duplicate peer ids (see duplicate-identity.ts) changed: one was detected or cleared. */
  'duplicates:changed': [ids: string[]]
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
    dropped: { oversized: 0, malformed_json: 0, invalid_schema: 0, unsupported_version: 0, stale: 0, invalid_snapshot: 0, untrusted: 0, rate_limited: 0 },
    mdns: { queries: 0, announced: 0, suppressed: 0 },
    heartbeatDelay: new DelayHistogram()
  }

  /** Decode results of validated messages, keyed by their payload, consumed by the handler. */
  private readonly decoded = new WeakMap<Uint8Array, ReturnType<typeof decodeMembership>>()
  /** Membership messages per origin: a heartbeat a second plus snapshots fits well inside. */
  private readonly floodGuard = new TokenBuckets(20, 40)

  private host?: Host
  private readonly log: Logger
  private readonly incarnation = Date.now()
  private seq = 0
  private readonly timers: NodeJS.Timeout[] = []
  private snapshotDebounce?: NodeJS.Timeout
  private redialer?: Redialer
  private stopping = false

  constructor (private readonly opts: MeshOptions<S>) {
    super()
    this.log = createLogger('p2p:mesh')
    // Re-emit table events so consumers subscribe to the mesh alone.
    for (const ev of ['peer:joined', 'peer:alive', 'peer:suspect', 'peer:dead', 'peer:left', 'peer:snapshot'] as const) {
      this.table.on(ev, (rec: PeerRecord<S>) => {
        this.log.info(ev, { peer: rec.id, name: rec.name })
        this.emit(ev, rec)
      })
    }
    // A peer declared dead by silence may still have a half-open connection (link gone): close it,
    // so streams to it (inference relays, commands) fail now instead of waiting for TCP timeouts.
    this.table.on('peer:dead', rec => {
      if (this.host != null && !this.stopping) void this.host.hangUp(peerIdFromString(rec.id)).catch(() => {})
    })
  }

  private inferenceService?: InferenceService
  private commandService?: CommandService
  private blobService?: BlobService

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

  /** `/shepherd/openai/1.1.0`: serve peers' inference requests and send ours. */
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
    const host = this.host = await createHost({ privateKey: o.privateKey, listen: o.listen, mdns: o.mdns, mdnsIntervalMs: o.mdnsIntervalMs, mdnsMaxIntervalMs: o.mdnsMaxIntervalMs, mdnsStats: this.stats.mdns, swarmKey: o.swarmKey, trust: o.trust })
    // A revoked peer is cut off at once; its record stays (shown as denied) and goes dead.
    o.trust?.on('revoked', peer => {
      // A malformed id must not throw here (the change is made already): it has no connection to close.
      if (peer !== host.peerId.toString()) void Promise.resolve().then(async () => { await host.hangUp(peerIdFromString(peer)) }).catch(() => {})
    })
    // A new member lacks our snapshot (we ignored each other until now). Gossipsub publishes to it
    // once its score is recomputed (within a gossip heartbeat, 700 ms): send again after that.
    o.trust?.on('member', () => {
      this.heartbeat()
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
      if (!this.floodGuard.take(from)) {
        this.stats.dropped.rate_limited++
        return TopicValidatorResult.Ignore
      }
      const decoded = decodeMembership(msg.data)
      this.decoded.set(msg.data, decoded)
      if (decoded.ok) return TopicValidatorResult.Accept
      this.stats.dropped[decoded.reason]++
      return decoded.reason === 'unsupported_version' ? TopicValidatorResult.Ignore : TopicValidatorResult.Reject
    })
    pubsub.addEventListener('message', evt => {
      const msg = evt.detail
      if (msg.topic !== MEMBERSHIP_TOPIC || msg.type !== 'signed') return
      this.onMessage(msg.from.toString(), msg.data)
    })
    // A peer that (re)subscribes is new to us or restarted: greet it with a heartbeat and our snapshot.
    pubsub.addEventListener('subscription-change', evt => {
      if (evt.detail.subscriptions.some(s => s.topic === MEMBERSHIP_TOPIC && s.subscribe)) {
        this.scheduleSnapshot(20)
      }
    })

    host.addEventListener('peer:discovery', evt => {
      const { id, multiaddrs } = evt.detail
      if (id.equals(host.peerId)) return
      this.redialer?.addPeer(id.toString(), multiaddrs.map(m => m.toString()))
      if (host.getConnections(id).length === 0) this.redialer?.dialNow(id.toString())
    })
    host.addEventListener('peer:connect', evt => { this.onConnect(evt.detail) })
    host.addEventListener('peer:disconnect', evt => { this.onDisconnect(evt.detail) })
    host.addEventListener('connection:close', evt => { this.connectionAddrs.closed(evt.detail.id) })
    host.addEventListener('peer:identify', evt => {
      const id = evt.detail.peerId.toString()
      this.connectionAddrs.identified(id, evt.detail.connection.id, evt.detail.listenAddrs.map(a => a.toString()))
      this.checkConnections(evt.detail.peerId, Date.now())
      const addrs = reachableAddresses(evt.detail.listenAddrs.map(a => a.toString()))
      const rec = this.table.get(id)
      if (rec != null && addrs.length > 0) {
        const next = this.table.patch(id, { addresses: addrs })
        if (next != null && next.lastSeen > 0) this.emit('peer:addresses', next)
      }
      this.redialer?.addPeer(id, addrs)
    })

    this.redialer = new Redialer(host, {
      minMs: o.redialMinMs,
      maxMs: o.redialMaxMs,
      onRefused: id => { this.refused(id) },
      isWanted: id => {
        const rec = this.table.get(id)
        // Every peer not connected is dialed (the LAN mesh is a full mesh) except one that said goodbye.
        return (rec == null || rec.status !== 'left') && (o.trust == null || o.trust.allows(id))
      }
    })
    for (const kp of o.knownPeers ?? []) {
      if (kp.id !== host.peerId.toString()) this.redialer.addPeer(kp.id, kp.addresses)
    }
    for (const addr of o.bootstrap) this.redialer.addBootstrap(addr)
    this.redialer.start()

    const tickMs = Math.max(50, Math.min(250, Math.floor(o.heartbeatMs / 4)))
    this.timers.push(setInterval(() => { this.heartbeat() }, o.heartbeatMs))
    this.timers.push(setInterval(() => { this.tick() }, tickMs))
    this.timers.push(setInterval(() => { this.scheduleSnapshot(0) }, o.snapshotIntervalMs))
    this.timers.push(setInterval(() => { void this.probeRtt() }, o.pingIntervalMs))
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
    await this.inferenceService?.stop()
    await this.commandService?.stop()
    await this.blobService?.stop()
    if (opts.announce !== false) {
      await this.publish({ v: MEMBERSHIP_VERSION, t: 'leave', inc: this.incarnation, seq: ++this.seq, at: Date.now() })
      // Give the frame a moment to leave the socket before the connections close.
      await new Promise(resolve => setTimeout(resolve, 50))
    }
    await this.host.stop()
  }

  /** Publishes the current snapshot soon; calls within the delay are merged into one. */
  scheduleSnapshot (delayMs = 50): void {
    if (this.snapshotDebounce != null || this.stopping) return
    this.snapshotDebounce = setTimeout(() => {
      this.snapshotDebounce = undefined
      this.publishSnapshot()
    }, delayMs)
    this.snapshotDebounce.unref()
  }

  private publishSnapshot (): void {
    if (this.host == null || this.stopping) return
    void this.publish({
      v: MEMBERSHIP_VERSION, t: 'snap', inc: this.incarnation, seq: ++this.seq, at: Date.now(),
      name: this.opts.name, groups: this.opts.groups, snap: this.opts.snapshotVersion(), addrs: this.dialableAddresses(), data: this.opts.snapshotData() as Record<string, unknown>
    })
  }

  private heartbeat (): void {
    if (this.host == null || this.stopping) return
    void this.publish({
      v: MEMBERSHIP_VERSION, t: 'hb', inc: this.incarnation, seq: ++this.seq, at: Date.now(),
      name: this.opts.name, groups: this.opts.groups, snap: this.opts.snapshotVersion(),
      ...(this.opts.load != null ? { load: loadTuple(this.opts.load()) } : {}),
      ...(this.opts.leadership != null ? { lead: this.opts.leadership() } : {})
    })
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
    const duplicate = this.checkIdentity(from, msg.inc, now)
    const prev = this.table.ensure(from, now)
    if (msg.t === 'leave') {
      const res = onLeave(prev, { incarnation: msg.inc, seq: msg.seq }, now)
      if (!res.accepted) this.stats.dropped.stale++
      this.table.apply(prev, res)
      return
    }
    if (msg.t === 'snap' && !this.opts.validateSnapshot(msg.data)) {
      this.stats.dropped.invalid_snapshot++
      return
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
    res.record.connected = this.host != null && this.host.getConnections(peerIdFromString(from)).length > 0
    if (msg.t === 'hb') this.stats.heartbeatDelay.push(now - msg.at)
    if (msg.t === 'hb' && msg.load != null) res.record.load = { active: msg.load[0], queued: msg.load[1], at: now }
    const rec = this.table.apply(prev, res)
    if (msg.t === 'hb' && msg.lead != null && msg.lead.length > 0) this.emit('peer:lead', from, msg.lead)
    // The LAN mesh is a full mesh: a peer known only through gossip is dialed directly, so its
    // crash is seen by every node (connection refused), not only by those it happened to dial.
    if (!rec.connected) {
      if (msg.t === 'snap') this.redialer?.addPeer(from, msg.addrs)
      this.redialer?.dialSoon(from)
    }
    if (msg.t === 'snap' && msg.snap > rec.snapshotVersion && !duplicate) {
      const next = this.table.patch(from, { snapshot: msg.data as S, snapshotVersion: msg.snap, snapshotAt: now })
      if (next != null) this.table.emit('peer:snapshot', next)
    }
    if (wasNew) {
      this.emit('peer:addresses', rec)
      // A peer we just met lacks our snapshot.
      this.scheduleSnapshot(20)
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
    for (const rec of this.table.list()) {
      if (rec.lastSeen === 0) continue
      const res = onTick(rec, now, timings)
      if (res.changed) this.table.apply(rec, res)
    }
  }

  private onConnect (peer: PeerId): void {
    const id = peer.toString()
    const now = Date.now()
    const rec = this.table.ensure(id, now)
    const addrs = this.libp2p.getConnections(peer).map(c => c.remoteAddr.toString())
    this.table.patch(id, { connected: true, addresses: rec.addresses.length > 0 ? rec.addresses : addrs })
    void this.probeOne(peer)
  }

  private onDisconnect (peer: PeerId): void {
    if (this.stopping) return
    const id = peer.toString()
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
    if (this.host != null && this.host.getConnections(peerIdFromString(id)).length > 0) return
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
