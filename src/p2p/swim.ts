/**
 * SWIM failure detection and dissemination with Lifeguard's refinements (issue 14, "constant
 * per-node cost"), as one pure state machine in the shape of raft's `Step`:
 *
 *   step(state, event, now) → { state, actions }
 *
 * No I/O and no clock: the caller delivers messages and ticks, and carries out the `send`
 * actions; randomness comes from a seeded generator in the state, so a run replays exactly. The
 * state is owned by the caller and updated in place (a simulator holds 10,000 of them).
 *
 * Per node and per probe interval: one `ping` (and its `ack`), `k` `ping-req`s only when the
 * direct probe failed, and gossip of recent changes to `gossipNodes` members only while there are
 * changes to spread. Nothing is sent to everyone, so a node's work does not grow with the mesh.
 *
 * Model: hashicorp/memberlist `state.go` (alive/suspect/dead applied only when the incarnation
 * allows it; a node refutes a suspicion of itself with a higher incarnation) and Lifeguard
 * (local health scales this node's own probe timing; suspicions shrink with confirmations:
 * `suspicion.ts`; the buddy system tells a suspect at once that it is suspected).
 */
import { confirm, newSuspicion, suspicionDeadline, suspicionMinMs, type Suspicion } from './suspicion.js'

export type SwimStatus = 'alive' | 'suspect' | 'dead' | 'left'

/** A membership change, piggybacked on every message: `[id, incarnation, status, reporter]`. */
export type SwimUpdate = [id: string, inc: number, status: SwimStatus, from: string]

export type SwimMessage =
  | { t: 'ping', seq: number, u: SwimUpdate[] }
  /** Probe `target` on my behalf and forward its ack (Lifeguard: or a nack when none came). */
  | { t: 'ping-req', seq: number, target: string, u: SwimUpdate[] }
  | { t: 'ack', seq: number, u: SwimUpdate[] }
  | { t: 'nack', seq: number, u: SwimUpdate[] }
  /** Changes only, to a few random members while there are changes to spread. */
  | { t: 'gossip', u: SwimUpdate[] }

export type SwimEvent =
  | { t: 'tick' }
  | { t: 'recv', from: string, msg: SwimMessage }
  /** A member learnt of out of band (a connection, the ledger, a join through a seed). */
  | { t: 'add', id: string }
  /** This node announces itself (after a start or a join through a seed). */
  | { t: 'join' }
  /** This node leaves cleanly: the change is gossiped before the caller stops. */
  | { t: 'leave' }

export type SwimAction =
  | { t: 'send', to: string, msg: SwimMessage }
  /** A member's status changed in this node's view. */
  | { t: 'change', id: string, status: SwimStatus, inc: number }

export interface SwimConfig {
  /** One probe per interval (scaled by local health). memberlist LAN: 1 s. */
  probeIntervalMs: number
  /** Wait for a direct ack before asking others (scaled by local health). memberlist LAN: 500 ms. */
  probeTimeoutMs: number
  /** Members asked to probe indirectly (k). memberlist: 3. */
  indirectChecks: number
  /** Suspicion timeout = mult × log10(n) × interval (Lifeguard's minimum). memberlist LAN: 4. */
  suspicionMult: number
  /** The suspicion starts at this multiple of the minimum and shrinks with confirmations. memberlist: 6. */
  suspicionMaxMult: number
  /** Local health awareness ceiling (Lifeguard's LHM saturation). memberlist: 8. */
  awarenessMax: number
  /** Each change is sent retransmitMult × ceil(log10(n + 1)) times. memberlist LAN: 4. */
  retransmitMult: number
  /** Gossip of changes: period and fan-out (idle when nothing changed). memberlist LAN: 200 ms, 3. */
  gossipIntervalMs: number
  gossipNodes: number
  /** Changes piggybacked on one message, at most. */
  maxPiggyback: number
}

