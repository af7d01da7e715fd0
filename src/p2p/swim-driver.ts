import { peerIdFromString } from '@libp2p/peer-id'
import { createLogger } from '../logger.js'
import type { Host } from './host.js'
import { initSwim, memberOf, nextDeadline, step, type SwimAction, type SwimConfig, type SwimEvent, type SwimMessage, type SwimState, type SwimStatus, type SwimUpdate } from './swim.js'
import { MAX_SWIM_UPDATES, SWIM_VERSION, screenUpdates, type SwimFrame } from './swim-protocol.js'
import { SwimTransport, type SwimTransportOptions } from './swim-transport.js'

/** Members held suspect or dead told so per probe interval, at most (see `pokeHeld`). */
const MAX_POKES_PER_INTERVAL = 3
/** One member held suspect or dead is poked at most this often. */
const POKE_MIN_MS = 1_000
/**
 * A member held dead with no connection is still dialed and told so this long after it died,
 * at growing gaps (1, 2, 4, 8, 16 s): memberlist's `GossipToTheDeadTime` (30 s on a LAN).
 */
const GOSSIP_TO_THE_DEAD_MS = 30_000
export interface SwimDriverOptions {
  config: SwimConfig
  /**
   * First incarnation: the process's start time (ms), so a restarted node is always newer than
   * what peers remember of its previous run (memberlist would need a push-pull sync for that).
   */
  incarnation: number
  /** Sent in every frame: the process start time (duplicate-identity evidence for receivers). */
  boot: number
  /** Sent in every frame: this node's snapshot version. */
  snapshotVersion: () => number
  /** Sent in every frame: this node's load and leadership views (see `SwimFrame`). */
  meta?: () => Pick<SwimFrame, 'load' | 'lead'>
  /** Whether this node can vouch for `id` itself (connected or in its ledger); claims about others are dropped. */
  verified: (id: string) => boolean
  /** A member's status changed in this node's SWIM view. */
  onChange: (id: string, status: SwimStatus, inc: number) => void
  /** A valid frame arrived from `from` (after the handler's membership check). */
  onFrame?: (from: string, frame: SwimFrame) => void
  /** Round trip of a direct ping answered by its target. */
  onRtt?: (id: string, ms: number) => void
  /** A member sent something that is not a SWIM frame (the stream was reset). */
  onViolation?: (peer: string, reason: string) => void
  /** How frames travel (timeouts, limits; see `SwimTransportOptions`). */
  readTimeoutMs?: SwimTransportOptions['readTimeoutMs']
  maxStreams?: SwimTransportOptions['maxStreams']
  linkIdleMs?: SwimTransportOptions['linkIdleMs']
  maxFramesPerSec?: SwimTransportOptions['maxFramesPerSec']
  legacyOnly?: SwimTransportOptions['legacyOnly']
}

/** Work counters (tests bound them; `/metrics` may show them). */
export interface SwimDriverStats {
  framesSent: number
  framesReceived: number
  sendFailures: number
  violations: number
  /** Updates about third parties (or this node) that the screen dropped or downgraded. */
  screened: number
  /** Links opened, by this node (`out`) or to it (`in`). */
  linksOpened: number
  /** Frames dropped because their sender went past `MAX_SWIM_FRAMES_PER_SEC`. */
  rateLimited: number
}

/** This node's own view of how it keeps up: Lifeguard awareness, ack round trips, probe outcomes. */
export interface SwimHealth {
  awareness: number
  srttMs: number | null
  /** Probes started, and those that ended with no ack (direct or relayed): each a suspicion raised or confirmed. */
  probes: number
  failedProbes: number
  /** Suspicions of this node it refuted. */
  refutes: number
  /** Ticks that ran late by more than half a probe timeout (a starved event loop). */
  lateTicks: number
}

