import type { Connection, Stream } from '@libp2p/interface'
import { peerIdFromString } from '@libp2p/peer-id'
import { WireError } from '../errors.js'
import { createLogger } from '../logger.js'
import { FramedStream } from './framing.js'
import type { Host } from './host.js'
import {
  MAX_SWIM_FRAME_BYTES, MAX_SWIM_FRAMES_PER_SEC, MAX_SWIM_LINKS, MAX_SWIM_STREAMS, SWIM_LINK_IDLE_MS, SWIM_LINK_PROTOCOL,
  SWIM_PROTOCOL, SWIM_READ_TIMEOUT_MS, isSwimFrame, type SwimFrame
} from './swim-protocol.js'
import { TokenBuckets } from './token-buckets.js'

/** A link closed for idleness that its peer does not close in turn is reset after this long. */
const LINK_CLOSE_GRACE_MS = 5_000

/** A long-lived `/shepherd/swim/1.1.0` stream to or from one member (see swim-protocol.ts). */
interface Link {
  peer: string
  stream: Stream
  framed: FramedStream
  /** Last frame sent or received on it (idle links are closed). */
  usedAt: number
  /** When it was closed for idleness (reset if the peer keeps it open). */
  closingAt?: number
}

export interface SwimTransportOptions {
  /** A valid frame arrived from `from` (within its sender's frame rate). */
  onFrame: (from: string, frame: SwimFrame) => void
  /** A member broke the protocol; its stream was reset. */
  onViolation: (peer: string, reason: string) => void
  /** Time a member that opens a stream or link has to send its first frame. */
  readTimeoutMs?: number
  /** 1.0.0 streams open at once per connection. */
  maxStreams?: number
  /** Idle time after which a link is closed (default `SWIM_LINK_IDLE_MS`; tests shorten it). */
  linkIdleMs?: number
  /** Frames per second a member may send (default `MAX_SWIM_FRAMES_PER_SEC`). */
  maxFramesPerSec?: number
  /** Only one frame per stream (`/shepherd/swim/1.0.0`), as before links: tests of mixed versions. */
  legacyOnly?: boolean
}

/** Counters this transport adds to (the driver's `SwimDriverStats`). */
export interface SwimTransportStats {
  violations: number
  /** Links opened, by this node or to it. */
  linksOpened: number
  /** Frames dropped because their sender went past `MAX_SWIM_FRAMES_PER_SEC`. */
  rateLimited: number
}

/**
 * How SWIM frames travel between members: on one long-lived link per pair
 * (`/shepherd/swim/1.1.0`, opened by whichever member needs it first, carrying frames both ways,
 * closed when idle), or one stream per frame with a member that speaks only 1.0.0. Every frame
 * is checked here once (`isSwimFrame`) and held to its sender's frame rate; what breaks the
 * protocol resets the stream and is reported.
 */
export class SwimTransport {
  /** The link each member's frames are sent on (one per member). */
  private readonly links = new Map<string, Link>()
  /** Every link open, the ones not in `links` too (both ends dialed at once), for the idle sweep. */
  private readonly allLinks = new Set<Link>()
  /** Links being opened, so that frames sent meanwhile share the one dial. */
  private readonly opening = new Map<string, Promise<Link | Stream>>()
  private readonly frameBudget: TokenBuckets
  private readonly log = createLogger('p2p:swim')
  private sweepTimer?: NodeJS.Timeout

  constructor (private readonly host: Host, private readonly stats: SwimTransportStats, private readonly opts: SwimTransportOptions) {
    const rate = opts.maxFramesPerSec ?? MAX_SWIM_FRAMES_PER_SEC
    this.frameBudget = new TokenBuckets(rate, 2 * rate)
  }

  async start (): Promise<void> {
    const max = this.opts.maxStreams ?? MAX_SWIM_STREAMS
    await this.host.handle(SWIM_PROTOCOL, (stream, conn) => {
      this.onStream(stream, conn).catch(err => {
        this.log.debug('swim stream failed', { err })
        stream.abort(err)
      })
    }, { maxInboundStreams: max, maxOutboundStreams: max })
    if (this.opts.legacyOnly !== true) {
      await this.host.handle(SWIM_LINK_PROTOCOL, (stream, conn) => {
        this.attach(conn.remotePeer.toString(), stream, 'in')
      }, { maxInboundStreams: MAX_SWIM_LINKS, maxOutboundStreams: MAX_SWIM_LINKS })
    }
    // Its own period, a fraction of the idle time: a link closes soon after it went idle, not
    // whenever a probe tick happens to come (a sweep costs a pass over a few dozen links).
    const idleMs = this.opts.linkIdleMs ?? SWIM_LINK_IDLE_MS
    this.sweepTimer = setInterval(() => { this.sweep(Date.now()) }, Math.max(100, Math.min(5_000, Math.floor(idleMs / 4))))
    this.sweepTimer.unref()
  }

