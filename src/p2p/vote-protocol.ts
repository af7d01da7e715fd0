import { peerIdFromString } from '@libp2p/peer-id'
import type { Connection, Stream } from '@libp2p/interface'
import { ShepherdError, WireError } from '../errors.js'
import { createLogger } from '../logger.js'
import { FramedStream } from './framing.js'
import type { Host } from './host.js'
import {
  MAX_VOTE_REQUEST_BYTES, MAX_VOTE_RESPONSE_BYTES, MAX_VOTE_STREAMS, VOTE_PROTOCOL, VOTE_READ_TIMEOUT_MS,
  isVoteRequest, isVoteResponse, type VoteRequestFrame, type VoteResponseFrame
} from './vote-messages.js'

/** Answers one decoded request from `peer` (the authenticated remote end). Must not throw. */
export type VoteHandler = (req: VoteRequestFrame, peer: string) => Promise<VoteResponseFrame>

/**
 * `/shepherd/vote/1.0.0`, shaped like js-libp2p ping: `serve` registers the handler, `stop`
 * removes it, every wait is bounded, a frame that is not a request resets the stream and is
 * reported as a violation.
 */
export class VoteService {
  private readonly log = createLogger('p2p:vote')
  readonly stats = { served: 0, violations: 0 }

  constructor (private readonly host: Host, private readonly opts: { readTimeoutMs?: number, maxStreams?: number } = {}) {}

  async serve (handler: VoteHandler, opts: { onViolation?: (peer: string, reason: string) => void } = {}): Promise<void> {
    const max = this.opts.maxStreams ?? MAX_VOTE_STREAMS
    await this.host.handle(VOTE_PROTOCOL, (stream, conn) => {
      this.onStream(stream, conn, handler, opts.onViolation).catch(err => {
        this.log.debug('vote stream failed', { err })
        stream.abort(err)
      })
    }, { maxInboundStreams: max, maxOutboundStreams: max })
  }

  async stop (): Promise<void> {
    await this.host.unhandle(VOTE_PROTOCOL).catch(() => {})
  }

  private async onStream (stream: Stream, conn: Connection, handler: VoteHandler, onViolation?: (peer: string, reason: string) => void): Promise<void> {
    const peer = conn.remotePeer.toString()
    const framed = new FramedStream(stream, { read: MAX_VOTE_REQUEST_BYTES, write: MAX_VOTE_RESPONSE_BYTES })
    let frame: unknown
    try {
      frame = await framed.read(undefined, this.opts.readTimeoutMs ?? VOTE_READ_TIMEOUT_MS)
    } catch (err: any) {
      frame = undefined
      this.log.debug('no vote frame', { peer, err })
    }
    if (!isVoteRequest(frame)) {
      this.stats.violations++
      onViolation?.(peer, 'not a vote request')
      stream.abort(new WireError('not a vote request', 'malformed'))
      return
    }
    const reply = await handler(frame, peer)
    this.stats.served++
    await framed.write(reply)
    await stream.close()
  }
}

/**
 * Sends one request to `peer` and returns its validated answer. Throws a `ShepherdError`
 * (`peer_unreachable`, `invalid_frame`, `stream_reset`, `timeout`) when the exchange failed.
 *
 * `hedgeMs`: with no answer by then, the same request also goes on a new connection, and the
 * first answer wins. After a partition heals, a request sent on a connection that queued
 * frames during the loss waits out TCP's retransmission backoff (seconds); a new connection
 * answers in a round trip. Safe to send twice: a vote for the same candidate and term is
 * granted again, and a certificate request has no effect.
 */
export async function requestVote (host: Host, peer: string, req: VoteRequestFrame, opts: { timeoutMs?: number, signal?: AbortSignal, hedgeMs?: number } = {}): Promise<VoteResponseFrame> {
  const signal = AbortSignal.any([opts.signal ?? new AbortController().signal, AbortSignal.timeout(opts.timeoutMs ?? 3000)])
  if (opts.hedgeMs == null) return await exchange(host, peer, req, signal)
  const losers = new AbortController()
  const both = AbortSignal.any([signal, losers.signal])
  const hedgeMs = opts.hedgeMs
  const first = exchange(host, peer, req, both)
  const second = (async () => {
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(resolve, hedgeMs)
      both.addEventListener('abort', () => { clearTimeout(timer); reject(both.reason) }, { once: true })
    })
    const conn = await host.dial(peerIdFromString(peer), { force: true, signal: both })
    return await exchange(host, peer, req, both, conn)
  })()
  try {
    return await Promise.any([first, second])
  } catch (err) {
    throw err instanceof AggregateError ? err.errors[0] : err
  } finally {
    losers.abort(new Error('answered'))
  }
}

async function exchange (host: Host, peer: string, req: VoteRequestFrame, signal: AbortSignal, conn?: Connection): Promise<VoteResponseFrame> {
  let stream: Stream
  try {
    stream = conn != null ? await conn.newStream(VOTE_PROTOCOL, { signal }) : await host.dialProtocol(peerIdFromString(peer), VOTE_PROTOCOL, { signal })
  } catch (err) {
    throw new ShepherdError(`cannot open a vote stream to ${peer}`, { code: 'peer_unreachable', status: 503 }).withCause(err)
  }
  try {
    const framed = new FramedStream(stream, { read: MAX_VOTE_RESPONSE_BYTES, write: MAX_VOTE_REQUEST_BYTES })
    await framed.write(req, signal)
    const frame = await framed.read(signal)
    if (frame == null) throw new WireError('the peer closed the stream without an answer', 'stream_reset')
    if (!isVoteResponse(frame)) throw new WireError('the peer sent an invalid vote frame', 'invalid_frame')
    await stream.close().catch(() => {})
    return frame
  } catch (err: any) {
    stream.abort(err instanceof Error ? err : new Error(String(err)))
    if (err instanceof ShepherdError) throw err
    throw new WireError(`the vote stream failed: ${err?.message ?? err}`, 'stream_reset').withCause(err)
  }
}
