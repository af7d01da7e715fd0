import { multiaddr } from '@multiformats/multiaddr'
import { peerIdFromString } from '@libp2p/peer-id'
import type { PeerId } from '@libp2p/interface'
import { createLogger } from '../logger.js'
import type { Host } from './host.js'
import { reachableAddresses } from './addresses.js'
import { TokenBuckets } from './token-buckets.js'

export interface RedialerOptions {
  minMs: number
  maxMs: number
  /**
   * Time allowed for one dial (default 5 s): a handshake with a member that is busy, or started
   * a moment ago, can take seconds on a loaded host; at 1.5 s most of a 48th node's dials on 2
   * cores timed out, and a hint dropped after such failures left the pair unconnected.
   */
  dialTimeoutMs?: number
  /** Called when a dial to a known peer was refused: nothing listens on any of its addresses. */
  onRefused: (id: string) => void
  /** Whether a known peer should be dialed now (not connected, not departed). */
  isWanted: (id: string) => boolean
  /** Peers heard of only through gossip kept as dial targets at once (default 64). */
  maxHinted?: number
  /** Failed dials after which a peer heard of only through gossip is dropped (default 3). */
  maxHintAttempts?: number
  /** Dials a second to peers heard of only through gossip, all of them together (default 10, burst 20). */
  hintDialsPerSec?: number
  /**
   * Dials of known and hinted peers under way at once (default 8); the rest wait for a slot, and
   * their time limit starts when they go. A newcomer that learns a whole mesh at once otherwise
   * runs dozens of handshakes side by side on its own CPU, each past its time limit. Peers heard
   * of only through gossip take half the slots at most: ghosts naming ports that hold a
   * handshake open cannot keep the peers this node met from being dialed.
   */
  maxDialsInFlight?: number
}

interface Target {
  /** Where to dial it (reachable addresses, each with the peer id); empty: ask the peer store. */
  addrs?: string[]
  attempts: number
  nextAt: number
  inFlight: boolean
  /** A dial was asked for while one was in flight: run it as soon as that one ends. */
  again?: boolean
  /**
   * Heard of only through gossip (a snapshot's addresses), never connected: such a target is
   * bounded in number, rate-limited and dropped after a few failed dials, because anyone can
   * claim any address (200 ghost peers naming one victim port once made 7,090 connections to it).
   */
  hinted?: boolean
  /** Longest backoff for this target (a peer gone for long is dialed less often). */
  maxMs?: number
  /** The parsed id, kept: `run` asks whether each target is connected several times a second. */
  pid?: PeerId
}

/** Connection refused on every address means the process is gone, not the network. */
export function isRefused (err: unknown): boolean {
  // Depth-bounded rather than cycle-tracked: the same error may appear once per address.
  const walk = (e: any, depth: number): boolean => {
    if (e == null || depth > 8) return false
    if (e.code === 'ECONNREFUSED' || /ECONNREFUSED/.test(String(e.message ?? ''))) return true
    if (Array.isArray(e.errors) && e.errors.length > 0) return e.errors.every((x: unknown) => walk(x, depth + 1))
    return walk(e.cause, depth + 1)
  }
  return walk(err, 0)
}

/** The redialer's targets (those heard of only through gossip or member lists counted apart as `hinted`) and its dials. */
export interface RedialStats { targets: number, hinted: number, dials: number, hintDials: number, hintsRefused: number, hintsDropped: number, failed: number }

/**
 * Keeps the mesh connected: dials bootstrap addresses and known peers that are not connected,
 * with exponential backoff between `minMs` and `maxMs` (seed 000's 1, 2, 4 ... s, but faster).
 */
export class Redialer {
  private readonly peers = new Map<string, Target>()
  private readonly bootstrap = new Map<string, Target & { peer?: string }>()
  private timer?: NodeJS.Timeout
  private readonly log = createLogger('p2p:redialer')
  private stopped = false
  private readonly hintDials: TokenBuckets
  /** Gossip-only targets dropped (newest 4,096): libp2p may announce them again as discovered. */
  private readonly droppedHints = new Set<string>()
  /** Dials made, by kind: what the flood tests count (work, not time). */
  readonly stats = { dials: 0, hintDials: 0, hintsRefused: 0, hintsDropped: 0, failed: 0 }
  /** Dials of `peers` under way (bootstrap dials are few and not counted), and of those the hinted ones. */
  private inFlight = 0
  private hintedInFlight = 0
  private readonly maxInFlight: number
  private readonly maxHintedInFlight: number

