/**
 * Duplicate peer ids (issue 11 item 5). A copied data dir carries the node's key: two processes
 * then run as one peer id, each with its own incarnation (its start time). Peers took the newer
 * one's heartbeats and dropped the older one's as stale, merged whichever snapshot came last,
 * and routed to the id: 10 of 10 chats for the original's model failed, and nothing said why.
 *
 * The evidence, pure and clock-driven (tests use a fake clock), of three kinds:
 * - `incarnations`: two incarnations of one id both heard, the older one still heard more than
 *   `graceMs` after the newer one first was. A restart never does that (the old process is gone;
 *   at most a relayed message of it arrives within the grace). A node hearing its own id with an
 *   incarnation not its own is the same case.
 * - `connections`: two open connections of one id whose processes listen on disjoint addresses
 *   (libp2p identify, per connection). In practice the commonest: gossipsub keeps one stream per
 *   peer id, so the second process's gossip mostly never arrives, yet its connection does.
 * - `reported`: a member reports this node's own id as duplicate (it saw the two connections;
 *   this node cannot, it never connects to itself).
 * The mark lasts while evidence keeps coming, and `clearAfterMs` after it stops (one stopped).
 */

export interface DuplicateIdentityOptions {
  /** How long after a newer incarnation appears an older one may still be heard (relayed gossip in flight). */
  graceMs: number
  /**
   * Both incarnations must have been heard within this window for their overlap to count: once
   * one process stops, the other alone is no evidence (else the mark outlived the copy by
   * `clearAfterMs` twice: the stopped incarnation is forgotten only that long after its last word).
   */
  liveMs: number
  /** The mark (and what is known of an incarnation) lasts this long after the last evidence. */
  clearAfterMs: number
  /** A duplicate is named in the logs at most once per this period. */
  warnEveryMs: number
}

export const DUPLICATE_IDENTITY_DEFAULTS: DuplicateIdentityOptions = {
  // Gossip reaches every node in well under a second on a LAN (heartbeat delay p99 < 50 ms).
  graceMs: 3000,
  // Each process sends SWIM frames or gossip to a member every few seconds; the connection
  // evidence covers a pair that talks less often.
  liveMs: 10_000,
  clearAfterMs: 30_000,
  warnEveryMs: 60_000
}

/** A peer id two processes run as, as the API shows it. */
export interface DuplicateIdentity {
  peer: string
  /** The incarnations (start times, ms) heard recently, oldest first. */
  incarnations: number[]
  /** `self`: this node's own id is used by another process. */
  self: boolean
  /** What showed it (see the module comment). */
  evidence: Array<'incarnations' | 'connections' | 'reported'>
  /** For `reported`: the members that reported it. */
  reportedBy: string[]
  /** When the duplicate was first detected, and last confirmed (ms since the epoch). */
  since: number
  lastEvidenceAt: number
}

/** What one observation led to: `detected` the first time, `warn` when it is time to log it again. */
export interface Observation { duplicate: boolean, detected: boolean, warn: boolean }

interface Heard { first: number, last: number }
type Evidence = DuplicateIdentity['evidence'][number]
interface PeerState {
  incs: Map<number, Heard>
  dup?: { since: number, lastEvidenceAt: number, lastWarnAt: number, evidence: Map<Evidence, number>, reportedBy: Map<string, number> }
}

/** Incarnations remembered per id: two processes need two; a few more absorb restarts. */
const MAX_INCARNATIONS = 4
/** Ids tracked at once: those heard least recently are forgotten first. */
const MAX_PEERS = 4096

export class DuplicateIdentityDetector {
  private readonly o: DuplicateIdentityOptions
  private readonly peers = new Map<string, PeerState>()

  /**
   * @param selfId this node's peer id
   * @param selfIncarnation this process's incarnation
   * @param startedAt when this process started (its own incarnation counts as heard since then)
   */
  constructor (private readonly selfId: string, private readonly selfIncarnation: number, startedAt: number, opts: Partial<DuplicateIdentityOptions> = {}) {
    this.o = { ...DUPLICATE_IDENTITY_DEFAULTS, ...opts }
    this.peers.set(selfId, { incs: new Map([[selfIncarnation, { first: startedAt, last: startedAt }]]) })
  }

  /** A membership message of `peer` with incarnation `inc` arrived at `now`. */
  heard (peer: string, inc: number, now: number): Observation {
    const st = this.state(peer)
    if (peer === this.selfId) {
      // This process is alive: its own incarnation is heard right now, always.
      const own = st.incs.get(this.selfIncarnation)
      if (own != null) own.last = now
    }
    const e = st.incs.get(inc)
    if (e != null) e.last = Math.max(e.last, now)
    else st.incs.set(inc, { first: now, last: now })
    this.prune(st, now)
    if (!this.evidence(st, now)) return { duplicate: this.get(peer, now) != null, detected: false, warn: false }
    return this.mark(peer, st, 'incarnations', now)
  }

  /** Two open connections of `peer` lead to processes that listen on disjoint addresses. */
  conflictingConnections (peer: string, now: number): Observation {
    return this.mark(peer, this.state(peer), 'connections', now)
  }