/** memberlist's `DefaultLANConfig` numbers (memberlist/config.go). */
export const SWIM_LAN_DEFAULTS: SwimConfig = {
  probeIntervalMs: 1000,
  probeTimeoutMs: 500,
  indirectChecks: 3,
  suspicionMult: 4,
  suspicionMaxMult: 6,
  awarenessMax: 8,
  retransmitMult: 4,
  gossipIntervalMs: 200,
  gossipNodes: 3,
  maxPiggyback: 8
}

interface Member { inc: number, status: SwimStatus }

interface Probe {
  target: string
  seq: number
  sentAt: number
  /** Indirect probes were sent (the direct one timed out) to this many members. */
  indirect: number
  nacks: number
  acked: boolean
}

interface Relay { origin: string, originSeq: number, target: string, nackAt: number, expireAt: number, nacked: boolean }

interface Broadcast { u: SwimUpdate, sent: number }

export interface SwimState {
  readonly self: string
  readonly config: SwimConfig
  incarnation: number
  /**
   * Members everyone starts with, alive at incarnation 0 unless `members` says otherwise. Shared
   * read-only between simulated nodes (10,000 × 10,000 records would not fit); empty in a node.
   */
  readonly base: readonly string[]
  /** Members beyond `base`, in the order learnt (the probe space is `base` then `extra`). */
  extra: string[]
  /** Every member of `extra`, and every member of `base` whose state changed. */
  members: Map<string, Member>
  /** Members not dead or gone, this node excluded: the `n` of the timeouts. */
  live: number
  awareness: number
  /**
   * Smoothed round trip of direct acks to this node's probes, and its variation (TCP's SRTT and
   * RTTVAR, RFC 6298); null before the first ack. Reported (`/metrics`), not used for timing.
   */
  rtt: { srtt: number, rttvar: number } | null
  seq: number
  /** The probe cycle: a permutation of the probe space (start + i × stride mod size). */
  cycle: { start: number, stride: number, i: number, size: number }
  probe: Probe | null
  nextProbeAt: number
  nextGossipAt: number
  relays: Map<number, Relay>
  suspicions: Map<string, Suspicion & { inc: number }>
  broadcasts: Broadcast[]
  /** mulberry32 state. */
  rng: number
  /** Counted work, for the simulator and tests. */
  stats: { sent: number, probes: number, failedProbes: number, refutes: number }
}

/** A fresh state: `base` are the members known at start (alive, incarnation 0). */
export function initSwim (self: string, config: SwimConfig = SWIM_LAN_DEFAULTS, opts: { base?: readonly string[], seed?: number, now?: number } = {}): SwimState {
  const base = opts.base ?? []
  const selfInBase = base.includes(self)
  const s: SwimState = {
    self,
    config,
    incarnation: 0,
    base,
    extra: [],
    members: new Map(),
    live: base.length - (selfInBase ? 1 : 0),
    awareness: 0,
    rtt: null,
    seq: 0,
    cycle: { start: 0, stride: 1, i: 0, size: 0 },
    probe: null,
    nextProbeAt: (opts.now ?? 0),
    nextGossipAt: (opts.now ?? 0),
    relays: new Map(),
    suspicions: new Map(),
    broadcasts: [],
    rng: (opts.seed ?? hashString(self)) >>> 0,
    stats: { sent: 0, probes: 0, failedProbes: 0, refutes: 0 }
  }
  // Spread the first probes over the interval so that nodes started together do not probe in step.
  s.nextProbeAt += Math.floor(random(s) * config.probeIntervalMs)
  return s
}

/** This node's view of `id` (undefined: not a member it knows). */
export function memberOf (s: SwimState, id: string): { inc: number, status: SwimStatus } | undefined {
  if (id === s.self) return { inc: s.incarnation, status: 'alive' }
  return view(s, id)
}

/** Lookups of base membership in O(1) for big simulated rosters. */
const baseIndex = new WeakMap<readonly string[], Set<string>>()
function inBase (s: SwimState, id: string): boolean {
  let set = baseIndex.get(s.base)
  if (set == null) baseIndex.set(s.base, set = new Set(s.base))
  return set.has(id)
}