/** A send failure that is the peer's own doing (gone, or not a SWIM speaker), not this node's link. */
function saysNothingOfUs (err: unknown): boolean {
  const e = err as { name?: string, code?: string, message?: string } | undefined
  return e?.name === 'UnsupportedProtocolError' || e?.name === 'NoValidAddressesError' || e?.code === 'ECONNREFUSED' || /ECONNREFUSED/.test(e?.message ?? '')
}

/**
 * The I/O around `swim.ts`'s pure `step`: ticks at the state's next deadline, feeds it the
 * frames members send, carries out its `send` actions and reports its `change` actions. Frames
 * travel on one long-lived link per pair of members (`/shepherd/swim/1.1.0`, opened on demand,
 * closed when idle), or one stream per frame with a member that speaks only 1.0.0. Per interval
 * a node sends one probe and answers the few it gets: its work does not grow with the mesh.
 */
export class SwimDriver {
  readonly stats: SwimDriverStats = { framesSent: 0, framesReceived: 0, sendFailures: 0, violations: 0, screened: 0, linksOpened: 0, rateLimited: 0 }
  private state?: SwimState
  private timer?: NodeJS.Timeout
  /** A due tick waiting for this turn's I/O (see `schedule`). */
  private immediate?: NodeJS.Immediate
  /**
   * Peers a frame could not be sent to, or a direct ping to went unanswered, since a frame last
   * arrived from anyone (see `reachability`). On a link, a frame to a cut-off peer is
   * written without error (into the stream's buffer): the missing ack is what tells.
   */
  private readonly failedSinceHeard = new Set<string>()
  /** Tells members held suspect or dead so (see `pokeHeld`). */
  private reviveTimer?: NodeJS.Timeout
  /** When each member held suspect or dead was last poked (see `pokeHeld`). */
  private readonly pokedAt = new Map<string, number>()
  /** When each member held dead died in this view (see `pokeHeld`). */
  private readonly deadAt = new Map<string, number>()
  private running = false
  private paused = false
  /** Direct pings in flight, by seq, for RTT (bounded: old ones are dropped). */
  private readonly pings = new Map<number, { to: string, at: number }>()
  private readonly log = createLogger('p2p:swim')
  /** Event-loop lag seen at ticks: times this node was too busy to keep its own timing. */
  lagTicks = 0
  private readonly transport: SwimTransport

  constructor (private readonly host: Host, private readonly opts: SwimDriverOptions) {
    this.transport = new SwimTransport(host, this.stats, {
      onFrame: (from, frame) => { this.handle(from, frame) },
      onViolation: (peer, reason) => { this.opts.onViolation?.(peer, reason) },
      readTimeoutMs: opts.readTimeoutMs,
      maxStreams: opts.maxStreams,
      linkIdleMs: opts.linkIdleMs,
      maxFramesPerSec: opts.maxFramesPerSec,
      legacyOnly: opts.legacyOnly
    })
  }

  /** SWIM links open now (tests, `/metrics`). */
  linkCount (): number {
    return this.transport.linkCount()
  }

  private get self (): string {
    return this.host.peerId.toString()
  }

  async start (): Promise<void> {
    await this.transport.start()
    const now = Date.now()
    this.state = initSwim(this.self, this.opts.config, { now })
    this.state.incarnation = this.opts.incarnation
    this.running = true
    this.apply({ t: 'join' })
    this.reviveTimer = setInterval(() => { this.pokeHeld() }, this.opts.config.probeIntervalMs)
    this.reviveTimer.unref()
  }

  /** Stops probing and answering; with `leave`, members are told first (best effort, briefly). */
  async stop (opts: { leave?: boolean } = {}): Promise<void> {
    if (!this.running) return
    if (opts.leave === true && this.state != null) {
      const { actions } = step(this.state, { t: 'leave' }, Date.now())
      await Promise.race([Promise.all(actions.map(async a => { if (a.t === 'send') await this.send(a.to, a.msg) })), sleep(200)])
    }
    this.running = false
    clearTimeout(this.timer)
    clearImmediate(this.immediate)
    clearInterval(this.reviveTimer)
    await this.transport.stop()
  }