  constructor (private readonly host: Host, private readonly opts: RedialerOptions) {
    const rate = opts.hintDialsPerSec ?? 10
    this.hintDials = new TokenBuckets(rate, 2 * rate)
    this.maxInFlight = opts.maxDialsInFlight ?? 8
    this.maxHintedInFlight = Math.max(1, Math.floor(this.maxInFlight / 2))
  }

  /** Targets now (hinted ones included), for tests and metrics. */
  size (): { targets: number, hinted: number } {
    let hinted = 0
    for (const t of this.peers.values()) if (t.hinted === true) hinted++
    return { targets: this.peers.size, hinted }
  }

  has (id: string): boolean {
    return this.peers.has(id)
  }

  start (): void {
    this.timer = setInterval(() => { this.run() }, Math.max(50, Math.min(200, this.opts.minMs)))
    this.timer.unref()
    this.run()
  }

  stop (): void {
    this.stopped = true
    clearInterval(this.timer)
  }

  addBootstrap (addr: string): void {
    if (!this.bootstrap.has(addr)) this.bootstrap.set(addr, { attempts: 0, nextAt: 0, inFlight: false })
  }

  /** A peer this node met (a connection, identify, mDNS, the store of peers met before). */
  addPeer (id: string, addrs: string[]): void {
    if (id === this.host.peerId.toString()) return
    this.droppedHints.delete(id)
    let t = this.peers.get(id)
    if (t == null) this.peers.set(id, t = { attempts: 0, nextAt: 0, inFlight: false })
    t.hinted = false
    t.maxMs = undefined
    const usable = usableAddrs(id, addrs)
    if (usable.length > 0) t.addrs = usable
  }

  /**
   * A peer libp2p's peer store announces (`peer:discovery`: mDNS, but also any peer a dial of ours
   * named): a target like `addPeer`, except that a gossip-only target stays one and a dropped one
   * stays dropped (dialing a ghost's address put it in the peer store, which announced it as
   * discovered: it became a target dialed for ever). False when ignored.
   */
  addDiscovered (id: string, addrs: string[]): boolean {
    if (this.peers.get(id)?.hinted === true || this.droppedHints.has(id)) return false
    this.addPeer(id, addrs)
    return true
  }

  private dropHint (id: string): void {
    this.peers.delete(id)
    this.stats.hintsDropped++
    this.droppedHints.add(id)
    if (this.droppedHints.size > 4096) this.droppedHints.delete(this.droppedHints.values().next().value as string)
  }

  /**
   * A peer heard of only through gossip (its snapshot, relayed): dialed so the mesh stays full,
   * but at most `maxHinted` such targets at once (false: refused) and never overriding the
   * addresses of a peer this node met itself.
   */
  addHint (id: string, addrs: string[]): boolean {
    if (id === this.host.peerId.toString()) return false
    const t = this.peers.get(id)
    if (t != null) {
      if (t.hinted === true && t.addrs == null) t.addrs = usableAddrs(id, addrs)
      return true
    }
    const usable = usableAddrs(id, addrs)
    if (usable.length === 0 || this.size().hinted >= (this.opts.maxHinted ?? 64)) {
      this.stats.hintsRefused++
      return false
    }
    this.peers.set(id, { attempts: 0, nextAt: 0, inFlight: false, addrs: usable, hinted: true })
    return true
  }

  /**
   * The peer is dead and its record evicted: a target heard of only through gossip is dropped; a
   * peer met before is kept (a restart comes back) but dialed at most every `slowMs`.
   */
  forget (id: string, slowMs = 30_000): void {
    const t = this.peers.get(id)
    if (t == null) return
    if (t.hinted === true) {
      this.dropHint(id)
    } else {
      t.maxMs = Math.max(this.opts.maxMs, slowMs)
    }
  }

  /** Dial this peer now unless a dial is already under way (cheap to call on every heartbeat). */
  dialSoon (id: string): void {
    const t = this.peers.get(id)
    if (t == null || t.inFlight) return
    t.nextAt = 0
    this.dialPeer(id, t)
  }