  async stop (): Promise<void> {
    clearInterval(this.sweepTimer)
    for (const l of this.allLinks) l.stream.abort(new Error('SWIM stopped'))
    this.allLinks.clear()
    this.links.clear()
    await this.host.unhandle(SWIM_PROTOCOL).catch(() => {})
    await this.host.unhandle(SWIM_LINK_PROTOCOL).catch(() => {})
  }

  /** Links open now (tests, `/metrics`). */
  linkCount (): number {
    return this.allLinks.size
  }

  /**
   * One frame to `to`, on its link (opened if there is none), or on a stream of its own to a
   * member that speaks only 1.0.0. Throws when it could not be sent (a lost frame, to SWIM).
   */
  async send (to: string, frame: SwimFrame, signal: AbortSignal, opts: { fresh?: boolean } = {}): Promise<void> {
    let stream: Stream | undefined
    try {
      const route = opts.fresh === true ? await this.freshRoute(to, signal) : await this.route(to, signal)
      if ('framed' in route) {
        await route.framed.write(frame, signal)
        route.usedAt = Date.now()
      } else {
        stream = route
        const framed = new FramedStream(stream, { read: MAX_SWIM_FRAME_BYTES, write: MAX_SWIM_FRAME_BYTES })
        await framed.write(frame, signal)
        await stream.close({ signal })
      }
    } catch (err) {
      const e = err instanceof Error ? err : new Error(String(err))
      stream?.abort(e)
      // A link whose write failed is not trusted with the next frame.
      const link = this.links.get(to)
      if (link != null && link.stream.writeStatus !== 'writable') this.drop(link, e)
      throw err
    }
  }

  /** The link to `to` (opened, or shared with a dial under way), or a one-frame 1.0.0 stream. */
  private async route (to: string, signal: AbortSignal): Promise<Link | Stream> {
    const have = this.links.get(to)
    if (have != null && have.stream.writeStatus === 'writable') return have
    const pending = this.opening.get(to)
    if (pending != null) {
      const r = await pending.catch(() => undefined)
      if (r != null && 'framed' in r) return r
    }
    const p = (async (): Promise<Link | Stream> => {
      const protocols = this.opts.legacyOnly === true ? [SWIM_PROTOCOL] : [SWIM_LINK_PROTOCOL, SWIM_PROTOCOL]
      const stream = await this.host.dialProtocol(peerIdFromString(to), protocols, { signal })
      return stream.protocol === SWIM_LINK_PROTOCOL ? this.attach(to, stream, 'out') : stream
    })()
    this.opening.set(to, p)
    try {
      return await p
    } finally {
      if (this.opening.get(to) === p) this.opening.delete(to)
    }
  }

  /**
   * A link on a new connection to `to`, replacing the ones it has. For a member held dead while
   * still connected (a partition): frames queued on its connections during the loss sit in TCP's
   * retransmission backoff after the network heals (3.4 s seen, more the longer the loss), and
   * every frame sent on them waits behind those. A new connection carries the first frame at
   * once; the old ones, stale, are reset.
   */
  private async freshRoute (to: string, signal: AbortSignal): Promise<Link | Stream> {
    const pid = peerIdFromString(to)
    const conn = await this.host.dial(pid, { force: true, signal })
    const protocols = this.opts.legacyOnly === true ? [SWIM_PROTOCOL] : [SWIM_LINK_PROTOCOL, SWIM_PROTOCOL]
    const stream = await conn.newStream(protocols, { signal })
    for (const old of this.host.getConnections(pid)) if (old.id !== conn.id) old.abort(new Error('replaced by a new connection after a loss'))
    if (stream.protocol !== SWIM_LINK_PROTOCOL) return stream
    const link = this.attach(to, stream, 'out')
    this.links.set(to, link)
    return link
  }

  /** Takes a link (dialed, or opened by the peer) into use and reads its frames until it ends. */
  private attach (peer: string, stream: Stream, dir: 'in' | 'out'): Link {
    const link: Link = { peer, stream, framed: new FramedStream(stream, { read: MAX_SWIM_FRAME_BYTES, write: MAX_SWIM_FRAME_BYTES }), usedAt: Date.now() }
    this.stats.linksOpened++
    this.allLinks.add(link)
    const current = this.links.get(peer)
    // Both ends may dial at once: each keeps sending on the link it had, and reads both.
    if (current == null || current.stream.writeStatus !== 'writable') this.links.set(peer, link)
    stream.addEventListener('close', () => { this.forget(link) })
    this.readLink(link, dir === 'in').catch(err => {
      this.log.debug('swim link failed', { peer, err })
      this.drop(link, err instanceof Error ? err : new Error(String(err)))
    })
    return link
  }