  /**
   * For tests: go silent as a frozen process would (SIGSTOP): no probes, no answers, frames read
   * and dropped. `resume` picks up where it stopped, so the node then hears that it is suspected
   * and refutes.
   */
  pause (): void {
    this.paused = true
    clearTimeout(this.timer)
    clearImmediate(this.immediate)
  }

  resume (): void {
    if (!this.paused) return
    this.paused = false
    this.apply({ t: 'tick' })
  }

  /** A member learnt of out of band (a connection, a gossip message, the ledger). */
  add (id: string): void {
    if (this.state == null || id === this.self || memberOf(this.state, id) != null) return
    this.apply({ t: 'add', id })
  }

  /** This node's view of `id`. */
  member (id: string): { inc: number, status: SwimStatus } | undefined {
    return this.state == null ? undefined : memberOf(this.state, id)
  }

  /**
   * This node's local health: Lifeguard's awareness (its probe timing is stretched by it plus one)
   * and the smoothed round trip of direct acks to its probes (null before the first).
   */
  health (): SwimHealth {
    const s = this.state
    if (s == null) return { awareness: 0, srttMs: null, probes: 0, failedProbes: 0, refutes: 0, lateTicks: this.lagTicks }
    return {
      awareness: s.awareness,
      srttMs: s.rtt == null ? null : Math.round(s.rtt.srtt * 10) / 10,
      probes: s.stats.probes,
      failedProbes: s.stats.failedProbes,
      refutes: s.stats.refutes,
      lateTicks: this.lagTicks
    }
  }

  /** This node's own incarnation (raised by each refutation). */
  get incarnation (): number {
    return this.state?.incarnation ?? this.opts.incarnation
  }

  /**
   * Members held alive or suspect (`live`) and how many of them this node failed to reach since
   * it last heard anyone (`unreached`). A node cut off fails to reach every one of them; a node
   * of a small mesh whose other members stopped hears its one live peer only every few probe
   * intervals, and must not take that silence, with the stopped ones unreached, for a cut.
   */
  reachability (): { live: number, unreached: number } {
    let live = 0
    let unreached = 0
    for (const [id, m] of this.state?.members ?? []) {
      if (m.status !== 'alive' && m.status !== 'suspect') continue
      live++
      if (this.failedSinceHeard.has(id)) unreached++
    }
    return { live, unreached }
  }

  /**
   * `id` spoke (a signed gossip message) though this view holds it suspect or dead: tell it, so
   * it refutes with a higher incarnation (a frozen process that resumed does not know).
   */
  poke (id: string, opts: { fresh?: boolean } = {}): void {
    const m = this.member(id)
    if (!this.running || this.paused || this.state == null || m == null || (m.status !== 'suspect' && m.status !== 'dead')) return
    // The claim itself, at the incarnation it holds: the only update about itself a member acts on.
    void this.send(id, { t: 'gossip', u: [[id, m.inc, m.status, this.state.self]] }, opts)
  }

