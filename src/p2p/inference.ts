import type { Stream, Connection } from '@libp2p/interface'
import { ShepherdError, TimeoutError, WireError, NoHealthyHostError } from '../errors.js'
import { createLogger } from '../logger.js'
import {
  INFERENCE_BODY_BLOCK_BYTES, INFERENCE_HOST_IDLE_MS, INFERENCE_IDLE_STREAMS_PER_PEER, INFERENCE_PROTOCOL, INFERENCE_REQUEST_READ_TIMEOUT_MS,
  INFERENCE_REQUESTER_IDLE_MS, INFERENCE_VERSION, MAX_INFERENCE_BODY_BYTES, MAX_INFERENCE_BUFFERED_BYTES, MAX_INFERENCE_REQUEST_BYTES, MAX_INFERENCE_RESPONSE_BYTES, MAX_INFERENCE_STREAMS
} from './constants.js'
import { FramedStream } from './framing.js'
import { finish, StreamPool, type Lease } from './stream-pool.js'
import {
  decodeRequestFrame, decodeResponseFrame, encodeFrame, type CallHead, type ErrorPayload, type RelayOp, type RelayPass, type RequestFrame, type ResponseFrame
} from './inference-messages.js'
import type { Host } from './host.js'

/**
 * A request as the relay carries it: the call's fields and its body as bytes (the OpenAI JSON
 * body serialized once by the requesting node, or a passthrough body as the client sent it).
 * The typed call above p2p (src/node/inference-call.ts) maps to and from it.
 */
export interface RelayRequest {
  /** Request id, logged on both nodes. */
  id: string
  op: RelayOp
  model: string
  stream: boolean
  pass?: RelayPass
  body: Uint8Array
}

/**
 * What a handler (or a remote peer) answers: one result, a stream of chunks, or raw HTTP bytes.
 * Results and chunks are serialized JSON objects: relayed as the host wrote them, never parsed
 * on the way.
 */
export type RelayReply =
  | { kind: 'result', data: Uint8Array }
  | { kind: 'stream', chunks: AsyncIterable<Uint8Array> }
  | { kind: 'passthrough', status: number, headers: Record<string, string>, body: AsyncIterable<Uint8Array> }

export type RelayHandler = (req: RelayRequest, ctx: { peer: string, signal: AbortSignal }) => Promise<RelayReply>

/** A frame broke the protocol; the stream is reset and the peer reported. */
export type ViolationListener = (peer: string, reason: string) => void

/** An error answered by the remote peer, carrying its status and OpenAI error payload. */
export class RemoteError extends ShepherdError {
  constructor (readonly status: number, payload: ErrorPayload) {
    super(payload.message, { code: payload.code ?? 'remote_error', status, type: payload.type, param: payload.param })
  }
}

