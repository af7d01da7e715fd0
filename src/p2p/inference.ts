import type { Stream, Connection } from '@libp2p/interface'
import { ShepherdError, TimeoutError, WireError, NoHealthyHostError } from '../errors.js'
import { createLogger } from '../logger.js'
import {
  INFERENCE_HOST_IDLE_MS, INFERENCE_IDLE_STREAMS_PER_PEER, INFERENCE_PROTOCOL, INFERENCE_PROTOCOL_SINGLE, INFERENCE_REQUEST_READ_TIMEOUT_MS,
  INFERENCE_REQUESTER_IDLE_MS, MAX_INFERENCE_REQUEST_BYTES, MAX_INFERENCE_RESPONSE_BYTES, MAX_INFERENCE_STREAMS
} from './constants.js'
import { FramedStream } from './framing.js'
import { finish, StreamPool, type Lease } from './stream-pool.js'
import { isInferenceRequest, isInferenceResponse, type ErrorPayload, type InferenceRequestFrame, type InferenceResponseFrame } from './inference-messages.js'
import type { Host } from './host.js'

/** What a handler (or a remote peer) answers: one result, a stream of chunks, or raw HTTP bytes. */
export type InferenceReply =
  | { kind: 'result', data: Record<string, unknown> }
  | { kind: 'stream', chunks: AsyncIterable<Record<string, unknown>> }
  | { kind: 'passthrough', status: number, headers: Record<string, string>, body: AsyncIterable<Uint8Array> }

export type InferenceHandler = (req: InferenceRequestFrame, ctx: { peer: string, signal: AbortSignal }) => Promise<InferenceReply>

/** A frame broke the protocol; the stream is reset and the peer reported. */
export type ViolationListener = (peer: string, reason: string) => void

/** An error answered by the remote peer, carrying its status and OpenAI error payload. */
export class RemoteError extends ShepherdError {
  constructor (readonly status: number, payload: ErrorPayload) {
    super(payload.message, { code: payload.code ?? 'remote_error', status, type: payload.type, param: payload.param })
  }
}

function errorFrame (err: unknown): InferenceResponseFrame {
  const e = err instanceof ShepherdError ? err : new ShepherdError('Internal error on the host node', { code: 'internal_error', status: 500 })
  return { t: 'error', status: e.status, error: { message: e.message, type: e.type, param: e.param, code: e.code } }
}

/** Timings and limits of the inference protocol; the defaults suit a LAN. */
export interface InferenceOptions {
  /** Idle streams kept to each peer for later requests. */
  idleStreamsPerPeer: number
  /** A requester closes a stream idle this long; keep it below `hostIdleMs`. */
  requesterIdleMs: number
  /** A host closes a stream on which no next request came for this long. */
  hostIdleMs: number
  /** A peer that opens a stream must send its first request within this time. */
  requestReadTimeoutMs: number
}

export const DEFAULT_INFERENCE_OPTIONS: InferenceOptions = {
  idleStreamsPerPeer: INFERENCE_IDLE_STREAMS_PER_PEER,
  requesterIdleMs: INFERENCE_REQUESTER_IDLE_MS,
  hostIdleMs: INFERENCE_HOST_IDLE_MS,
  requestReadTimeoutMs: INFERENCE_REQUEST_READ_TIMEOUT_MS
}

/** How one exchange on a host's stream ended. */
type ExchangeEnd = 'answered' | 'gone'

/** A pooled stream broke before the host answered: the request goes again on a new stream. */
class StaleStreamError extends Error {}

/**
 * `/shepherd/openai/1.1.0`: the requester sends one request frame; the host answers `result`,
 * or `chunk`... `end`, or `head` `bytes`... `end`, or `error` at any point. After that final
 * frame the stream carries the next request, so relayed requests reuse idle streams
 * (`/shepherd/openai/1.0.0`, still served, closes the stream after one exchange).
 * Either side resetting the stream aborts the other: a client that goes away stops generation on
 * the host, and that stream is never reused.
 */
