import { Uint8ArrayList } from 'uint8arraylist'
import type { Stream } from '@libp2p/interface'
import { TimeoutError, WireError } from '../errors.js'

const encoder = new TextEncoder()
const decoder = new TextDecoder('utf-8', { fatal: true })


function encodeVarint (n: number): Uint8Array {
  const out: number[] = []
  do {
    let byte = n % 128
    n = Math.floor(n / 128)
    if (n > 0) byte |= 0x80
    out.push(byte)
  } while (n > 0)
  return Uint8Array.from(out)
}

/**
 * Decodes the length prefix at the head of `buf`: `null` when more bytes are needed, else the
 * frame length and where its body starts. A prefix that is too long or announces more than `max`
 * bytes is refused at once, before any of the frame is buffered.
 */
function decodePrefix (buf: Uint8ArrayList, max: number): { length: number, offset: number } | null {
  // A prefix longer than the one `max` itself needs can only announce too much (or pad).
  const maxPrefixBytes = encodeVarint(max).byteLength
  let length = 0
  let scale = 1
  for (let i = 0; i < Math.min(buf.byteLength, maxPrefixBytes); i++) {
    const byte = buf.get(i)
    length += (byte & 0x7f) * scale
    scale *= 128
    if (length > max) throw new WireError(`frame exceeds ${max} bytes`, 'frame_too_large')
    if ((byte & 0x80) === 0) return { length, offset: i + 1 }
  }
  if (buf.byteLength >= maxPrefixBytes) throw new WireError(`frame exceeds ${max} bytes`, 'frame_too_large')
  return null
}

/**
 * JSON frames over a libp2p stream: an unsigned varint length, then UTF-8 JSON. Every frame is
 * bounded (`limits.read` when reading, `limits.write` when writing) before it is buffered, and
 * decoded exactly once, here. `write` waits for the stream to drain, which is the back-pressure
 * of a relayed stream. A framer that is only written to never reads the stream.
 */
export class FramedStream {
  readonly maxFrameBytes: number
  readonly maxWriteBytes: number
  private readonly buf = new Uint8ArrayList()
  /** Wakes a read waiting for bytes, the end, or an error. */
  private wake?: () => void
  private failure?: unknown

  /** With flow control: the stream is paused above this many buffered bytes (see the constructor). */
  private readonly pauseAbove?: number
  private readonly maxBuffered?: number
  private paused = false

  /**
   * `limits.pauseAbove` (with `limits.maxBuffered`) is for protocols whose peer sends many frames
   * in a row (`/shepherd/openai/2.0.0` request bodies in blocks): above it the stream is paused,
   * so the sender's writes wait (libp2p flow control) until reads drain the buffer; only more
   * than `maxBuffered` (what arrives after the pause) breaks the protocol. Without it, at most
   * one frame and its prefix may wait here.
   */
  constructor (readonly stream: Stream, limits: number | { read: number, write: number, pauseAbove?: number, maxBuffered?: number }) {
    this.maxFrameBytes = typeof limits === 'number' ? limits : limits.read
    this.maxWriteBytes = typeof limits === 'number' ? limits : limits.write
    if (typeof limits !== 'number' && limits.pauseAbove != null) {
      this.pauseAbove = limits.pauseAbove
      this.maxBuffered = limits.maxBuffered ?? limits.pauseAbove + 2 * (this.maxFrameBytes + 16)
    }
    // Listen from the start (as libp2p's own byte streams do): a close that comes before the
    // first read must still be seen as the end.
    stream.addEventListener('message', evt => {
      this.buf.append(evt.data)
      if (this.pauseAbove != null) {
        if (!this.paused && this.buf.byteLength > this.pauseAbove && stream.readStatus === 'readable') {
          this.paused = true
          stream.pause()
        }
        if (this.failure === undefined && this.buf.byteLength > this.maxBuffered!) {
          this.failure = new WireError(`more than ${this.maxBuffered!} bytes buffered`, 'frame_too_large')
        }
      } else if (this.failure === undefined && this.buf.byteLength > this.maxFrameBytes + 16) {
        // At most one frame and its prefix may wait here; more is a peer ignoring the protocol.
        try {
          const prefix = decodePrefix(this.buf, this.maxFrameBytes)
          if (prefix == null || this.buf.byteLength > prefix.offset + prefix.length + this.maxFrameBytes + 16) {
            this.failure = new WireError(`more than one frame of ${this.maxFrameBytes} bytes buffered`, 'frame_too_large')
          }
        } catch (err) {
          this.failure = err
        }
      }
      this.wake?.()
    })
    stream.addEventListener('remoteCloseWrite', () => { this.wake?.() })
    stream.addEventListener('close', () => { this.wake?.() })
  }