function errorFrame (err: unknown): ResponseFrame {
  const e = err instanceof ShepherdError ? err : new ShepherdError('Internal error on the host node', { code: 'internal_error', status: 500 })
  return { t: 'error', status: e.status, error: { message: e.message.slice(0, 8192), type: e.type, param: e.param, code: e.code } }
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

/** A whole request body may take this many read timeouts in all (a peer trickling blocks). */
const BODY_DEADLINE_FACTOR = 6

/**
 * `/shepherd/openai/2.0.0` (frames in src/p2p/inference-messages.ts): the requester sends a call
 * head and its body in blocks; the host answers `result`, or `chunk`... `end`, or `head` `data`...
 * `end`, or `error` at any point. After that final frame the stream carries the next request, so
 * relayed requests reuse idle streams. Either side resetting the stream aborts the other: a
 * client that goes away stops generation on the host, and that stream is never reused.
 */
export class InferenceService {
  private readonly log = createLogger('p2p:inference')
  private handler?: RelayHandler
  private onViolation?: ViolationListener
  private readonly opts: InferenceOptions
  readonly pool: StreamPool
  readonly stats = { served: 0, failed: 0, violations: 0, requested: 0, reused: 0, staleRetries: 0 }

  constructor (private readonly host: Host, opts: Partial<InferenceOptions> = {}) {
    this.opts = { ...DEFAULT_INFERENCE_OPTIONS, ...opts }
    this.pool = new StreamPool(host, {
      protocols: [INFERENCE_PROTOCOL],
      reusable: new Set([INFERENCE_PROTOCOL]),
      limits: { read: MAX_INFERENCE_RESPONSE_BYTES, write: MAX_INFERENCE_REQUEST_BYTES },
      maxIdlePerPeer: this.opts.idleStreamsPerPeer,
      idleMs: this.opts.requesterIdleMs,
      onUnsolicited: peer => { this.reportViolation(peer, 'data between exchanges') }
    })
  }

  /** Starts serving requests from peers with `handler`. */
  async serve (handler: RelayHandler, opts: { onViolation?: ViolationListener } = {}): Promise<void> {
    this.handler = handler
    this.onViolation = opts.onViolation
    const limits = { maxInboundStreams: MAX_INFERENCE_STREAMS, maxOutboundStreams: MAX_INFERENCE_STREAMS }
    await this.host.handle(INFERENCE_PROTOCOL, (stream, conn) => { void this.onStream(stream, conn) }, limits)
  }

  async stop (): Promise<void> {
    await this.pool.close()
    await this.host.unhandle(INFERENCE_PROTOCOL).catch(() => {})
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

  /** Serves one request after another on `stream`. */
  private async onStream (stream: Stream, conn: Connection): Promise<void> {
    const peer = conn.remotePeer.toString()
    // A body comes in blocks, back to back: flow control holds the sender above 1 MiB buffered
    // (yamux then stops granting window), and what was in flight when it paused is bounded.
    const framed = new FramedStream(stream, { read: MAX_INFERENCE_REQUEST_BYTES, write: MAX_INFERENCE_RESPONSE_BYTES, pauseAbove: 1024 * 1024, maxBuffered: MAX_INFERENCE_BUFFERED_BYTES })
    for (let n = 0; ; n++) {
      let first: Uint8Array | null
      try {
        first = await framed.readBytes(undefined, n === 0 ? this.opts.requestReadTimeoutMs : this.opts.hostIdleMs)
      } catch (err: any) {
        if (n > 0 && err?.name === 'TimeoutError' && framed.buffered === 0) {
          // Idle between requests: the requester let it go without closing it.
          await finish(stream)
          return
        }
        this.violation(peer, stream, err instanceof WireError ? err.message : `no request frame: ${err?.message ?? err}`)
        return
      }
      if (first === null && n > 0) {
        // The requester closed the stream between requests: the usual end of a pooled stream.
        await finish(stream)
        return
      }
      let req: RelayRequest
      try {
        if (first === null) throw new WireError('the stream ended before a call frame', 'truncated_frame')
        req = await this.readRequest(framed, decodeRequestFrame(first))
      } catch (err: any) {
        this.violation(peer, stream, err instanceof WireError ? err.message : `incomplete request: ${err?.message ?? err}`)
        return
      }
      const end = await this.answer(stream, framed, peer, req)
      if (end === 'gone') return
    }
  }

  /**
   * Gathers the body the call head announced: exactly `size` bytes in `data` frames, then `end`,
   * each frame within the read timeout and the whole body within a few of them. Bytes are kept
   * only as they arrive: announcing a large body costs the requester the bytes it sends.
   */
  private async readRequest (framed: FramedStream, first: RequestFrame): Promise<RelayRequest> {
    if (first.t !== 'call') throw new WireError(`'${first.t}' frame before a call`)
    const head: CallHead = first.head
    const deadline = performance.now() + this.opts.requestReadTimeoutMs * BODY_DEADLINE_FACTOR
    const blocks: Uint8Array[] = []
    let got = 0
    for (;;) {
      const left = deadline - performance.now()
      const bytes = await framed.readBytes(undefined, Math.max(1, Math.min(this.opts.requestReadTimeoutMs, left)))
      if (bytes === null) throw new WireError('the stream ended inside a request body', 'truncated_frame')
      const frame = decodeRequestFrame(bytes)
      if (frame.t === 'end') break
      if (frame.t !== 'data') throw new WireError(`'${frame.t}' frame inside a request body`)
      got += frame.bytes.byteLength
      if (got > head.size) throw new WireError(`request body longer than the ${head.size} bytes announced`)
      blocks.push(frame.bytes)
    }
    if (got !== head.size) throw new WireError(`request body of ${got} bytes, ${head.size} announced`)
    const body = blocks.length === 1 ? blocks[0] : new Uint8Array(Buffer.concat(blocks))
    return { id: head.id, op: head.op, model: head.model, stream: head.stream, ...(head.pass != null ? { pass: head.pass } : {}), body }
  }

  /** Runs one request and writes its frames, ending with a final frame unless the stream is gone. */
  private async answer (stream: Stream, framed: FramedStream, peer: string, req: RelayRequest): Promise<ExchangeEnd> {
    const ac = new AbortController()
    const onClose = (): void => { ac.abort(new ShepherdError('the requesting peer went away', { code: 'client_closed', status: 499 })) }
    stream.addEventListener('close', onClose)
    const write = async (frame: ResponseFrame): Promise<void> => { await framed.writeBytes(encodeFrame(frame)) }
    try {
      if (this.handler == null) throw new NoHealthyHostError(req.model)
      const reply = await this.handler(req, { peer, signal: ac.signal })
      if (reply.kind === 'result') {
        await write({ t: 'result', bytes: reply.data })
      } else if (reply.kind === 'stream') {
        try {
          for await (const chunk of reply.chunks) {
            if (ac.signal.aborted) break
            await write({ t: 'chunk', bytes: chunk })
          }
        } catch (err) {
          if (ac.signal.aborted) throw err
          await write(errorFrame(err))
          this.stats.failed++
          return 'answered'
        }
        if (ac.signal.aborted) return 'gone'
        await write({ t: 'end' })
      } else {
        await write({ t: 'head', status: reply.status, headers: reply.headers })
        for await (const block of reply.body) {
          // An engine's block can be larger than a frame: cut it.
          for (let at = 0; at < block.byteLength; at += MAX_BLOCK_OUT) {
            await write({ t: 'data', bytes: block.subarray(at, at + MAX_BLOCK_OUT) })
          }
        }
        await write({ t: 'end' })
      }
      this.stats.served++
      return 'answered'
    } catch (err) {
      if (ac.signal.aborted && stream.status !== 'open') {
        this.log.debug('request aborted by the peer', { peer, requestId: req.id })
        return 'gone'
      }
      this.stats.failed++
      try {
        await write(errorFrame(err))
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
  async request (peer: string, req: RelayRequest, opts: { signal?: AbortSignal, connectTimeoutMs?: number, firstByteTimeoutMs?: number } = {}): Promise<RelayReply> {
    if (req.body.byteLength > MAX_INFERENCE_BODY_BYTES) {
      throw new ShepherdError(`The request body of ${req.body.byteLength} bytes exceeds the ${MAX_INFERENCE_BODY_BYTES} bytes a relay carries`, { code: 'request_too_large', status: 413 })
    }
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

  /** Writes the call head and the body in blocks (each waits for the stream to drain), then `end`. */
  private async send (framed: FramedStream, req: RelayRequest, signal?: AbortSignal): Promise<void> {
    const head: CallHead = { v: INFERENCE_VERSION, id: req.id, op: req.op, model: req.model, stream: req.stream, size: req.body.byteLength, ...(req.pass != null ? { pass: req.pass } : {}) }
    await framed.writeBytes(encodeFrame({ t: 'call', head }), signal)
    for (let at = 0; at < req.body.byteLength; at += INFERENCE_BODY_BLOCK_BYTES) {
      await framed.writeBytes(encodeFrame({ t: 'data', bytes: req.body.subarray(at, at + INFERENCE_BODY_BLOCK_BYTES) }), signal)
    }
    await framed.writeBytes(encodeFrame({ t: 'end' }), signal)
  }

  private async exchange (lease: Lease, req: RelayRequest, opts: { signal?: AbortSignal, firstByteTimeoutMs?: number }): Promise<RelayReply> {
    const { stream, framed, peer } = lease
    const abort = (): void => { stream.abort(new ShepherdError('request aborted by the client', { code: 'client_closed', status: 499 })) }
    opts.signal?.throwIfAborted()
    opts.signal?.addEventListener('abort', abort, { once: true })
    const cleanup = (): void => { opts.signal?.removeEventListener('abort', abort) }
    const readFrame = async (timeoutMs?: number): Promise<ResponseFrame> => {
      const bytes = await framed.readBytes(undefined, timeoutMs)
      if (bytes == null) throw new NoHealthyHostError(req.model).withMessage('the host closed the stream early')
      try {
        return decodeResponseFrame(bytes)
      } catch (err) {
        this.violation(peer, stream, `invalid response frame: ${(err as Error).message}`)
        throw err
      }
    }
    let first: ResponseFrame
    try {
      await this.send(framed, req)
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
      return { kind: 'result', data: first.bytes }
    }
    const pool = this.pool
    const rest = async function * (want: 'chunk' | 'data', firstValue: Uint8Array | undefined): AsyncGenerator<Uint8Array> {
      let done = false
      try {
        if (firstValue !== undefined) yield firstValue
        for (;;) {
          const frame = await readFrame()
          if (frame.t === 'end') { done = true; return }
          if (frame.t === 'error') { done = true; throw new RemoteError(frame.status, frame.error) }
          if (frame.t !== want) throw new WireError(`unexpected '${frame.t}' frame`)
          yield frame.bytes
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
    if (first.t === 'head') return { kind: 'passthrough', status: first.status, headers: first.headers, body: rest('data', undefined) }
    if (first.t === 'chunk') return { kind: 'stream', chunks: rest('chunk', first.bytes) }
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

/** Passthrough answer blocks are cut to this size (a frame each). */
const MAX_BLOCK_OUT = INFERENCE_BODY_BLOCK_BYTES
