import { TokenBuckets } from './token-buckets.js'
import type { TrustPolicy } from './trust.js'
import { MAX_UNVERIFIED_PER_SOURCE, STATE_BYTES_BURST, STATE_BYTES_FREE, STATE_BYTES_PER_SEC, UNVERIFIED_WINDOW_MS } from './membership-limits.js'

/** What the gate needs of the node: its id, its connections and its trust policy. */
export interface GossipGateDeps {
  selfId: () => string
  /** Whether this node holds an open connection to `id`. */
  connected: (id: string) => boolean
  trust?: TrustPolicy
}

export type GateVerdict =
  | { ok: true, verified: boolean }
  | { ok: false, reason: 'rate_limited' | 'unverified' | 'state_rate' }

/**
 * The membership topic's admission, before a message is parsed (issue 14, bounded state): the
 * origin's message rate, whether this node can verify the origin itself, how many unverified
 * origins one relaying connection may name, and the origin's snapshot byte budget.
 */
export class GossipGate {
  /** Membership messages per origin: a heartbeat a second plus snapshots fits well inside. */
  private readonly floodGuard = new TokenBuckets(20, 40)
  /** Snapshot bytes per origin (see membership-limits.ts). */
  private readonly stateBytes = new TokenBuckets(STATE_BYTES_PER_SEC, STATE_BYTES_BURST)
  /** Per relaying peer: the unverified origins it named recently, and when. */
  private readonly unverified = new Map<string, Map<string, number>>()

  constructor (private readonly deps: GossipGateDeps) {}

  /** Checks one message of `bytes` from `from`, delivered by `source`. */
  check (source: string, from: string, bytes: number, now: number): GateVerdict {
    if (!this.floodGuard.take(from)) return { ok: false, reason: 'rate_limited' }
    const verified = this.verified(from)
    if (!verified && !this.noteUnverified(source, from, now)) return { ok: false, reason: 'unverified' }
    if (bytes > STATE_BYTES_FREE && !this.stateBytes.take(from, bytes)) return { ok: false, reason: 'state_rate' }
    return { ok: true, verified }
  }

  /**
   * Whether this node can vouch for `id` itself: its own id, a peer it is connected to, or one its
   * ledger (or allow list) names. Only these enter the peer table.
   */
  verified (id: string): boolean {
    if (id === this.deps.selfId()) return true
    try {
      if (this.deps.connected(id)) return true
    } catch {
      return false
    }
    const trust = this.deps.trust
    if (trust == null) return false
    if (trust.ledger?.members.has(id) === true) return trust.isMember(id)
    return trust.mode === 'admission' ? trust.isMember(id) : trust.isMember(id) && trust.lists().allow.includes(id)
  }

  /** The connection to `source` closed: what it named is forgotten. */
  forgetSource (source: string): void {
    this.unverified.delete(source)
  }

  /** Drops what is older than the window (called on the membership tick). */
  sweep (now: number): void {
    for (const [source, origins] of this.unverified) {
      for (const [id, at] of origins) if (now - at > UNVERIFIED_WINDOW_MS) origins.delete(id)
      if (origins.size === 0) this.unverified.delete(source)
    }
  }

  /**
   * Counts an unverified origin against the connection that relayed it; false once that
   * connection named `MAX_UNVERIFIED_PER_SOURCE` others within the window.
   */
  private noteUnverified (source: string, origin: string, now: number): boolean {
    let origins = this.unverified.get(source)
    if (origins == null) this.unverified.set(source, origins = new Map())
    if (!origins.has(origin)) {
      for (const [id, at] of origins) if (now - at > UNVERIFIED_WINDOW_MS) origins.delete(id)
      if (origins.size >= MAX_UNVERIFIED_PER_SOURCE) return false
    }
    origins.set(origin, now)
    return true
  }
}