  /**
   * Members held suspect or dead are told so (`poke`), a few at random per interval: a live one
   * refutes (or, told of an incarnation it refuted already, answers with its own) and is alive
   * again here.
   * - Suspects, while connected, each at most once a second, on their link (Lifeguard's buddy
   *   system rides on probes only, and this node probes a member once per round: tens of seconds
   *   at 48 nodes). A node that missed a member's refutation otherwise held it suspect until the
   *   suspicion ran out, then dead.
   * - Dead ones, on a new connection (see `SwimTransport.freshRoute`): connected ones each at most
   *   once a second (a cut link leaves TCP connections open; a crashed process closes them). This
   *   heals a partition, after which each side holds the other dead and probes only its own side
   *   (memberlist leaves that to Serf's reconnect, every 30 s).
   * - Unconnected dead ones only in their first 30 s dead, at growing gaps (memberlist's gossip to
   *   the dead). A node that took a live member for dead, with no connection to it, otherwise kept
   *   it dead until that member next probed it, up to a probe round later: third parties' word that
   *   it is alive is screened out (this node cannot verify it), and the member never hears that it
   *   is held dead. A member dead for longer costs nothing here; if it comes back, the redialer
   *   reconnects it and its gossip pokes it.
   */
  private pokeHeld (): void {
    if (this.state == null || !this.running || this.paused) return
    const now = Date.now()
    const due: Array<{ id: string, dead: boolean }> = []
    for (const [id, m] of this.state.members) {
      if (m.status !== 'dead' && m.status !== 'suspect') continue
      const dead = m.status === 'dead'
      const since = this.deadAt.get(id) ?? now
      const connected = this.host.getConnections(peerIdFromString(id)).length > 0
      if (!connected && (!dead || now - since >= GOSSIP_TO_THE_DEAD_MS)) continue
      const last = this.pokedAt.get(id)
      if (last != null && now - last < (connected ? POKE_MIN_MS : Math.max(POKE_MIN_MS, last - since))) continue
      due.push({ id, dead })
    }
    for (const id of this.pokedAt.keys()) {
      const status = this.state.members.get(id)?.status
      if (status !== 'dead' && status !== 'suspect') this.pokedAt.delete(id)
    }
    for (let i = 0; i < MAX_POKES_PER_INTERVAL && due.length > 0; i++) {
      const { id, dead } = due.splice(Math.floor(Math.random() * due.length), 1)[0]
      this.pokedAt.set(id, now)
      // A dead one on a new connection: the old ones may hold frames in TCP's retransmission backoff.
      this.poke(id, { fresh: dead })
    }
  }

  private apply (ev: SwimEvent): void {
    if (this.state == null || !this.running || this.paused) return
    const now = Date.now()
    const { actions } = step(this.state, ev, now)
    this.exec(actions, now)
    this.schedule(now)
  }

  private exec (actions: SwimAction[], now: number): void {
    for (const a of actions) {
      if (a.t === 'change') {
        if (a.status === 'dead') this.deadAt.set(a.id, now)
        else this.deadAt.delete(a.id)
        try {
          this.opts.onChange(a.id, a.status, a.inc)
        } catch (err) {
          this.log.warn('swim change handler failed', { err })
        }
      } else {
        if (a.msg.t === 'ping') this.notePing(a.msg.seq, a.to, now)
        void this.send(a.to, a.msg)
      }
    }
  }

  private schedule (now: number): void {
    if (this.state == null) return
    clearTimeout(this.timer)
    const delay = Math.max(10, Math.min(this.opts.config.probeIntervalMs, nextDeadline(this.state) - now))
    const due = now + delay
    this.timer = setTimeout(() => {
      // Judged after this turn's I/O: Node runs due timers before it reads sockets, so a process
      // the kernel kept off the CPU past a deadline would otherwise call a probe failed with the
      // ack already waiting, unread, in its socket buffer. setImmediate runs after the poll phase.
      this.immediate = setImmediate(() => {
        this.immediate = undefined
        // Lifeguard's local health, from the event loop too: a tick that comes late means this node
        // is the slow one (a starved CPU), and acks it has not read yet are no evidence against
        // others. Its own timing stretches (as after a failed probe with missing nacks); each ack
        // taken in time shrinks it again.
        const s = this.state
        if (s != null && Date.now() - due > this.opts.config.probeTimeoutMs / 2) {
          this.lagTicks++
          s.awareness = Math.min(s.config.awarenessMax - 1, s.awareness + 1)
        }
        this.expirePings(Date.now())
        this.apply({ t: 'tick' })
      })
      this.immediate.unref()
    }, delay)
    this.timer.unref()
  }

