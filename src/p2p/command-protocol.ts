import { peerIdFromString } from '@libp2p/peer-id'
import type { Connection, Stream } from '@libp2p/interface'
import { ShepherdError, WireError } from '../errors.js'
import { createLogger } from '../logger.js'
import {
  COMMAND_PROTOCOL, COMMAND_REQUEST_READ_TIMEOUT_MS, MAX_COMMAND_ENVELOPE_BYTES, MAX_COMMAND_RESPONSE_BYTES, MAX_COMMAND_STREAMS,
  isCommandResponse, verifyResult, type CommandEnvelope, type SignedResult
} from './command-messages.js'
import { FramedStream } from './framing.js'
import type { Host } from './host.js'

/** Longest output line sent; longer ones are cut (a line is for a human, not for bulk data). */
export const MAX_OUTPUT_LINE_CHARS = 16 * 1024
/** Output waiting for a slow reader beyond this is dropped (and the drop reported), never buffered without bound. */
export const MAX_BUFFERED_OUTPUT_BYTES = 4 * 1024 * 1024
/** Output lines are batched into frames of about this size. */
const OUTPUT_BATCH_BYTES = 256 * 1024

/** How a receiver answers one decoded frame. */
export type CommandReply =
  /** A result signed by the executor: run, failed, rejected after the issuer was authenticated, or stored. */
  | { t: 'result', result: SignedResult }
  /** Refused before the issuer was authenticated (no signed answer for an unknown party). */
  | { t: 'error', code: string, message: string }
  /** Not a command at all: the stream is reset without an answer. */
  | { t: 'reset', code: string, message: string }

export interface CommandContext {
  /** The remote end of the connection (not necessarily the issuer: a command may be relayed). */
  peer: string
  /** Streams a line of output to the issuer, in order, before the result. */
  onOutput: (line: string) => void
}

/** The executor behind the protocol. It must answer every frame and never throw. */
export interface CommandReceiver {
  receive: (frame: unknown, ctx: CommandContext) => Promise<CommandReply>
  /** A stream that carried no decodable frame (garbage, oversized, none in time): audit it. */
  malformed: (peer: string, detail: string) => Promise<void>
}

/** The executor refused the command before authenticating it (`code`: bad_signature, wrong_target, ...). */
export class CommandRefusedError extends ShepherdError {
  constructor (code: string, message: string) {
    super(message, { code, status: 403 })
  }
}

/**
 * Sends output lines as `output` frames in the order they were produced, batched, with the
 * stream's back-pressure. A reader too slow to keep up loses lines (counted, and reported in a
 * last line) rather than growing this buffer; a reader that went away stops the writes.
 */
class OutputPump {
  private pending: string[] = []
  private pendingBytes = 0
  private dropped = 0
  private seq = 0
  private running?: Promise<void>
  private dead = false

  constructor (private readonly out: FramedStream) {}

  push (line: string): void {
    if (this.dead) return
    const text = line.length > MAX_OUTPUT_LINE_CHARS ? line.slice(0, MAX_OUTPUT_LINE_CHARS) + '…' : line
    const bytes = Buffer.byteLength(JSON.stringify(text)) + 1
    if (this.pendingBytes + bytes > MAX_BUFFERED_OUTPUT_BYTES) {
      this.dropped++
      return
    }
    this.pending.push(text)
    this.pendingBytes += bytes
    this.running ??= this.pump()
  }

  private async pump (): Promise<void> {
    try {
      while (this.pending.length > 0) {
        let bytes = 0
        let n = 0
        while (n < this.pending.length && (n === 0 || bytes < OUTPUT_BATCH_BYTES)) {
          bytes += Buffer.byteLength(JSON.stringify(this.pending[n])) + 1
          n++
        }
        const lines = this.pending.splice(0, n)
        this.pendingBytes -= bytes
        const seq = this.seq
        this.seq += lines.length
        await this.out.write({ t: 'output', seq, lines })
      }
    } catch {
      this.dead = true
      this.pending = []
      this.pendingBytes = 0
    } finally {
      this.running = undefined
    }
  }

  /** Waits until every line pushed so far is written (or the reader is gone). */
  async flush (): Promise<void> {
    while (this.running != null) await this.running
    if (this.dropped > 0 && !this.dead) {
      const n = this.dropped
      this.dropped = 0
      this.push(`[${n} output line(s) dropped: the reader fell behind]`)
      while (this.running != null) await this.running
    }
  }
}

/**
 * `/shepherd/cmd/1.0.0`: one stream per command. The issuer sends one envelope frame (at most
 * 64 KiB); the executor answers zero or more `output` frames, then one `result` (signed by the
 * executor) or one `error`. A stream whose frame cannot be decoded, or is not an envelope, is
 * reset, and the receiver audits it.
 */
export class CommandService {
  private readonly log = createLogger('p2p:cmd')
  private receiver?: CommandReceiver
  private onViolation?: (peer: string, reason: string) => void
  readonly stats = { served: 0, refused: 0, violations: 0 }

  constructor (private readonly host: Host, private readonly opts: { requestReadTimeoutMs?: number, maxStreams?: number } = {}) {}

  async serve (receiver: CommandReceiver, opts: { onViolation?: (peer: string, reason: string) => void } = {}): Promise<void> {
    this.receiver = receiver
    this.onViolation = opts.onViolation
    const max = this.opts.maxStreams ?? MAX_COMMAND_STREAMS
    await this.host.handle(COMMAND_PROTOCOL, (stream, conn) => {
      this.onStream(stream, conn).catch(err => {
        this.log.error('command stream failed', { err })
        stream.abort(err)
      })
    }, { maxInboundStreams: max, maxOutboundStreams: max })
  }