export class InferenceService {
  private readonly log = createLogger('p2p:inference')
  private handler?: InferenceHandler
  private onViolation?: ViolationListener
  private readonly opts: InferenceOptions
  readonly pool: StreamPool
  readonly stats = { served: 0, failed: 0, violations: 0, requested: 0, reused: 0, staleRetries: 0 }

  constructor (private readonly host: Host, opts: Partial<InferenceOptions> = {}) {
    this.opts = { ...DEFAULT_INFERENCE_OPTIONS, ...opts }
    this.pool = new StreamPool(host, {
      protocols: [INFERENCE_PROTOCOL, INFERENCE_PROTOCOL_SINGLE],
      reusable: new Set([INFERENCE_PROTOCOL]),
      limits: { read: MAX_INFERENCE_RESPONSE_BYTES, write: MAX_INFERENCE_REQUEST_BYTES },
      maxIdlePerPeer: this.opts.idleStreamsPerPeer,
      idleMs: this.opts.requesterIdleMs,
      onUnsolicited: peer => { this.reportViolation(peer, 'data between exchanges') }
    })
  }

  /** Starts serving requests from peers with `handler`. */
  async serve (handler: InferenceHandler, opts: { onViolation?: ViolationListener } = {}): Promise<void> {
    this.handler = handler
    this.onViolation = opts.onViolation
    const limits = { maxInboundStreams: MAX_INFERENCE_STREAMS, maxOutboundStreams: MAX_INFERENCE_STREAMS }
    await this.host.handle(INFERENCE_PROTOCOL, (stream, conn) => { void this.onStream(stream, conn, true) }, limits)
    await this.host.handle(INFERENCE_PROTOCOL_SINGLE, (stream, conn) => { void this.onStream(stream, conn, false) }, limits)
  }

  async stop (): Promise<void> {
    await this.pool.close()
    await this.host.unhandle(INFERENCE_PROTOCOL).catch(() => {})
    await this.host.unhandle(INFERENCE_PROTOCOL_SINGLE).catch(() => {})
  }

  private reportViolation (peer: string, reason: string): void {
    this.stats.violations++
    this.log.warn('protocol violation', { peer, reason })
    this.onViolation?.(peer, reason)
  }

  private violation (peer: string, stream: Stream, reason: string): void {
    this.reportViolation(peer, reason)
    stream.abort(new WireError(reason))
  }

  /** Serves one request after another on `stream` (one only when not `reusable`). */
  private async onStream (stream: Stream, conn: Connection, reusable: boolean): Promise<void> {
    const peer = conn.remotePeer.toString()
    const framed = new FramedStream(stream, { read: MAX_INFERENCE_REQUEST_BYTES, write: MAX_INFERENCE_RESPONSE_BYTES })
    for (let n = 0; ; n++) {
      let req: unknown
      try {
        req = await framed.read(undefined, n === 0 ? this.opts.requestReadTimeoutMs : this.opts.hostIdleMs)
      } catch (err: any) {
        if (n > 0 && err?.name === 'TimeoutError' && framed.buffered === 0) {
          // Idle between requests: the requester let it go without closing it.
          await finish(stream)
          return
        }
        this.violation(peer, stream, err instanceof WireError ? err.message : `no request frame: ${err?.message ?? err}`)
        return
      }
      if (req === null && n > 0) {
        // The requester closed the stream between requests: the usual end of a pooled stream.
        await finish(stream)
        return
      }
      if (!isInferenceRequest(req)) {
        this.violation(peer, stream, 'invalid request frame')
        return
      }
      const end = await this.answer(stream, framed, peer, req)
      if (end === 'gone') return
      if (!reusable) {
        await finish(stream)
        return
      }
    }
  }

