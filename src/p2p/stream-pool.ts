import { peerIdFromString } from '@libp2p/peer-id'
import type { Stream } from '@libp2p/interface'
import { FramedStream } from './framing.js'
import type { Host } from './host.js'
import { ShepherdError } from '../errors.js'

/** One stream to a peer with its framer, leased for one exchange at a time. */
export interface Lease {
  readonly peer: string
  readonly stream: Stream
  readonly framed: FramedStream
  /** Whether the stream served an exchange before this one (then it may have gone stale). */
  readonly reused: boolean
  /** Whether the negotiated protocol lets the stream carry another exchange. */
  readonly reusable: boolean
}

export interface StreamPoolOptions {
  /** Protocols to ask for, preferred first. */
  protocols: string[]
  /** The negotiated protocols whose streams carry one exchange after another. */
  reusable: ReadonlySet<string>
  /** Frame limits of the framer (read: what the peer sends, write: what we send). */
  limits: { read: number, write: number }
  /** Idle streams kept per peer. */
  maxIdlePerPeer: number
  /** An idle stream is closed after this long (shorter than the host's own idle timeout). */
  idleMs: number
  /** A peer sent bytes on a stream between exchanges. */
  onUnsolicited?: (peer: string) => void
}

interface Idle {
  stream: Stream
  framed: FramedStream
  timer: NodeJS.Timeout
  /** Stops watching the stream while it idles. */
  unwatch: () => void
}

/**
 * Streams to peers kept open between requests. Opening a libp2p stream (yamux stream plus
 * multistream-select) cost ~2 ms of CPU per request on loopback, ten times one exchange on an
 * open stream; relayed requests reuse idle streams instead. The most recently used stream is
 * taken first, so a burst's extra streams go idle together and are closed after `idleMs`.
 */
export class StreamPool {
  private readonly idle = new Map<string, Idle[]>()
  private closed = false

  constructor (private readonly host: Host, private readonly opts: StreamPoolOptions) {}

  /** A healthy idle stream to `peer`, if there is one. */
  take (peer: string): Lease | undefined {
    const list = this.idle.get(peer)
    while (list != null && list.length > 0) {
      const entry = list.pop()!
      clearTimeout(entry.timer)
      entry.unwatch()
      if (list.length === 0) this.idle.delete(peer)
      // Data or a close that came while it idled evicted it already (see `release`).
      if (usable(entry.stream)) return { peer, stream: entry.stream, framed: entry.framed, reused: true, reusable: true }
      entry.stream.abort(new Error('stale pooled stream'))
    }
    return undefined
  }

  /** A new stream to `peer`, never a pooled one. */
  async open (peer: string, signal?: AbortSignal): Promise<Lease> {
    const stream = await this.host.dialProtocol(peerIdFromString(peer), this.opts.protocols, { signal })
    const framed = new FramedStream(stream, this.opts.limits)
    return { peer, stream, framed, reused: false, reusable: this.opts.reusable.has(stream.protocol ?? '') }
  }

  /**
   * Returns a stream whose exchange ended with a final frame. It is kept for the next request
   * when it can carry one and there is room; else it is closed.
   */
  async release (lease: Lease): Promise<void> {
    const list = this.idle.get(lease.peer) ?? []
    if (this.closed || !lease.reusable || !usable(lease.stream) || lease.framed.buffered > 0 || list.length >= this.opts.maxIdlePerPeer) {
      await finish(lease.stream)
      return
    }
    const { stream, peer } = lease
    // While it idles, the host closing its side ends the stream here too, and anything it sends
    // breaks the protocol: either way the stream leaves the pool at once.
    const onEnd = (): void => { this.evict(peer, entry) }
    const onMessage = (): void => {
      this.opts.onUnsolicited?.(peer)
      this.evict(peer, entry, new Error('data between exchanges'))
    }
    stream.addEventListener('remoteCloseWrite', onEnd)
    stream.addEventListener('close', onEnd)
    stream.addEventListener('message', onMessage)
    const entry: Idle = {
      stream,
      framed: lease.framed,
      timer: setTimeout(onEnd, this.opts.idleMs).unref(),
      unwatch: () => {
        stream.removeEventListener('remoteCloseWrite', onEnd)
        stream.removeEventListener('close', onEnd)
        stream.removeEventListener('message', onMessage)
      }
    }
    list.push(entry)
    this.idle.set(lease.peer, list)
  }

  /** Idle streams now held per peer. */
  idleCount (peer?: string): number {
    if (peer != null) return this.idle.get(peer)?.length ?? 0
    let n = 0
    for (const list of this.idle.values()) n += list.length
    return n
  }

  /** Closes every idle stream; later releases close theirs. */
  async close (): Promise<void> {
    this.closed = true
    const all = [...this.idle.values()].flat()
    this.idle.clear()
    await Promise.all(all.map(async e => { clearTimeout(e.timer); e.unwatch(); await finish(e.stream) }))
  }

  /** Takes `entry` out of the pool and closes its stream (resets it when `reason` says why). */
  private evict (peer: string, entry: Idle, reason?: Error): void {
    const list = this.idle.get(peer)
    const i = list?.indexOf(entry) ?? -1
    if (list == null || i < 0) return
    list.splice(i, 1)
    if (list.length === 0) this.idle.delete(peer)
    clearTimeout(entry.timer)
    entry.unwatch()
    if (reason != null) entry.stream.abort(reason)
    else void finish(entry.stream)
  }
}

/** Open both ways: nothing said it ended. */
function usable (stream: Stream): boolean {
  return stream.status === 'open' && stream.writeStatus === 'writable' && stream.remoteWriteStatus === 'writable'
}

/**
 * Closes a stream whose exchange is over. A graceful close waits for the remote's side; a peer
 * that never closes it must not keep the stream (and a request) alive, so it is reset after 1 s.
 */
export async function finish (stream: Stream): Promise<void> {
  try {
    await stream.close({ signal: AbortSignal.timeout(1000) })
  } catch {
    stream.abort(new ShepherdError('the stream did not close in time', { code: 'close_timeout', status: 504 }))
  }
}