  /** Direct pings unanswered for two probe timeouts: their targets count as not reached. */
  private expirePings (now: number): void {
    const limit = 2 * this.opts.config.probeTimeoutMs
    for (const [seq, p] of this.pings) {
      if (now - p.at <= limit) continue
      if (this.member(p.to)?.status !== 'dead') this.failedSinceHeard.add(p.to)
      this.pings.delete(seq)
    }
  }

  private notePing (seq: number, to: string, now: number): void {
    this.pings.set(seq, { to, at: now })
    if (this.pings.size > 64) {
      for (const [s, p] of this.pings) if (now - p.at > 10_000 || this.pings.size > 64) this.pings.delete(s)
    }
  }

  /**
   * One frame to `to`, on its link (opened if there is none; a member that speaks only
   * `/shepherd/swim/1.0.0` gets a stream of its own). A member this view holds suspect or dead is
   * told so on every frame (memberlist's buddy system, extended to acks and pokes): it refutes at once.
   */
  private async send (to: string, msg: SwimMessage, opts: { fresh?: boolean } = {}): Promise<void> {
    const s = this.state
    if (s == null) return
    const m = memberOf(s, to)
    if (m != null && (m.status === 'suspect' || m.status === 'dead') && !msg.u.some(u => u[0] === to)) {
      msg = { ...msg, u: [[to, m.inc, m.status, this.self] as SwimUpdate, ...msg.u] }
    }
    if (msg.u.length > MAX_SWIM_UPDATES) msg = { ...msg, u: msg.u.slice(0, MAX_SWIM_UPDATES) }
    const frame: SwimFrame = { v: SWIM_VERSION, inc: s.incarnation, boot: this.opts.boot, snap: this.opts.snapshotVersion(), ...this.opts.meta?.(), m: msg }
    // Bounded by two probe intervals: a frozen peer must not pile up streams or writes.
    try {
      await this.transport.send(to, frame, AbortSignal.timeout(2 * this.opts.config.probeIntervalMs), opts)
      this.stats.framesSent++
    } catch (err) {
      // A lost frame is what SWIM expects (a dead or unreachable peer): the probe times out.
      this.stats.sendFailures++
      // Evidence of being cut off only when the peer was believed reachable and the way to it
      // failed: a member held dead fails as expected (it is poked while connected); a refused
      // connection is its host saying the process is gone (a cut-off node sees timeouts, not
      // refusals); a refused protocol is a peer that does not speak SWIM. Counted, two stopped
      // members once made a quiet node of a small mesh take its one live peer for dead.
      if (m?.status !== 'dead' && !saysNothingOfUs(err)) this.failedSinceHeard.add(to)
      this.log.trace('swim send failed', { peer: to, t: msg.t, err })
    }
  }

  /** A valid frame from `from` (checked and rate-held by the transport). */
  private handle (from: string, frame: SwimFrame): void {
    if (!this.running || this.paused || this.state == null) return
    this.stats.framesReceived++
    this.failedSinceHeard.clear()
    const now = Date.now()
    if (frame.m.t === 'ack') {
      const p = this.pings.get(frame.m.seq)
      if (p != null && p.to === from) {
        this.pings.delete(frame.m.seq)
        this.opts.onRtt?.(from, now - p.at)
      }
    }
    const state = this.state
    const { updates: u, screened } = screenUpdates(from, frame, { self: this.self, selfInc: state.incarnation, view: id => memberOf(state, id), verified: this.opts.verified })
    this.stats.screened += screened
    this.opts.onFrame?.(from, frame)
    this.apply({ t: 'recv', from, msg: { ...frame.m, u } })
    // It spoke, at an incarnation we hold suspect or dead (slow, not gone): tell it now, so its
    // refutation need not wait for the suspicion to reach it by gossip. An ack or ping we send it
    // anyway carries the notice already.
    if (frame.m.t !== 'ping' && frame.m.t !== 'ping-req') this.poke(from)
  }
}

async function sleep (ms: number): Promise<void> {
  await new Promise(resolve => setTimeout(resolve, ms))
}
