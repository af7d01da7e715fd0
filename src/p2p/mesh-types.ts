/** The mesh's options, counters and events (its public face besides the `Mesh` class). */
import type { PrivateKey } from '@libp2p/interface'
import type { LanDiscoveryStats } from './lan-discovery.js'
import type { DelayHistogram } from './delay-histogram.js'
import type { DropReason } from './messages.js'
import type { PeerRecord, PeerTableEvents } from './membership.js'
import type { TrustPolicy } from './trust.js'
import type { MeshSwimTimings } from './mesh-swim.js'

export interface MeshOptions<S> extends MeshSwimTimings {
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
  /** A peer dead or gone this long is forgotten: its record, snapshot and (gossip-only) redial target. */
  deadPeerTtlMs?: number
  /**
   * `swim`: liveness from SWIM probes (`/shepherd/swim/1.0.0`), heartbeats published only when
   * what they carry changed; `flood` (absent): every heartbeat to everyone every `heartbeatMs`.
   */
  membership?: 'swim' | 'flood'
  /** Open connections kept at most; the redialer stops filling a full mesh at 3/4 of it (absent: 256). */
  maxConnections?: number
}

export interface MeshStats {
  gossipBytesSent: number
  gossipBytesReceived: number
  messagesSent: number
  messagesReceived: number
  /**
   * Messages dropped, by reason. `unverified`: from a peer this node neither is connected to nor
   * finds in its ledger, beyond what one relaying connection may name; `state_rate`: snapshot
   * bytes over the sender's budget.
   */
  dropped: Record<DropReason | 'stale' | 'invalid_snapshot' | 'untrusted' | 'rate_limited' | 'unverified' | 'state_rate', number>
  /** Work done on peers' state, counted (not timed) so tests bound it: snapshots validated and taken, peers evicted. */
  work: { snapshotsValidated: number, snapshotsApplied: number, snapshotsPublished: number, snapshotsPulled: number, pullsServed: number, evicted: number, wantsSent: number, wantsAnswered: number }
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
  /** A member broke a protocol of this layer (`/shepherd/swim/1.0.0`); its stream was reset. Audited by the node. */
  'wire:violation': [peer: string, protocol: string, reason: string]
}