  private async readLink (link: Link, inbound: boolean): Promise<void> {
    // The member that opened a link must send its first frame at once (as on a 1.0.0 stream);
    // after that a link may be quiet until it is closed for idleness.
    let first = inbound
    for (;;) {
      let frame: unknown
      try {
        frame = await link.framed.read(undefined, first ? (this.opts.readTimeoutMs ?? SWIM_READ_TIMEOUT_MS) : undefined)
      } catch (err: any) {
        // Malformed bytes, or silence where the first frame was due: the peer broke the protocol.
        // A reset or closed connection ends the link, and says nothing about the peer.
        if (err instanceof WireError || first) {
          this.violation(link.peer, link.stream, err instanceof WireError ? `${err.code}: ${err.message}` : `no frame: ${err?.message ?? err}`)
        }
        this.forget(link)
        return
      }
      if (frame === null) {
        // The peer closed its side (idle): close ours.
        this.forget(link)
        void link.stream.close().catch(() => {})
        return
      }
      if (!isSwimFrame(frame)) {
        this.violation(link.peer, link.stream, 'not a SWIM frame')
        this.forget(link)
        return
      }
      first = false
      link.usedAt = Date.now()
      if (!this.frameBudget.take(link.peer)) {
        // A member flooding frames: dropped (SWIM tolerates loss); persisting, its link is reset.
        this.stats.rateLimited++
        if (!this.frameBudget.take(`${link.peer}:flood`)) {
          this.violation(link.peer, link.stream, `more than ${this.opts.maxFramesPerSec ?? MAX_SWIM_FRAMES_PER_SEC} frames/s`)
          this.forget(link)
          return
        }
        continue
      }
      // Frames to a member go on the link it was last heard on. Two members often hold two TCP
      // connections (both dialed at once); after a partition heals, the one with frames queued
      // in it waits out TCP's retransmission backoff (3.4 s seen), while the other carries
      // frames at once: the link a frame just came in on is the one that is known to work.
      if (this.links.get(link.peer) !== link && link.stream.writeStatus === 'writable') this.links.set(link.peer, link)
      this.opts.onFrame(link.peer, frame)
    }
  }

  private violation (peer: string, stream: Stream, reason: string): void {
    this.stats.violations++
    this.opts.onViolation(peer, reason)
    stream.abort(new WireError(reason, 'malformed'))
  }

  private forget (link: Link): void {
    this.allLinks.delete(link)
    if (this.links.get(link.peer) === link) this.links.delete(link.peer)
  }

  private drop (link: Link, err: Error): void {
    this.forget(link)
    link.stream.abort(err)
  }

  /** Closes links idle past `linkIdleMs` (the peer closes its side in turn), and resets those it does not. */
  private sweep (now: number): void {
    const idleMs = this.opts.linkIdleMs ?? SWIM_LINK_IDLE_MS
    for (const link of this.allLinks) {
      if (link.closingAt != null) {
        if (now - link.closingAt > LINK_CLOSE_GRACE_MS) this.drop(link, new Error('SWIM link not closed by its peer'))
      } else if (now - link.usedAt > idleMs) {
        link.closingAt = now
        if (this.links.get(link.peer) === link) this.links.delete(link.peer)
        void link.stream.close({ signal: AbortSignal.timeout(LINK_CLOSE_GRACE_MS) }).catch(() => {})
      }
    }
  }

  /** A `/shepherd/swim/1.0.0` stream: one frame, then closed. */
  private async onStream (stream: Stream, conn: Connection): Promise<void> {
    const from = conn.remotePeer.toString()
    const framed = new FramedStream(stream, { read: MAX_SWIM_FRAME_BYTES, write: MAX_SWIM_FRAME_BYTES })
    let frame: unknown
    let reason = 'not a SWIM frame'
    try {
      frame = await framed.read(undefined, this.opts.readTimeoutMs ?? SWIM_READ_TIMEOUT_MS)
    } catch (err: any) {
      frame = undefined
      reason = err instanceof WireError ? `${err.code}: ${err.message}` : `no frame: ${err?.message ?? err}`
    }
    if (!isSwimFrame(frame)) {
      this.violation(from, stream, reason)
      return
    }
    void stream.close().catch(() => {})
    if (!this.frameBudget.take(from)) {
      this.stats.rateLimited++
      return
    }
    this.opts.onFrame(from, frame)
  }
}