  /** Bytes received and not yet read as frames. */
  get buffered (): number {
    return this.buf.byteLength
  }

  async write (frame: unknown, signal?: AbortSignal): Promise<void> {
    await this.writeBytes([encoder.encode(JSON.stringify(frame))], signal)
  }

  /**
   * Writes one frame whose body is `parts` concatenated, as they are (binary protocols such as
   * `/shepherd/openai/2.0.0` put a type byte first): no copy of the parts is made.
   */
  async writeBytes (parts: Uint8Array[], signal?: AbortSignal): Promise<void> {
    let length = 0
    for (const p of parts) length += p.byteLength
    if (length > this.maxWriteBytes) throw new WireError(`frame of ${length} bytes exceeds ${this.maxWriteBytes}`, 'frame_too_large')
    const list = new Uint8ArrayList(encodeVarint(length), ...parts)
    if (!this.stream.send(list)) await this.stream.onDrain({ signal })
  }

  /**
   * Reads one frame: `null` when the remote ended the stream cleanly between frames; a
   * `WireError` (`frame_too_large`, `truncated_frame`, `invalid_frame`) for anything else; a
   * `TimeoutError` when no whole frame came within `timeoutMs` (a cleared timer: unlike
   * `AbortSignal.timeout`, nothing is left to fire later for a read that finished in time).
   */
  async read (signal?: AbortSignal, timeoutMs?: number): Promise<unknown> {
    const body = await this.readBytes(signal, timeoutMs)
    return body === null ? null : parseFrame(body)
  }

  /** {@link read} without the JSON: the frame's body bytes as they came. */
  async readBytes (signal?: AbortSignal, timeoutMs?: number): Promise<Uint8Array | null> {
    const deadline = timeoutMs != null ? performance.now() + timeoutMs : undefined
    for (;;) {
      const frame = this.frame()
      if (this.paused && this.buf.byteLength <= this.pauseAbove! / 2) {
        this.paused = false
        this.stream.resume()
      }
      if (frame !== undefined) return frame
      if (this.failure !== undefined) throw this.failure
      if (this.ended()) {
        if (this.buf.byteLength === 0) return null
        throw new WireError('the stream ended in the middle of a frame', 'truncated_frame')
      }
      await this.waitForMore(signal, deadline, timeoutMs)
    }
  }

  /** The next whole frame if it is buffered already, `undefined` if not. */
  private frame (): Uint8Array | undefined {
    const prefix = decodePrefix(this.buf, this.maxFrameBytes)
    if (prefix != null && this.buf.byteLength >= prefix.offset + prefix.length) {
      const body = this.buf.subarray(prefix.offset, prefix.offset + prefix.length)
      this.buf.consume(prefix.offset + prefix.length)
      return body
    }
    return undefined
  }

  /** The remote will send nothing more and nothing is left undelivered in the stream. */
  private ended (): boolean {
    const s = this.stream
    return (s.remoteWriteStatus !== 'writable' || s.status !== 'open') && s.readBufferLength === 0
  }

  private async waitForMore (signal: AbortSignal | undefined, deadline: number | undefined, timeoutMs: number | undefined): Promise<void> {
    signal?.throwIfAborted()
    await new Promise<void>((resolve, reject) => {
      let timer: NodeJS.Timeout | undefined
      const fail = (err: unknown): void => {
        this.wake = undefined
        clearTimeout(timer)
        signal?.removeEventListener('abort', onAbort)
        reject(err)
      }
      const onAbort = (): void => { fail(signal?.reason) }
      signal?.addEventListener('abort', onAbort, { once: true })
      if (deadline != null) {
        timer = setTimeout(() => { fail(new TimeoutError(`no whole frame within ${timeoutMs} ms`)) }, Math.max(0, deadline - performance.now()))
      }
      this.wake = () => {
        this.wake = undefined
        clearTimeout(timer)
        signal?.removeEventListener('abort', onAbort)
        resolve()
      }
    })
  }
}

function parseFrame (body: Uint8Array): unknown {
  let text: string
  try {
    text = decoder.decode(body)
  } catch {
    throw new WireError('frame is not UTF-8', 'invalid_frame')
  }
  try {
    return JSON.parse(text)
  } catch {
    throw new WireError('frame is not JSON', 'invalid_frame')
  }
}