function view (s: SwimState, id: string): Member | undefined {
  const m = s.members.get(id)
  if (m != null) return m
  return inBase(s, id) ? { inc: 0, status: 'alive' } : undefined
}

/** The earliest time `step` has something to do without a message (the caller's next tick). */
export function nextDeadline (s: SwimState): number {
  let t = s.nextProbeAt
  if (s.probe != null && !s.probe.acked && s.probe.indirect === 0) t = Math.min(t, s.probe.sentAt + scaled(s, s.config.probeTimeoutMs))
  if (s.broadcasts.length > 0) t = Math.min(t, s.nextGossipAt)
  for (const r of s.relays.values()) t = Math.min(t, r.nacked ? r.expireAt : r.nackAt)
  for (const sus of s.suspicions.values()) t = Math.min(t, suspicionDeadline(sus))
  return t
}

/** Applies one event at `now`; returns the (updated) state and what the caller must do. */
export function step (s: SwimState, ev: SwimEvent, now: number): { state: SwimState, actions: SwimAction[] } {
  const out: SwimAction[] = []
  switch (ev.t) {
    case 'tick': tick(s, now, out); break
    case 'recv': receive(s, ev.from, ev.msg, now, out); break
    case 'add': if (ev.id !== s.self && view(s, ev.id) == null) setMember(s, ev.id, { inc: 0, status: 'alive' }, out, true); break
    case 'join':
      enqueue(s, [s.self, s.incarnation, 'alive', s.self])
      gossipNow(s, now, out)
      break
    case 'leave':
      s.incarnation++
      enqueue(s, [s.self, s.incarnation, 'left', s.self])
      gossipNow(s, now, out)
      break
  }
  return { state: s, actions: out }
}

// --- time ------------------------------------------------------------------------------------

function tick (s: SwimState, now: number, out: SwimAction[]): void {
  const c = s.config
  const p = s.probe
  if (p != null && !p.acked) {
    // Direct probe unanswered: ask k others (once), then give up at the end of the interval.
    if (p.indirect === 0 && now >= p.sentAt + scaled(s, c.probeTimeoutMs)) {
      const helpers = randomMembers(s, c.indirectChecks, new Set([p.target]))
      for (const h of helpers) send(s, h, { t: 'ping-req', seq: p.seq, target: p.target, u: [] }, out)
      p.indirect = Math.max(1, helpers.length)
    }
  }
  for (const [seq, r] of s.relays) {
    if (!r.nacked && now >= r.nackAt) {
      r.nacked = true
      send(s, r.origin, { t: 'nack', seq: r.originSeq, u: [] }, out)
    }
    // A late ack is still forwarded until the origin's probe is surely over.
    if (now >= r.expireAt) s.relays.delete(seq)
  }
  for (const [id, sus] of s.suspicions) {
    if (now >= suspicionDeadline(sus)) {
      s.suspicions.delete(id)
      const m = view(s, id)
      if (m != null && m.status === 'suspect' && m.inc === sus.inc) {
        setMember(s, id, { inc: m.inc, status: 'dead' }, out, true, s.self)
      }
    }
  }
  if (now >= s.nextProbeAt) {
    if (p != null && !p.acked) probeFailed(s, p, now, out)
    s.probe = null
    startProbe(s, now, out)
    s.nextProbeAt = now + scaled(s, c.probeIntervalMs)
  }
  if (s.broadcasts.length > 0 && now >= s.nextGossipAt) gossipNow(s, now, out)
}

function probeFailed (s: SwimState, p: Probe, now: number, out: SwimAction[]): void {
  s.stats.failedProbes++
  // Lifeguard: nacks missing from the members asked (or nobody to ask) hint that we are the slow one;
  // all nacks in means they are fine and the target is not.
  const delta = p.indirect > 0 ? Math.max(0, p.indirect - p.nacks) : 1
  s.awareness = Math.min(s.config.awarenessMax - 1, s.awareness + delta)
  const m = view(s, p.target)
  if (m == null) return
  if (m.status === 'alive') suspect(s, p.target, m.inc, s.self, now, out)
  else if (m.status === 'suspect') {
    // Our own failed probe of a suspect is an independent confirmation (shortens its timeout).
    const sus = s.suspicions.get(p.target)
    if (sus != null && confirm(sus, s.self)) enqueue(s, [p.target, m.inc, 'suspect', s.self])
  }
}