  /** Runs one request and writes its frames, ending with a final frame unless the stream is gone. */
  private async answer (stream: Stream, framed: FramedStream, peer: string, req: InferenceRequestFrame): Promise<ExchangeEnd> {
    const ac = new AbortController()
    const onClose = (): void => { ac.abort(new ShepherdError('the requesting peer went away', { code: 'client_closed', status: 499 })) }
    stream.addEventListener('close', onClose)
    try {
      if (this.handler == null) throw new NoHealthyHostError(req.model)
      const reply = await this.handler(req, { peer, signal: ac.signal })
      if (reply.kind === 'result') {
        await framed.write({ t: 'result', data: reply.data })
      } else if (reply.kind === 'stream') {
        try {
          for await (const chunk of reply.chunks) {
            if (ac.signal.aborted) break
            await framed.write({ t: 'chunk', data: chunk })
          }
        } catch (err) {
          if (ac.signal.aborted) throw err
          await framed.write(errorFrame(err))
          this.stats.failed++
          return 'answered'
        }
        if (ac.signal.aborted) return 'gone'
        await framed.write({ t: 'end' })
      } else {
        await framed.write({ t: 'head', status: reply.status, headers: reply.headers })
        for await (const block of reply.body) {
          await framed.write({ t: 'bytes', b64: Buffer.from(block).toString('base64') })
        }
        await framed.write({ t: 'end' })
      }
      this.stats.served++
      return 'answered'
    } catch (err) {
      if (ac.signal.aborted && stream.status !== 'open') {
        this.log.debug('request aborted by the peer', { peer })
        return 'gone'
      }
      this.stats.failed++
      try {
        await framed.write(errorFrame(err))
        return 'answered'
      } catch {
        stream.abort(err as Error)
        return 'gone'
      }
    } finally {
      stream.removeEventListener('close', onClose)
    }
  }

  /**
   * Sends a request to `peer` and returns its reply once the first response frame arrived,
   * so a failure before the first byte can be retried elsewhere. Aborting `signal`
   * (a client that went away) resets the stream, which stops generation on the host.
   * An idle stream is reused when there is one; if it turns out broken before the host
   * answered, the request goes once more on a new stream.
   */
  async request (peer: string, req: InferenceRequestFrame, opts: { signal?: AbortSignal, connectTimeoutMs?: number, firstByteTimeoutMs?: number } = {}): Promise<InferenceReply> {
    this.stats.requested++
    let fresh = false
    for (;;) {
      const lease = (fresh ? undefined : this.pool.take(peer)) ?? await this.open(peer, req.model, opts)
      if (lease.reused) this.stats.reused++
      try {
        return await this.exchange(lease, req, opts)
      } catch (err) {
        if (!(err instanceof StaleStreamError)) throw err
        // Once the connection itself is gone (the peer died or was hung up on), another dial
        // would only wait for the connect timeout: the router's next replica is the better bet.
        if (fresh || !await this.connected(peer)) throw new NoHealthyHostError(req.model).withMessage('the host closed the stream early')
        this.stats.staleRetries++
        fresh = true
      }
    }
  }

  /** Whether a connection to `peer` is still open, once a connection that is closing had its turn to say so. */
  private async connected (peer: string): Promise<boolean> {
    // A dying connection resets its streams before its own status changes.
    await new Promise(resolve => setImmediate(resolve))
    return this.host.getConnections().some(c => c.status === 'open' && c.remotePeer.toString() === peer)
  }

  /** A new stream to `peer`, within the connect timeout. */
  private async open (peer: string, model: string, opts: { signal?: AbortSignal, connectTimeoutMs?: number }): Promise<Lease> {
    const ac = new AbortController()
    const timer = setTimeout(() => { ac.abort(new TimeoutError('could not open a stream to the host in time')) }, opts.connectTimeoutMs ?? 3000)
    try {
      return await this.pool.open(peer, opts.signal != null ? AbortSignal.any([opts.signal, ac.signal]) : ac.signal)
    } catch (err) {
      if (opts.signal?.aborted === true) throw opts.signal.reason
      throw new NoHealthyHostError(model).withCause(err)
    } finally {
      clearTimeout(timer)
    }
  }

