/**
 * The peer table and its state machine. Transitions are pure functions of (record, input, now)
 * so unit tests drive them with a fake clock; `PeerTable` applies them and emits events.
 *
 *   alive --silence > suspectAfter--> suspect --silence > deadAfter--> dead
 *   alive/suspect --connection lost and redial refused--> dead
 *   any --leave notice--> left (sticky for that incarnation)
 *   suspect/dead --heartbeat--> alive;  left --heartbeat of a newer incarnation--> alive
 */
import { EventEmitter } from 'node:events'

export type PeerStatus = 'alive' | 'suspect' | 'dead' | 'left'

export interface PeerRecord<S = Record<string, unknown>> {
  id: string
  name: string
  status: PeerStatus
  /** When the status last changed (ms). */
  statusSince: number
  /** Last time anything was heard from the peer (ms). */
  lastSeen: number
  firstSeen: number
  rttMs: number | null
  addresses: string[]
  groups: string[]
  connected: boolean
  incarnation: number
  seq: number
  snapshotVersion: number
  snapshot: S | null
  snapshotAt: number | null
  /** The peer's own count of running and waiting requests, from its last heartbeat. */
  load: { active: number, queued: number, at: number } | null
}

export interface MembershipTimings {
  suspectAfterMs: number
  deadAfterMs: number
}

export interface HeardFrom {
  incarnation: number
  seq: number
  name?: string
  groups?: string[]
}

export type TransitionResult<S> = { record: PeerRecord<S>, changed: boolean, accepted: boolean }

export function newRecord<S> (id: string, now: number): PeerRecord<S> {
  return {
    id,
    name: id.slice(-8),
    status: 'dead',
    statusSince: now,
    lastSeen: 0,
    firstSeen: now,
    rttMs: null,
    addresses: [],
    groups: [],
    connected: false,
    incarnation: 0,
    seq: -1,
    snapshotVersion: -1,
    snapshot: null,
    snapshotAt: null,
    load: null
  }
}

function withStatus<S> (rec: PeerRecord<S>, status: PeerStatus, now: number): PeerRecord<S> {
  return rec.status === status ? rec : { ...rec, status, statusSince: now }
}

/** Whether a message (incarnation, seq) is newer than what the record has seen. */
export function isNewer (rec: PeerRecord<unknown>, inc: number, seq: number): boolean {
  return inc > rec.incarnation || (inc === rec.incarnation && seq > rec.seq)
}

/** A heartbeat or snapshot arrived. Stale messages and messages from a departed incarnation are not accepted. */
export function onHeard<S> (rec: PeerRecord<S>, msg: HeardFrom, now: number): TransitionResult<S> {
  if (!isNewer(rec, msg.incarnation, msg.seq)) return { record: rec, changed: false, accepted: false }
  let next: PeerRecord<S> = {
    ...rec,
    incarnation: msg.incarnation,
    seq: msg.seq,
    lastSeen: now,
    name: msg.name ?? rec.name,
    groups: msg.groups ?? rec.groups
  }
  // A restart (new incarnation) invalidates what we knew of its snapshot.
  if (msg.incarnation > rec.incarnation) next = { ...next, snapshotVersion: -1 }
  next = withStatus(next, 'alive', now)
  return { record: next, changed: next.status !== rec.status, accepted: true }
}

/** The peer said it is leaving (clean stop). */
export function onLeave<S> (rec: PeerRecord<S>, msg: { incarnation: number, seq: number }, now: number): TransitionResult<S> {
  if (msg.incarnation < rec.incarnation) return { record: rec, changed: false, accepted: false }
  const next = withStatus({ ...rec, incarnation: msg.incarnation, seq: Math.max(rec.seq, msg.seq), lastSeen: now }, 'left', now)
  return { record: next, changed: next.status !== rec.status, accepted: true }
}

/** Periodic check: silence turns alive into suspect and suspect into dead. */
export function onTick<S> (rec: PeerRecord<S>, now: number, t: MembershipTimings): TransitionResult<S> {
  return onSilence(rec, now - rec.lastSeen, now, t)
}

/**
 * The peer has been silent for `silence` ms: suspect past `suspectAfterMs`, dead past
 * `deadAfterMs`. With flooded heartbeats that is its own silence (`onTick`); with SWIM, where a
 * quiet peer publishes nothing, it is applied only while this node hears from no member at all
 * (it is the one cut off: see `Mesh.tick`).
 */