function startProbe (s: SwimState, now: number, out: SwimAction[]): void {
  const target = nextProbeTarget(s)
  if (target == null) return
  const seq = ++s.seq
  s.probe = { target, seq, sentAt: now, indirect: 0, nacks: 0, acked: false }
  s.stats.probes++
  // Buddy system: a suspect learns at once that it is suspected, so it can refute.
  const m = view(s, target)
  const first: SwimUpdate[] = m?.status === 'suspect' ? [[target, m.inc, 'suspect', s.self]] : []
  send(s, target, { t: 'ping', seq, u: first }, out)
}

function gossipNow (s: SwimState, now: number, out: SwimAction[]): void {
  s.nextGossipAt = now + s.config.gossipIntervalMs
  for (const to of randomMembers(s, s.config.gossipNodes, new Set())) {
    const u = piggyback(s, [])
    if (u.length === 0) break
    send(s, to, { t: 'gossip', u }, out)
  }
}

// --- messages --------------------------------------------------------------------------------

function receive (s: SwimState, from: string, msg: SwimMessage, now: number, out: SwimAction[]): void {
  // A message from an unknown sender makes it a member: it is alive, it just spoke.
  if (from !== s.self && view(s, from) == null) setMember(s, from, { inc: 0, status: 'alive' }, out, true)
  const incBefore = s.incarnation
  let stale = false
  for (const u of msg.u) {
    if (u[0] === s.self && (u[2] === 'suspect' || u[2] === 'dead') && u[1] < incBefore) stale = true
    apply(s, u, now, out)
  }
  // Told we are suspect or dead, we refuted: answer the teller directly. It may hold us dead and so
  // never probe us, and our broadcast reaches only members we hold live: after a partition each
  // side holds the other dead, and the refutation would never cross. A claim at an incarnation we
  // refuted already gets the same answer (no new incarnation): its teller missed the refutation
  // (each change is sent a bounded number of times) and would hold us dead until we next probed
  // it, a probe round away. A ping needs no answer of its own: every frame carries our incarnation.
  if (from !== s.self && (s.incarnation > incBefore || (stale && msg.t !== 'ping'))) send(s, from, { t: 'gossip', u: [[s.self, s.incarnation, 'alive', s.self]] }, out)
  switch (msg.t) {
    case 'ping':
      send(s, from, { t: 'ack', seq: msg.seq, u: [] }, out)
      break
    case 'ping-req': {
      if (msg.target === s.self) { send(s, from, { t: 'ack', seq: msg.seq, u: [] }, out); break }
      const seq = ++s.seq
      // Lifeguard: a nack at 80 % of the timeout tells the origin that this relay is alive and working.
      s.relays.set(seq, { origin: from, originSeq: msg.seq, target: msg.target, nackAt: now + Math.floor(0.8 * s.config.probeTimeoutMs), expireAt: now + s.config.probeIntervalMs * s.config.awarenessMax, nacked: false })
      send(s, msg.target, { t: 'ping', seq, u: [] }, out)
      break
    }
    case 'ack': {
      const r = s.relays.get(msg.seq)
      if (r != null) {
        s.relays.delete(msg.seq)
        send(s, r.origin, { t: 'ack', seq: r.originSeq, u: [] }, out)
        break
      }
      const p = s.probe
      if (p != null && p.seq === msg.seq && !p.acked) {
        p.acked = true
        s.awareness = Math.max(0, s.awareness - 1)
        // The target's own ack to the direct probe (a relayed one comes from the indirect prober),
        // late or not: a round trip sample.
        if (from === p.target) sampleRtt(s, now - p.sentAt)
      }
      break
    }
    case 'nack':
      if (s.probe != null && s.probe.seq === msg.seq) s.probe.nacks++
      break
    case 'gossip':
      break
  }
}