  async stop (): Promise<void> {
    await this.host.unhandle(COMMAND_PROTOCOL).catch(() => {})
  }

  private violation (peer: string, stream: Stream, code: string, message: string): void {
    this.stats.violations++
    this.log.warn('command protocol violation', { peer, code, message })
    this.onViolation?.(peer, message)
    stream.abort(new WireError(message, code))
  }

  private async onStream (stream: Stream, conn: Connection): Promise<void> {
    const peer = conn.remotePeer.toString()
    const receiver = this.receiver
    if (receiver == null) {
      stream.abort(new WireError('not serving commands', 'not_serving'))
      return
    }
    let frame: unknown
    try {
      frame = await new FramedStream(stream, MAX_COMMAND_ENVELOPE_BYTES).read(AbortSignal.timeout(this.opts.requestReadTimeoutMs ?? COMMAND_REQUEST_READ_TIMEOUT_MS))
      if (frame === null) throw new WireError('the stream closed before a command arrived', 'no_frame')
    } catch (err: any) {
      // More bytes than a frame may hold arrived before the length prefix could refuse them.
      const detail = err instanceof WireError
        ? `${err.code}: ${err.message}`
        : err?.name === 'StreamBufferError' ? `frame_too_large: more than ${MAX_COMMAND_ENVELOPE_BYTES} bytes sent` : `no command frame: ${err?.name ?? 'error'}`
      this.violation(peer, stream, 'malformed', detail)
      await receiver.malformed(peer, detail)
      return
    }
    const out = new FramedStream(stream, MAX_COMMAND_RESPONSE_BYTES)
    const pump = new OutputPump(out)
    const reply = await receiver.receive(frame, { peer, onOutput: line => { pump.push(line) } })
    if (reply.t === 'reset') {
      this.violation(peer, stream, reply.code, reply.message)
      return
    }
    try {
      await pump.flush()
      if (reply.t === 'result') {
        this.stats.served++
        await out.write({ t: 'result', result: reply.result })
      } else {
        this.stats.refused++
        await out.write({ t: 'error', code: reply.code, message: reply.message })
      }
      await stream.close()
    } catch (err: any) {
      // The issuer went away; it can ask again with the same id and get the stored result.
      this.log.debug('could not deliver a command reply', { peer, err })
      stream.abort(err)
    }
  }
}

export interface SendCommandOptions {
  signal?: AbortSignal
  /** Called with each line of streamed output, in order, before the result arrives. */
  onOutput?: (line: string) => void
  connectTimeoutMs?: number
}

/**
 * Sends a signed command to `target` and returns its result once the result's signature has
 * been checked against `target`'s key. Throws `CommandRefusedError` when the target refused
 * the command unauthenticated, and a `WireError` (`stream_reset`, `invalid_frame`,
 * `bad_result_signature`, ...) when the exchange itself failed. Retrying with the same
 * envelope is safe: the target runs a command id at most once and returns the stored result.
 */
export async function sendCommand (host: Host, target: string, envelope: CommandEnvelope, opts: SendCommandOptions = {}): Promise<SignedResult> {
  const never = new AbortController().signal
  let stream: Stream
  try {
    stream = await host.dialProtocol(peerIdFromString(target), COMMAND_PROTOCOL, {
      signal: AbortSignal.any([opts.signal ?? never, AbortSignal.timeout(opts.connectTimeoutMs ?? 5000)])
    })
  } catch (err) {
    if (opts.signal?.aborted === true) throw opts.signal.reason
    throw new ShepherdError(`cannot open a command stream to ${target}`, { code: 'peer_unreachable', status: 503 }).withCause(err)
  }
  const abandon = (): void => { stream.abort(new ShepherdError('the issuer abandoned the command', { code: 'client_closed', status: 499 })) }
  opts.signal?.addEventListener('abort', abandon, { once: true })
  try {
    // One framer per stream: each one buffers every byte that arrives, read or not.
    const framed = new FramedStream(stream, MAX_COMMAND_RESPONSE_BYTES)
    const size = Buffer.byteLength(JSON.stringify(envelope))
    if (size > MAX_COMMAND_ENVELOPE_BYTES) throw new WireError(`a command of ${size} bytes exceeds ${MAX_COMMAND_ENVELOPE_BYTES}`, 'frame_too_large')
    await framed.write(envelope, opts.signal)
    let seq = 0
    for (;;) {
      const frame = await framed.read(opts.signal)
      if (frame == null) throw new WireError('the executor closed the stream without a result', 'stream_reset')
      if (!isCommandResponse(frame)) throw new WireError('the executor sent an invalid frame', 'invalid_frame')
      if (frame.t === 'output') {
        if (frame.seq !== seq) throw new WireError(`output line ${frame.seq} arrived when ${seq} was due`, 'invalid_frame')
        seq += frame.lines.length
        for (const line of frame.lines) opts.onOutput?.(line)
        continue
      }
      if (frame.t === 'error') throw new CommandRefusedError(frame.code, frame.message)
      const result = frame.result
      if (result.id !== envelope.id) throw new WireError('the executor answered for another command', 'result_mismatch')
      if (!await verifyResult(result, target)) throw new WireError('the result is not signed by the target', 'bad_result_signature')
      await stream.close().catch(() => {})
      return result
    }
  } catch (err: any) {
    stream.abort(err instanceof Error ? err : new Error(String(err)))
    if (opts.signal?.aborted === true) throw opts.signal.reason
    if (err instanceof ShepherdError) throw err
    throw new WireError(`the command stream failed: ${err?.message ?? err}`, 'stream_reset').withCause(err)
  } finally {
    opts.signal?.removeEventListener('abort', abandon)
  }
}