export function onSilence<S> (rec: PeerRecord<S>, silence: number, now: number, t: MembershipTimings): TransitionResult<S> {
  if (rec.status === 'left' || rec.status === 'dead') return { record: rec, changed: false, accepted: true }
  let next = rec
  if (silence > t.deadAfterMs) next = withStatus(rec, 'dead', now)
  else if (silence > t.suspectAfterMs && rec.status === 'alive') next = withStatus(rec, 'suspect', now)
  return { record: next, changed: next !== rec, accepted: true }
}

/** Every connection to the peer closed. Alive becomes suspect until a redial settles it. */
export function onDisconnected<S> (rec: PeerRecord<S>, now: number): TransitionResult<S> {
  let next: PeerRecord<S> = { ...rec, connected: false }
  if (rec.status === 'alive') next = withStatus(next, 'suspect', now)
  return { record: next, changed: next.status !== rec.status, accepted: true }
}

/** A redial was refused outright (nothing listens any more): the process is gone. */
export function onRefused<S> (rec: PeerRecord<S>, now: number): TransitionResult<S> {
  if (rec.connected || rec.status === 'left' || rec.status === 'dead') return { record: rec, changed: false, accepted: true }
  const next = withStatus(rec, 'dead', now)
  return { record: next, changed: true, accepted: true }
}

/**
 * SWIM (`swim.ts`, live with `membership: swim`) changed its view of the peer. A leave is final
 * for the process (a restart comes back through its gossip, `onHeard`); SWIM's `left` is the
 * peer's own word (swim-protocol.ts screens third parties' claims). A SWIM suspicion does not undo
 * a death proven otherwise (a refused redial); alive is proof of life (a refutation, or a new
 * incarnation after a restart).
 */
export function onSwimStatus<S> (rec: PeerRecord<S>, status: PeerStatus, now: number): TransitionResult<S> {
  if (rec.status === 'left') return { record: rec, changed: false, accepted: true }
  let next = rec
  if (status === 'alive') next = withStatus({ ...rec, lastSeen: now }, 'alive', now)
  else if (status === 'suspect') next = rec.status === 'alive' ? withStatus(rec, 'suspect', now) : rec
  else next = withStatus(rec, status, now)
  return { record: next, changed: next.status !== rec.status, accepted: true }
}

/** Default of `deadPeerTtlMs`: long enough to show a crash in /api/peers, short enough to bound a churning mesh. */
export const DEAD_PEER_TTL_MS = 300_000

/** Whether a record is old enough to forget: dead or gone past the TTL, or never heard from and not connected. */
export function shouldEvict (rec: PeerRecord<unknown>, now: number, ttlMs: number): boolean {
  if (rec.connected) return false
  if (rec.lastSeen === 0) return now - rec.firstSeen > ttlMs
  return (rec.status === 'dead' || rec.status === 'left') && now - rec.statusSince > ttlMs
}

export interface PeerTableEvents<S> {
  'peer:joined': [PeerRecord<S>]
  'peer:alive': [PeerRecord<S>]
  'peer:suspect': [PeerRecord<S>]
  'peer:dead': [PeerRecord<S>]
  'peer:left': [PeerRecord<S>]
  'peer:snapshot': [PeerRecord<S>]
}

/** Holds the records and emits an event for every status change. */
export class PeerTable<S = Record<string, unknown>> extends EventEmitter<PeerTableEvents<S>> {
  private readonly records = new Map<string, PeerRecord<S>>()

  get (id: string): PeerRecord<S> | undefined {
    return this.records.get(id)
  }

  list (): Array<PeerRecord<S>> {
    return [...this.records.values()]
  }

  /** Returns the record, creating an unseen one (status dead, never announced) if needed. */
  ensure (id: string, now: number): PeerRecord<S> {
    let rec = this.records.get(id)
    if (rec == null) {
      rec = newRecord<S>(id, now)
      this.records.set(id, rec)
    }
    return rec
  }

  /** Replaces a record without a status change (addresses, rtt, snapshot...). */
  patch (id: string, fields: Partial<PeerRecord<S>>): PeerRecord<S> | undefined {
    const rec = this.records.get(id)
    if (rec == null) return undefined
    const next = { ...rec, ...fields }
    this.records.set(id, next)
    return next
  }

  /** Stores a transition's outcome and emits the status event when the status changed. */
  apply (prev: PeerRecord<S>, result: TransitionResult<S>): PeerRecord<S> {
    this.records.set(result.record.id, result.record)
    if (result.changed) {
      const rec = result.record
      if (rec.status === 'alive' && prev.lastSeen === 0) this.emit('peer:joined', rec)
      this.emit(`peer:${rec.status}`, rec)
    }
    return result.record
  }

  delete (id: string): void {
    this.records.delete(id)
  }
}