  /** Member `by` reports this node's own id as duplicate. */
  reportedBy (by: string, now: number): Observation {
    const st = this.state(this.selfId)
    const o = this.mark(this.selfId, st, 'reported', now)
    st.dup!.reportedBy.set(by, now)
    return o
  }

  private state (peer: string): PeerState {
    let st = this.peers.get(peer)
    if (st == null) {
      if (this.peers.size >= MAX_PEERS) this.forgetOldest()
      st = { incs: new Map() }
      this.peers.set(peer, st)
    }
    return st
  }

  private mark (peer: string, st: PeerState, kind: Evidence, now: number): Observation {
    // Evidence that stopped long ago marks anew.
    if (st.dup != null && now - st.dup.lastEvidenceAt > this.o.clearAfterMs) delete st.dup
    const detected = st.dup == null
    st.dup ??= { since: now, lastEvidenceAt: now, lastWarnAt: -Infinity, evidence: new Map(), reportedBy: new Map() }
    st.dup.lastEvidenceAt = now
    st.dup.evidence.set(kind, now)
    const warn = now - st.dup.lastWarnAt >= this.o.warnEveryMs
    if (warn) st.dup.lastWarnAt = now
    return { duplicate: true, detected, warn }
  }

  /** A message carrying this node's own id arrived (gossip relayed back to it). */
  heardSelf (inc: number, now: number): Observation {
    return this.heard(this.selfId, inc, now)
  }

  /** The duplicate mark of `peer`, or undefined: none, or its evidence stopped `clearAfterMs` ago. */
  get (peer: string, now: number): DuplicateIdentity | undefined {
    const st = this.peers.get(peer)
    if (st?.dup == null) return undefined
    if (now - st.dup.lastEvidenceAt > this.o.clearAfterMs) {
      delete st.dup
      return undefined
    }
    return {
      peer,
      incarnations: [...st.incs.keys()].sort((a, b) => a - b),
      self: peer === this.selfId,
      evidence: [...st.dup.evidence.keys()].sort(),
      reportedBy: [...st.dup.reportedBy.keys()].sort(),
      since: st.dup.since,
      lastEvidenceAt: st.dup.lastEvidenceAt
    }
  }

  /** This node's own id, when another process uses it. */
  self (now: number): DuplicateIdentity | undefined {
    return this.get(this.selfId, now)
  }

  /** Every id marked now. */
  list (now: number): DuplicateIdentity[] {
    return [...this.peers.keys()].map(p => this.get(p, now)).filter((d): d is DuplicateIdentity => d != null)
  }

  /**
   * Two incarnations both heard lately, the older one still heard past the grace after the newer
   * appeared.
   */
  private evidence (st: PeerState, now: number): boolean {
    const incs = [...st.incs.entries()].filter(([, h]) => now - h.last <= this.o.liveMs).sort((a, b) => a[0] - b[0])
    for (let i = 0; i < incs.length; i++) {
      for (let j = i + 1; j < incs.length; j++) {
        if (incs[i][1].last > incs[j][1].first + this.o.graceMs) return true
      }
    }
    return false
  }

  private prune (st: PeerState, now: number): void {
    for (const [inc, h] of st.incs) {
      if (now - h.last > this.o.clearAfterMs && !(inc === this.selfIncarnation && st === this.peers.get(this.selfId))) st.incs.delete(inc)
    }
    while (st.incs.size > MAX_INCARNATIONS) {
      const oldest = [...st.incs.entries()].sort((a, b) => a[1].last - b[1].last)[0][0]
      st.incs.delete(oldest)
    }
  }

  private forgetOldest (): void {
    let oldest: string | undefined
    let at = Infinity
    for (const [peer, st] of this.peers) {
      if (peer === this.selfId) continue
      const last = Math.max(...[...st.incs.values()].map(h => h.last))
      if (last < at) { at = last; oldest = peer }
    }
    if (oldest != null) this.peers.delete(oldest)
  }
}

/** Connections tracked at once (one entry per open connection that ran identify). */
const MAX_CONNECTIONS = 8192

/**
 * The listen addresses each open connection's process announced (libp2p identify runs on every
 * connection). One process announces the same addresses on all its connections; two processes
 * with one key listen on different ports or hosts.
 */
export class ConnectionListenAddrs {
  private readonly byConn = new Map<string, { peer: string, addrs: Set<string> }>()

  identified (peer: string, connectionId: string, listenAddrs: readonly string[]): void {
    if (!this.byConn.has(connectionId) && this.byConn.size >= MAX_CONNECTIONS) {
      const oldest = this.byConn.keys().next().value
      if (oldest !== undefined) this.byConn.delete(oldest)
    }
    this.byConn.set(connectionId, { peer, addrs: new Set(listenAddrs) })
  }

  closed (connectionId: string): void {
    this.byConn.delete(connectionId)
  }

  /** Whether two of `peer`'s open connections (`openIds`) announced disjoint, non-empty address sets. */
  conflict (peer: string, openIds: readonly string[]): boolean {
    const sets = openIds.map(id => this.byConn.get(id)).filter(e => e != null && e.peer === peer && e.addrs.size > 0).map(e => e!.addrs)
    for (let i = 0; i < sets.length; i++) {
      for (let j = i + 1; j < sets.length; j++) {
        if (![...sets[i]].some(a => sets[j].has(a))) return true
      }
    }
    return false
  }
}
