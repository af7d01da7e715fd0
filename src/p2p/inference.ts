import { peerIdFromString } from '@libp2p/peer-id'
import type { Stream, Connection } from '@libp2p/interface'
import { ShepherdError, TimeoutError, WireError, NoHealthyHostError } from '../errors.js'
import { createLogger } from '../logger.js'
import {
  INFERENCE_PROTOCOL, INFERENCE_REQUEST_READ_TIMEOUT_MS, MAX_INFERENCE_REQUEST_BYTES, MAX_INFERENCE_RESPONSE_BYTES, MAX_INFERENCE_STREAMS
} from './constants.js'
import { FramedStream } from './framing.js'
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

/**
 * Closes a stream whose exchange is over. A graceful close waits for the remote's side; a peer
 * that never closes it must not keep the stream (and a request) alive, so it is reset after 1 s.
 */
async function finish (stream: Stream): Promise<void> {
  try {
    await stream.close({ signal: AbortSignal.timeout(1000) })
  } catch {
    stream.abort(new ShepherdError('the stream did not close in time', { code: 'close_timeout', status: 504 }))
  }
}

function errorFrame (err: unknown): InferenceResponseFrame {
  const e = err instanceof ShepherdError ? err : new ShepherdError('Internal error on the host node', { code: 'internal_error', status: 500 })
  return { t: 'error', status: e.status, error: { message: e.message, type: e.type, param: e.param, code: e.code } }
}

/**
 * `/shepherd/openai/1.0.0`: one stream per request. The caller sends one request frame; the
 * host answers `result`, or `chunk`... `end`, or `head` `bytes`... `end`, or `error` at any point.
 * Either side closing or resetting the stream aborts the other: a client that goes away stops
 * generation on the host.
 */
export class InferenceService {
  private readonly log = createLogger('p2p:inference')
  private handler?: InferenceHandler
  private onViolation?: ViolationListener
  readonly stats = { served: 0, failed: 0, violations: 0, requested: 0 }

  constructor (private readonly host: Host) {}

  /** Starts serving requests from peers with `handler`. */
  async serve (handler: InferenceHandler, opts: { onViolation?: ViolationListener } = {}): Promise<void> {
    this.handler = handler
    this.onViolation = opts.onViolation
    await this.host.handle(INFERENCE_PROTOCOL, (stream, conn) => { void this.onStream(stream, conn) }, { maxInboundStreams: MAX_INFERENCE_STREAMS, maxOutboundStreams: MAX_INFERENCE_STREAMS })
  }

  async stop (): Promise<void> {
    await this.host.unhandle(INFERENCE_PROTOCOL).catch(() => {})
  }

  private violation (peer: string, stream: Stream, reason: string): void {
    this.stats.violations++
    this.log.warn('protocol violation', { peer, reason })
    this.onViolation?.(peer, reason)
    stream.abort(new WireError(reason))
  }

  private async onStream (stream: Stream, conn: Connection): Promise<void> {
    const peer = conn.remotePeer.toString()
    const framed = new FramedStream(stream, { read: MAX_INFERENCE_REQUEST_BYTES, write: MAX_INFERENCE_RESPONSE_BYTES })
    let req: unknown
    try {
      req = await framed.read(AbortSignal.timeout(INFERENCE_REQUEST_READ_TIMEOUT_MS))
    } catch (err: any) {
      this.violation(peer, stream, err instanceof WireError ? err.message : `no request frame: ${err?.message ?? err}`)
      return
    }
    if (!isInferenceRequest(req)) {
      this.violation(peer, stream, 'invalid request frame')
      return
    }
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
          await finish(stream)
          return
        }
        await framed.write({ t: 'end' })
      } else {
        await framed.write({ t: 'head', status: reply.status, headers: reply.headers })
        for await (const block of reply.body) {
          await framed.write({ t: 'bytes', b64: Buffer.from(block).toString('base64') })
        }
        await framed.write({ t: 'end' })
      }
      this.stats.served++
      await finish(stream)
    } catch (err) {
      if (ac.signal.aborted && stream.status !== 'open') {
        this.log.debug('request aborted by the peer', { peer })
        return
      }
      this.stats.failed++
      try {
        await framed.write(errorFrame(err))
        await stream.close()
      } catch {
        stream.abort(err as Error)
      }
    } finally {
      stream.removeEventListener('close', onClose)
    }
  }

  /**
   * Sends a request to `peer` and returns its reply once the first response frame arrived,
   * so a failure before the first byte can be retried elsewhere. Aborting `signal`
   * (a client that went away) resets the stream, which stops generation on the host.
   */
  async request (peer: string, req: InferenceRequestFrame, opts: { signal?: AbortSignal, connectTimeoutMs?: number, firstByteTimeoutMs?: number } = {}): Promise<InferenceReply> {
    this.stats.requested++
    const connectSignal = AbortSignal.any([opts.signal ?? new AbortController().signal, AbortSignal.timeout(opts.connectTimeoutMs ?? 3000)])
    let stream: Stream
    try {
      stream = await this.host.dialProtocol(peerIdFromString(peer), INFERENCE_PROTOCOL, { signal: connectSignal })
    } catch (err) {
      if (opts.signal?.aborted === true) throw opts.signal.reason
      throw new NoHealthyHostError(req.model).withCause(err)
    }
    const abort = (): void => { stream.abort(new ShepherdError('request aborted by the client', { code: 'client_closed', status: 499 })) }
    opts.signal?.addEventListener('abort', abort, { once: true })
    const framed = new FramedStream(stream, { read: MAX_INFERENCE_RESPONSE_BYTES, write: MAX_INFERENCE_REQUEST_BYTES })
    const cleanup = (): void => { opts.signal?.removeEventListener('abort', abort) }
    const readFrame = async (signal?: AbortSignal): Promise<InferenceResponseFrame> => {
      const frame = await framed.read(signal)
      if (frame == null) throw new NoHealthyHostError(req.model).withMessage('the host closed the stream early')
      if (!isInferenceResponse(frame)) {
        this.stats.violations++
        this.onViolation?.(peer, 'invalid response frame')
        stream.abort(new WireError('invalid response frame'))
        throw new WireError('the host sent an invalid response frame')
      }
      return frame
    }
    let first: InferenceResponseFrame
    try {
      await framed.write(req)
      first = await readFrame(opts.firstByteTimeoutMs != null ? AbortSignal.timeout(opts.firstByteTimeoutMs) : undefined)
    } catch (err: any) {
      cleanup()
      stream.abort(err)
      if (opts.signal?.aborted === true) throw opts.signal.reason
      if (err instanceof ShepherdError) throw err
      if (err?.name === 'TimeoutError' || err?.name === 'AbortError') throw new TimeoutError('the host did not answer in time')
      throw new NoHealthyHostError(req.model).withCause(err)
    }
    if (first.t === 'error') {
      cleanup()
      await finish(stream)
      throw new RemoteError(first.status, first.error)
    }
    if (first.t === 'result') {
      cleanup()
      await finish(stream)
      return { kind: 'result', data: first.data }
    }
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
        if (done) await finish(stream)
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
      await finish(stream)
      return { kind: 'stream', chunks: (async function * () {})() }
    }
    // Raw bytes before any head: the host broke the protocol.
    this.stats.violations++
    this.onViolation?.(peer, `'${first.t}' frame before any head`)
    stream.abort(new WireError('bytes before head'))
    throw new WireError(`the host sent a '${first.t}' frame before any head`)
  }
}