/** memberlist `aliveNode` / `suspectNode` / `deadNode`: an update counts only when its incarnation allows it. */
function apply (s: SwimState, u: SwimUpdate, now: number, out: SwimAction[]): void {
  const [id, inc, status, from] = u
  if (!Number.isSafeInteger(inc) || inc < 0) return
  if (id === s.self) {
    if (status === 'alive' || status === 'left') return
    // Suspected or declared dead: refute with a higher incarnation (Lifeguard: and trust ourselves less).
    if (inc < s.incarnation) return
    s.incarnation = inc + 1
    s.stats.refutes++
    s.awareness = Math.min(s.config.awarenessMax - 1, s.awareness + 1)
    enqueue(s, [s.self, s.incarnation, 'alive', s.self])
    return
  }
  const m = view(s, id)
  switch (status) {
    case 'alive':
      if (m != null && inc <= m.inc) return
      s.suspicions.delete(id)
      setMember(s, id, { inc, status: 'alive' }, out, true, from)
      break
    case 'suspect':
      if (m == null || m.status === 'dead' || m.status === 'left' || inc < m.inc) return
      if (m.status === 'suspect' && inc === m.inc) {
        const sus = s.suspicions.get(id)
        if (sus != null && confirm(sus, from)) enqueue(s, u)
        return
      }
      suspect(s, id, inc, from, now, out)
      break
    case 'dead':
    case 'left':
      if (m == null || (m.status === 'dead' || m.status === 'left') || inc < m.inc) return
      s.suspicions.delete(id)
      setMember(s, id, { inc, status }, out, true, from)
      break
  }
}

function suspect (s: SwimState, id: string, inc: number, from: string, now: number, out: SwimAction[]): void {
  const c = s.config
  const min = suspicionMinMs(c.suspicionMult, s.live + 1, c.probeIntervalMs)
  const k = Math.max(0, c.suspicionMult - 2)
  // With fewer members than confirmations expected, no confirmation can shorten it: start at the minimum.
  const max = s.live - 1 < k ? min : c.suspicionMaxMult * min
  s.suspicions.set(id, { ...newSuspicion(from, now, min, max, k), inc })
  setMember(s, id, { inc, status: 'suspect' }, out, true, from)
}

function setMember (s: SwimState, id: string, m: Member, out: SwimAction[], broadcast: boolean, from = s.self): void {
  const prev = view(s, id)
  const wasLive = prev != null && (prev.status === 'alive' || prev.status === 'suspect')
  const isLive = m.status === 'alive' || m.status === 'suspect'
  if (prev == null && !inBase(s, id)) s.extra.push(id)
  s.members.set(id, m)
  s.live += Number(isLive) - Number(wasLive)
  if (prev?.status !== m.status || prev?.inc !== m.inc) out.push({ t: 'change', id, status: m.status, inc: m.inc })
  if (broadcast) enqueue(s, [id, m.inc, m.status, from])
}

// --- dissemination ---------------------------------------------------------------------------

/** Changes queued at most: the oldest go first (they have been sent the most). */
const MAX_BROADCASTS = 4096

/** Queues a change; it replaces older ones about the same member (suspicions by other reporters stay: confirmations). */
function enqueue (s: SwimState, u: SwimUpdate): void {
  s.broadcasts = s.broadcasts.filter(b => b.u[0] !== u[0] || (b.u[2] === 'suspect' && u[2] === 'suspect' && b.u[3] !== u[3]))
  s.broadcasts.push({ u, sent: 0 })
  if (s.broadcasts.length > MAX_BROADCASTS) s.broadcasts.splice(0, s.broadcasts.length - MAX_BROADCASTS)
}

