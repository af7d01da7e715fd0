import { lpStream, type LengthPrefixedStream } from '@libp2p/utils'
import type { Stream } from '@libp2p/interface'
import { WireError } from '../errors.js'

const encoder = new TextEncoder()
const decoder = new TextDecoder('utf-8', { fatal: true })

/**
 * JSON frames over a libp2p stream: a varint length prefix, then UTF-8 JSON. Every frame is
 * bounded (`maxFrameBytes`) before it is buffered, and decoded exactly once, here.
 * `write` waits for the stream to drain, which is the back-pressure of a relayed stream.
 */
export class FramedStream {
  private readonly lp: LengthPrefixedStream<Stream>
  readonly maxFrameBytes: number
  readonly maxWriteBytes: number

  /**
   * One per stream: the underlying reader buffers every byte that arrives, so a second framer
   * on the same stream would fill up unread and reset it. `limits` may differ per direction.
   */
  constructor (readonly stream: Stream, limits: number | { read: number, write: number }) {
    this.maxFrameBytes = typeof limits === 'number' ? limits : limits.read
    this.maxWriteBytes = typeof limits === 'number' ? limits : limits.write
    this.lp = lpStream(stream, { maxDataLength: this.maxFrameBytes, maxBufferSize: this.maxFrameBytes + 16 })
  }

  async write (frame: unknown, signal?: AbortSignal): Promise<void> {
    const bytes = encoder.encode(JSON.stringify(frame))
    if (bytes.byteLength > this.maxWriteBytes) throw new WireError(`frame of ${bytes.byteLength} bytes exceeds ${this.maxWriteBytes}`, 'frame_too_large')
    await this.lp.write(bytes, { signal })
  }

  /** Reads one frame; `null` when the remote closed its side cleanly before a frame began. */
  async read (signal?: AbortSignal): Promise<unknown> {
    let list
    try {
      list = await this.lp.read({ signal })
    } catch (err: any) {
      if (err?.name === 'UnexpectedEOFError' && this.stream.readStatus !== 'readable') return null
      if (err?.name === 'InvalidDataLengthError' || err?.name === 'InvalidDataLengthLengthError' || err?.name === 'StreamBufferError') throw new WireError(`frame exceeds ${this.maxFrameBytes} bytes`, 'frame_too_large')
      throw err
    }
    let text: string
    try {
      text = decoder.decode(list.subarray())
    } catch {
      throw new WireError('frame is not UTF-8', 'invalid_frame')
    }
    try {
      return JSON.parse(text)
    } catch {
      throw new WireError('frame is not JSON', 'invalid_frame')
    }
  }
}