  private async exchange (lease: Lease, req: InferenceRequestFrame, opts: { signal?: AbortSignal, firstByteTimeoutMs?: number }): Promise<InferenceReply> {
    const { stream, framed, peer } = lease
    const abort = (): void => { stream.abort(new ShepherdError('request aborted by the client', { code: 'client_closed', status: 499 })) }
    opts.signal?.throwIfAborted()
    opts.signal?.addEventListener('abort', abort, { once: true })
    const cleanup = (): void => { opts.signal?.removeEventListener('abort', abort) }
    const readFrame = async (timeoutMs?: number): Promise<InferenceResponseFrame> => {
      const frame = await framed.read(undefined, timeoutMs)
      if (frame == null) throw new NoHealthyHostError(req.model).withMessage('the host closed the stream early')
      if (!isInferenceResponse(frame)) {
        this.violation(peer, stream, 'invalid response frame')
        throw new WireError('the host sent an invalid response frame')
      }
      return frame
    }
    let first: InferenceResponseFrame
    try {
      await framed.write(req)
      first = await readFrame(opts.firstByteTimeoutMs)
    } catch (err: any) {
      cleanup()
      // A pooled stream the host or the connection closed meanwhile says nothing about the request.
      const stale = lease.reused && opts.signal?.aborted !== true && err?.name !== 'TimeoutError' && !(err instanceof WireError)
      stream.abort(err)
      if (opts.signal?.aborted === true) throw opts.signal.reason
      if (stale) throw new StaleStreamError()
      if (err?.name === 'TimeoutError' || err?.name === 'AbortError') throw new TimeoutError('the host did not answer in time')
      if (err instanceof ShepherdError) throw err
      throw new NoHealthyHostError(req.model).withCause(err)
    }
    if (first.t === 'error' || first.t === 'result') {
      cleanup()
      await this.pool.release(lease)
      if (first.t === 'error') throw new RemoteError(first.status, first.error)
      return { kind: 'result', data: first.data }
    }
    const pool = this.pool
    const rest = async function * <T> (map: (f: InferenceResponseFrame) => T | undefined, firstValue: T | undefined): AsyncGenerator<T> {
      let done = false
      try {
        if (firstValue !== undefined) yield firstValue
        for (;;) {
          const frame = await readFrame()
          if (frame.t === 'end') { done = true; return }
          if (frame.t === 'error') { done = true; throw new RemoteError(frame.status, frame.error) }
          const v = map(frame)
          if (v === undefined) throw new WireError(`unexpected '${frame.t}' frame`)
          yield v
        }
      } catch (err) {
        if (err instanceof ShepherdError) throw err
        throw new NoHealthyHostError(req.model).withMessage('the host went away mid-stream').withCause(err)
      } finally {
        cleanup()
        if (done) await pool.release(lease)
        else stream.abort(new ShepherdError('stream abandoned', { code: 'client_closed', status: 499 }))
      }
    }
    if (first.t === 'head') {
      return { kind: 'passthrough', status: first.status, headers: first.headers, body: rest(f => f.t === 'bytes' ? new Uint8Array(Buffer.from(f.b64, 'base64')) : undefined, undefined) }
    }
    if (first.t === 'chunk') {
      return { kind: 'stream', chunks: rest(f => f.t === 'chunk' ? f.data : undefined, first.data) }
    }
    cleanup()
    if (first.t === 'end') {
      // A stream that ends before its first chunk is a stream with no chunks.
      await this.pool.release(lease)
      return { kind: 'stream', chunks: (async function * () {})() }
    }
    // Raw bytes before any head: the host broke the protocol.
    this.violation(peer, stream, `'${first.t}' frame before any head`)
    throw new WireError(`the host sent a '${first.t}' frame before any head`)
  }
}
