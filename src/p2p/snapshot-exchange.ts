import { peerIdFromString } from '@libp2p/peer-id'
import type { Connection, Stream } from '@libp2p/interface'
import { WireError } from '../errors.js'
import { createLogger } from '../logger.js'
import { MAX_MEMBERSHIP_MESSAGE_BYTES } from './constants.js'
import { FramedStream } from './framing.js'
import type { Host } from './host.js'
import { TokenBuckets } from './token-buckets.js'

/**
 * `/shepherd/snapshot/1.0.0`: a member's snapshot, pulled from it directly.
 *
 * Why: when a node joins, it lacks every member's snapshot and every member lacks its own. On the
 * gossip topic the only way to hand one over is to publish it, and a publish reaches everyone: so
 * each join made every member publish to every member (N² snapshot deliveries a join, N³ for a
 * mesh coming up), and a 32-node mesh took minutes to settle on two cores. Pulled, a join costs
 * two transfers per pair, each to the one node that lacks it (memberlist's push-pull on join).
 *
 * Shape (like `/shepherd/vote/1.0.0`): the puller sends one small frame, `{ v: 1 }`; the owner
 * answers one frame, its membership `snap` message encoded as on the gossip topic, and closes.
 * The answer is taken as the stream's remote peer's (noise-authenticated), never the body's, and
 * goes through the same decoding, byte budget and merge as a gossiped snapshot.
 *
 * Bounds: a puller is answered at most `PULLS_PER_SEC` times a second per peer (burst
 * `PULL_BURST`); past that the stream is reset and the peer reported (audited by the node). A
 * stream that sends no request within `PULL_READ_TIMEOUT_MS` is reset and reported too.
 */
export const SNAPSHOT_PROTOCOL = '/shepherd/snapshot/1.0.0'
const REQUEST_BYTES = 256
export const PULL_READ_TIMEOUT_MS = 2000
const PULL_TIMEOUT_MS = 5000
const PULLS_PER_SEC = 1
const PULL_BURST = 4
const MAX_STREAMS = 16
/** Pulls this node runs at once: a node joining a mesh of 48 pulls 47 snapshots, a few at a time. */
const MAX_PULLS_IN_FLIGHT = 4

export interface SnapshotExchangeDeps {
  /** This node's current snapshot message, encoded (a fresh `seq` each time). */
  current: () => Uint8Array
  /** A pulled snapshot from `from` (the stream's authenticated remote peer): decode, budget and merge it. */
  onSnapshot: (from: string, bytes: Uint8Array) => void
  /** Only members are answered and pulled from. */
  isMember: (peer: string) => boolean
  onViolation?: (peer: string, reason: string) => void
}

export interface SnapshotExchangeStats {
  pulled: number
  pullFailures: number
  served: number
  refused: number
}

/** Serves this node's snapshot and pulls others', a few at a time, each peer at most once at a time. */
export class SnapshotExchange {
  private readonly log = createLogger('p2p:snapshot')
  private readonly buckets = new TokenBuckets(PULLS_PER_SEC, PULL_BURST)
  private readonly queued = new Set<string>()
  private readonly inFlight = new Set<string>()
  private stopped = false
  readonly stats: SnapshotExchangeStats = { pulled: 0, pullFailures: 0, served: 0, refused: 0 }

  constructor (private readonly host: Host, private readonly deps: SnapshotExchangeDeps) {}

  async start (): Promise<void> {
    await this.host.handle(SNAPSHOT_PROTOCOL, (stream, conn) => {
      this.serve(stream, conn).catch(err => {
        this.log.debug('snapshot stream failed', { err })
        stream.abort(err)
      })
    }, { maxInboundStreams: MAX_STREAMS, maxOutboundStreams: MAX_STREAMS })
  }

  async stop (): Promise<void> {
    this.stopped = true
    this.queued.clear()
    await this.host.unhandle(SNAPSHOT_PROTOCOL).catch(() => {})
  }

  /** Whether `peer` said (in identify) that it answers pulls. Unknown: false (it is asked with `want` instead). */
  async supports (peer: string): Promise<boolean> {
    try {
      const p = await this.host.peerStore.get(peerIdFromString(peer))
      return p.protocols.includes(SNAPSHOT_PROTOCOL)
    } catch {
      return false
    }
  }

  /** Pulls `peer`'s snapshot soon (once, however often asked while it is queued or running). */
  want (peer: string): void {
    if (this.stopped || this.inFlight.has(peer) || this.queued.has(peer)) return
    this.queued.add(peer)
    this.next()
  }

  /** Whether a pull of `peer` is queued or running. */
  pending (peer: string): boolean {
    return this.queued.has(peer) || this.inFlight.has(peer)
  }

  private next (): void {
    while (!this.stopped && this.inFlight.size < MAX_PULLS_IN_FLIGHT && this.queued.size > 0) {
      const peer = this.queued.values().next().value as string
      this.queued.delete(peer)
      this.inFlight.add(peer)
      void this.pull(peer).finally(() => {
        this.inFlight.delete(peer)
        this.next()
      })
    }
  }

  private async pull (peer: string): Promise<void> {
    if (!this.deps.isMember(peer) || this.host.getConnections(peerIdFromString(peer)).length === 0) return
    let stream: Stream | undefined
    const signal = AbortSignal.timeout(PULL_TIMEOUT_MS)
    try {
      stream = await this.host.dialProtocol(peerIdFromString(peer), SNAPSHOT_PROTOCOL, { signal })
      const framed = new FramedStream(stream, { read: MAX_MEMBERSHIP_MESSAGE_BYTES, write: REQUEST_BYTES })
      await framed.write({ v: 1 }, signal)
      const bytes = await framed.readBytes(signal)
      if (bytes == null) throw new WireError('the peer closed the stream without its snapshot', 'stream_reset')
      await stream.close().catch(() => {})
      this.stats.pulled++
      // A copy: the frame's bytes are a view into the stream's buffer.
      this.deps.onSnapshot(peer, bytes.slice())
    } catch (err) {
      this.stats.pullFailures++
      stream?.abort(err instanceof Error ? err : new Error(String(err)))
      this.log.debug('snapshot pull failed', { peer, err })
    }
  }

  private async serve (stream: Stream, conn: Connection): Promise<void> {
    const peer = conn.remotePeer.toString()
    if (!this.deps.isMember(peer)) {
      this.stats.refused++
      stream.abort(new WireError('snapshots are given to members only', 'unauthorized'))
      return
    }
    const framed = new FramedStream(stream, { read: REQUEST_BYTES, write: MAX_MEMBERSHIP_MESSAGE_BYTES })
    let req: unknown
    try {
      req = await framed.read(undefined, PULL_READ_TIMEOUT_MS)
    } catch {
      req = undefined
    }
    if (typeof req !== 'object' || req == null || (req as { v?: unknown }).v !== 1) {
      this.stats.refused++
      this.deps.onViolation?.(peer, 'no valid request')
      stream.abort(new WireError('not a snapshot request', 'malformed'))
      return
    }
    if (!this.buckets.take(peer)) {
      this.stats.refused++
      this.deps.onViolation?.(peer, `pulls past ${PULLS_PER_SEC}/s`)
      stream.abort(new WireError('too many snapshot pulls', 'rate_limited'))
      return
    }
    this.stats.served++
    await framed.writeBytes([this.deps.current()])
    await stream.close()
  }
}
