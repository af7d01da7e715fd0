import { multiaddr } from '@multiformats/multiaddr'
import { peerIdFromString } from '@libp2p/peer-id'
import { createLogger } from '../logger.js'
import type { Host } from './host.js'
import { reachableAddresses } from './addresses.js'

export interface RedialerOptions {
  minMs: number
  maxMs: number
  /** Time allowed for one dial. */
  dialTimeoutMs?: number
  /** Called when a dial to a known peer was refused: nothing listens on any of its addresses. */
  onRefused: (id: string) => void
  /** Whether a known peer should be dialed now (not connected, not departed). */
  isWanted: (id: string) => boolean
}

interface Target {
  /** Where to dial it (reachable addresses, each with the peer id); empty: ask the peer store. */
  addrs?: string[]
  attempts: number
  nextAt: number
  inFlight: boolean
  /** A dial was asked for while one was in flight: run it as soon as that one ends. */
  again?: boolean
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

  constructor (private readonly host: Host, private readonly opts: RedialerOptions) {}

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

  addPeer (id: string, addrs: string[]): void {
    if (id === this.host.peerId.toString()) return
    let t = this.peers.get(id)
    if (t == null) this.peers.set(id, t = { attempts: 0, nextAt: 0, inFlight: false })
    // Our own list, not the peer store's: libp2p adds every address mDNS and identify report,
    // loopback ones included, and a dial of those must not decide whether a peer is gone.
    const usable = reachableAddresses(addrs).map(a => a.includes('/p2p/') ? a : `${a}/p2p/${id}`)
    if (usable.length > 0) t.addrs = usable
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
    t.nextAt = Date.now() + Math.min(this.opts.maxMs, this.opts.minMs * 2 ** (t.attempts - 1))
  }

  private connected (id: string): boolean {
    return this.host.getConnections(peerIdFromString(id)).length > 0
  }

  private run (): void {
    if (this.stopped) return
    const now = Date.now()
    for (const [addr, t] of this.bootstrap) {
      if (t.inFlight || t.nextAt > now) continue
      if (t.peer != null && this.connected(t.peer)) continue
      t.inFlight = true
      this.host.dial(multiaddr(addr), { signal: AbortSignal.timeout(this.opts.dialTimeoutMs ?? 1500) })
        .then(conn => {
          t.peer = conn.remotePeer.toString()
          t.attempts = 0
          this.addPeer(t.peer, [])
        })
        .catch(err => {
          this.log.debug('bootstrap dial failed', { addr, err })
          this.backoff(t)
        })
        .finally(() => { t.inFlight = false })
    }
    for (const [id, t] of this.peers) {
      if (t.inFlight || t.nextAt > now) continue
      this.dialPeer(id, t)
    }
  }

  private dialPeer (id: string, t: Target): void {
    if (this.stopped || t.inFlight || this.connected(id) || !this.opts.isWanted(id)) return
    t.inFlight = true
    const target = t.addrs != null && t.addrs.length > 0 ? t.addrs.map(a => multiaddr(a)) : peerIdFromString(id)
    this.host.dial(target, { signal: AbortSignal.timeout(this.opts.dialTimeoutMs ?? 1500) })
      .then(() => { t.attempts = 0 })
      .catch(err => {
        if (isRefused(err)) this.opts.onRefused(id)
        this.log.debug('dial failed', { peer: id, err })
        this.backoff(t)
      })
      .finally(() => {
        t.inFlight = false
        if (t.again === true) {
          t.again = false
          t.nextAt = 0
          this.dialPeer(id, t)
        }
      })
  }
}