  /** Dial this peer at once, ignoring its backoff. */
  dialNow (id: string): void {
    const t = this.peers.get(id)
    if (t == null) return
    t.nextAt = 0
    t.attempts = 0
    // An older dial (say, to a peer that was frozen) may still be pending; its outcome says
    // nothing about the peer now, so dial again once it ends.
    if (t.inFlight) t.again = true
    else this.dialPeer(id, t)
  }

  private backoff (t: Target): void {
    t.attempts++
    t.nextAt = Date.now() + Math.min(t.maxMs ?? this.opts.maxMs, this.opts.minMs * 2 ** Math.min(30, t.attempts - 1))
  }

  private connected (id: string, t?: { pid?: PeerId }): boolean {
    // Parsing an id (base58 and a key) per target per run was most of an idle node's redial cost.
    const pid = t != null ? (t.pid ??= peerIdFromString(id)) : peerIdFromString(id)
    return this.host.getConnections(pid).length > 0
  }

  private run (): void {
    if (this.stopped) return
    const now = Date.now()
    for (const [addr, t] of this.bootstrap) {
      if (t.inFlight || t.nextAt > now) continue
      if (t.peer != null && this.connected(t.peer, t)) continue
      t.inFlight = true
      this.host.dial(multiaddr(addr), { signal: AbortSignal.timeout(this.opts.dialTimeoutMs ?? 5000) })
        .then(conn => {
          t.peer = conn.remotePeer.toString()
          t.pid = conn.remotePeer
          t.attempts = 0
          this.addPeer(t.peer, [])
        })
        .catch(err => {
          this.log.debug('bootstrap dial failed', { addr, err })
          this.backoff(t)
        })
        .finally(() => { t.inFlight = false })
    }
    this.runPeers(now, Infinity)
  }

  /** Dials up to `n` due targets (those that got a slot). */
  private runPeers (now: number, n: number): void {
    if (this.stopped) return
    for (const [id, t] of this.peers) {
      if (n <= 0 || this.inFlight >= this.maxInFlight) return
      if (t.inFlight || t.nextAt > now) continue
      if (this.dialPeer(id, t)) n--
    }
  }

  /** Starts a dial of `id` unless it needs none or has no slot; whether it started one. */
  private dialPeer (id: string, t: Target): boolean {
    if (this.stopped || t.inFlight || this.connected(id, t) || !this.opts.isWanted(id)) return false
    const hinted = t.hinted === true
    // No slot: it stays due, and goes when a dial under way ends (or at the next run).
    if (this.inFlight >= this.maxInFlight || (hinted && this.hintedInFlight >= this.maxHintedInFlight)) return false
    if (hinted) {
      if (!this.hintDials.take('all')) return false
      this.stats.hintDials++
    }
    const target = t.addrs != null && t.addrs.length > 0 ? t.addrs.map(a => multiaddr(a)) : peerIdFromString(id)
    this.stats.dials++
    t.inFlight = true
    this.inFlight++
    if (hinted) this.hintedInFlight++
    this.host.dial(target, { signal: AbortSignal.timeout(this.opts.dialTimeoutMs ?? 5000) })
      .then(() => {
        t.attempts = 0
        // Met now: its identify gives the addresses it listens on.
        t.hinted = false
      })
      .catch(err => {
        this.stats.failed++
        if (isRefused(err)) this.opts.onRefused(id)
        this.log.debug('dial failed', { peer: id, err })
        this.backoff(t)
        if (t.hinted === true && t.attempts >= (this.opts.maxHintAttempts ?? 3) && this.peers.get(id) === t) this.dropHint(id)
      })
      .finally(() => {
        t.inFlight = false
        this.inFlight--
        if (hinted) this.hintedInFlight--
        if (t.again === true && this.peers.get(id) === t) {
          t.again = false
          t.nextAt = 0
          this.dialPeer(id, t)
        }
        // A slot is free: the next due target goes now rather than at the next run.
        this.runPeers(Date.now(), 1)
      })
    return true
  }
}

/** A peer's reachable addresses, each naming the peer (see `addPeer`). */
function usableAddrs (id: string, addrs: string[]): string[] {
  // Our own list, not the peer store's: libp2p adds every address mDNS and identify report,
  // loopback ones included, and a dial of those must not decide whether a peer is gone.
  return reachableAddresses(addrs).slice(0, 16).map(a => a.includes('/p2p/') ? a : `${a}/p2p/${id}`)
}
