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

  constructor (readonly stream: Stream, limits: number | { read: number, write: number }) {
    this.maxFrameBytes = typeof limits === 'number' ? limits : limits.read
    this.maxWriteBytes = typeof limits === 'number' ? limits : limits.write
    // Listen from the start (as libp2p's own byte streams do): a close that comes before the
    // first read must still be seen as the end.
    stream.addEventListener('message', evt => {
      this.buf.append(evt.data)
      // At most one frame and its prefix may wait here; more is a peer ignoring the protocol.
      if (this.failure === undefined && this.buf.byteLength > this.maxFrameBytes + 16) {
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
    const bytes = encoder.encode(JSON.stringify(frame))
    if (bytes.byteLength > this.maxWriteBytes) throw new WireError(`frame of ${bytes.byteLength} bytes exceeds ${this.maxWriteBytes}`, 'frame_too_large')
    const list = new Uint8ArrayList(encodeVarint(bytes.byteLength), bytes)
    if (!this.stream.send(list)) await this.stream.onDrain({ signal })
  }

  /**
   * Reads one frame: `null` when the remote ended the stream cleanly between frames; a
   * `WireError` (`frame_too_large`, `truncated_frame`, `invalid_frame`) for anything else; a
   * `TimeoutError` when no whole frame came within `timeoutMs` (a cleared timer: unlike
   * `AbortSignal.timeout`, nothing is left to fire later for a read that finished in time).
   */
  async read (signal?: AbortSignal, timeoutMs?: number): Promise<unknown> {
    const deadline = timeoutMs != null ? performance.now() + timeoutMs : undefined
    for (;;) {
      const frame = this.frame()
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
  private frame (): unknown {
    const prefix = decodePrefix(this.buf, this.maxFrameBytes)
    if (prefix != null && this.buf.byteLength >= prefix.offset + prefix.length) {
      const body = this.buf.subarray(prefix.offset, prefix.offset + prefix.length)
      this.buf.consume(prefix.offset + prefix.length)
      return parseFrame(body)
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