/** Up to `maxPiggyback` changes, least sent first; each is dropped after its retransmit limit. */
function piggyback (s: SwimState, first: SwimUpdate[]): SwimUpdate[] {
  const c = s.config
  if (s.broadcasts.length === 0) return first
  const limit = c.retransmitMult * Math.ceil(Math.log10(s.live + 2))
  s.broadcasts.sort((a, b) => a.sent - b.sent)
  const out = [...first]
  for (const b of s.broadcasts) {
    if (out.length >= c.maxPiggyback) break
    out.push(b.u)
    b.sent++
  }
  s.broadcasts = s.broadcasts.filter(b => b.sent < limit)
  return out
}

function send (s: SwimState, to: string, msg: SwimMessage, out: SwimAction[]): void {
  if (msg.t !== 'gossip') msg.u = piggyback(s, msg.u)
  s.stats.sent++
  out.push({ t: 'send', to, msg })
}

// --- choosing members ------------------------------------------------------------------------

function probeSpace (s: SwimState): number {
  return s.base.length + s.extra.length
}

function memberAt (s: SwimState, i: number): string {
  return i < s.base.length ? s.base[i] : s.extra[i - s.base.length]
}

function probeable (s: SwimState, id: string, deadToo = false): boolean {
  if (id === s.self) return false
  const m = view(s, id)
  return m != null && (m.status === 'alive' || m.status === 'suspect' || (deadToo && m.status === 'dead'))
}

/**
 * Round-robin over a random permutation of the members (memberlist shuffles its list each
 * round): every member is probed once per round, which bounds detection time, in O(1) memory.
 */
function nextProbeTarget (s: SwimState): string | undefined {
  const size = probeSpace(s)
  if (size === 0) return undefined
  for (let tries = 0; tries < size; tries++) {
    if (s.cycle.size !== size || s.cycle.i >= size) {
      let stride = 1 + Math.floor(random(s) * Math.max(1, size - 1))
      while (gcd(stride, size) !== 1) stride = stride % size + 1
      s.cycle = { start: Math.floor(random(s) * size), stride, i: 0, size }
    }
    const id = memberAt(s, (s.cycle.start + s.cycle.i * s.cycle.stride) % size)
    s.cycle.i++
    if (probeable(s, id)) return id
  }
  return undefined
}

/** Up to `n` distinct random live members, none in `exclude` (bounded tries: cheap at any size). */
function randomMembers (s: SwimState, n: number, exclude: Set<string>): string[] {
  const size = probeSpace(s)
  const out: string[] = []
  const seen = new Set(exclude)
  for (let tries = 0; out.length < n && tries < 4 * n + 8 && size > 0; tries++) {
    const id = memberAt(s, Math.floor(random(s) * size))
    if (seen.has(id) || !probeable(s, id)) continue
    seen.add(id)
    out.push(id)
  }
  return out
}

/** RFC 6298's smoothing (alpha 1/8, beta 1/4) of one round trip sample. */
function sampleRtt (s: SwimState, ms: number): void {
  if (s.rtt == null) {
    s.rtt = { srtt: ms, rttvar: ms / 2 }
    return
  }
  s.rtt.rttvar = 0.75 * s.rtt.rttvar + 0.25 * Math.abs(s.rtt.srtt - ms)
  s.rtt.srtt = 0.875 * s.rtt.srtt + 0.125 * ms
}

/** Lifeguard's local health: this node's own timing stretches while it seems to be the slow one. */
function scaled (s: SwimState, ms: number): number {
  return ms * (s.awareness + 1)
}

function gcd (a: number, b: number): number {
  while (b !== 0) [a, b] = [b, a % b]
  return a
}

/** mulberry32: small, fast, seedable. */
function random (s: SwimState): number {
  let t = (s.rng = (s.rng + 0x6D2B79F5) >>> 0)
  t = Math.imul(t ^ (t >>> 15), t | 1)
  t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
  return ((t ^ (t >>> 14)) >>> 0) / 4294967296
}

function hashString (str: string): number {
  let h = 2166136261
  for (let i = 0; i < str.length; i++) h = Math.imul(h ^ str.charCodeAt(i), 16777619)
  return h >>> 0
}
