/**
 * Wire format of `/shepherd/blob/2.0.0`. Every frame is a varint length, a one-byte kind and a
 * payload: kind 0 is a JSON control frame (request, header, end, error), kind 1 is raw file
 * bytes. File bytes travel as they are, never as JSON or base64, so a transfer costs one copy
 * into the stream and no encoding.
 */
import type { Stream } from '@libp2p/interface'
import type { ValidateFunction } from 'ajv'
import { compileSchema } from './schemas.js'
import { WireError } from '../errors.js'

/**
 * 2.0.0: a fingerprint is the sha256 of the whole file (1.0.0: of its size and header), so a
 * request's fingerprint is also the digest the bytes must have. Nodes of the two versions
 * cannot name each other's files, so they do not talk. `BLOB_VERSION` is the frame schema's
 * version, unchanged.
 */
export const BLOB_PROTOCOL = '/shepherd/blob/2.0.0'
export const BLOB_VERSION = 1

/** Largest request frame a server reads (a name, a fingerprint, an offset and a digest). */
export const MAX_BLOB_REQUEST_BYTES = 4096
/** Largest control frame a client reads (header, end, error). */
export const MAX_BLOB_CONTROL_BYTES = 8192
/** Largest data frame a client accepts; servers send smaller ones (`DEFAULT_BLOB_CHUNK_BYTES`). */
export const MAX_BLOB_CHUNK_BYTES = 1024 * 1024
export const DEFAULT_BLOB_CHUNK_BYTES = 256 * 1024

export const FRAME_CONTROL = 0
export const FRAME_DATA = 1

/** A length prefix longer than this cannot describe a frame we accept (2^35 bytes). */
const MAX_VARINT_BYTES = 5
/** Bytes to leave in front of a data chunk so its prefix can be written in place (varint + kind). */
export const DATA_FRAME_HEADROOM = MAX_VARINT_BYTES + 1

/**
 * Model names become paths below the models dir on the receiving node (`Qwen/x` →
 * `<dir>/Qwen/x.gguf`, up to 4 folder levels), so no segment may be empty or start with a dot
 * (`.`, `..`, hidden files), and none may hold a backslash or a control character:
 * `<dir>/<name>.gguf` never leaves `dir`.
 */
const SEGMENT = '(?!\\.)[^/\\\\\\u0000-\\u001f\\u007f]{1,200}'
const MODEL_NAME_PATTERN = `^(?=.{1,200}$)${SEGMENT}(?:/${SEGMENT}){0,3}$`
/** A model fingerprint (src/node/resources/content-hash.ts): sha256 of the file, lowercase hex. */
const FINGERPRINT_PATTERN = '^[0-9a-f]{64}$'
const SHA256_PATTERN = '^[0-9a-f]{64}$'

const modelNameRe = new RegExp(MODEL_NAME_PATTERN, 'u')
const fingerprintRe = new RegExp(FINGERPRINT_PATTERN)

/** Whether `name` can be used as `<dir>/<name>.gguf` without leaving `dir`. */
export function isSafeModelName (name: string): boolean {
  return modelNameRe.test(name)
}

export function isFingerprint (x: string): boolean {
  return fingerprintRe.test(x)
}

/** What a node asks a peer for: a model file from `offset` on, optionally pinned to a digest. */
export interface BlobRequestFrame {
  v: 1
  name: string
  fingerprint: string
  /** Bytes the requester already has; the body starts here. */
  offset: number
  /** The sha256 the requester expects; a server holding other content refuses. */
  sha256?: string
}

export type BlobControlFrame =
  | { t: 'header', size: number, sha256: string }
  | { t: 'end' }
  | { t: 'error', code: string, message: string }

const requestSchema = {
  type: 'object',
  required: ['v', 'name', 'fingerprint', 'offset'],
  additionalProperties: false,
  properties: {
    v: { const: BLOB_VERSION },
    name: { type: 'string', pattern: MODEL_NAME_PATTERN },
    fingerprint: { type: 'string', pattern: FINGERPRINT_PATTERN },
    offset: { type: 'integer', minimum: 0, maximum: Number.MAX_SAFE_INTEGER },
    sha256: { type: 'string', pattern: SHA256_PATTERN }
  }
}

const controlSchema = {
  oneOf: [
    {
      type: 'object',
      required: ['t', 'size', 'sha256'],
      additionalProperties: false,
      properties: { t: { const: 'header' }, size: { type: 'integer', minimum: 0, maximum: Number.MAX_SAFE_INTEGER }, sha256: { type: 'string', pattern: SHA256_PATTERN } }
    },
    { type: 'object', required: ['t'], additionalProperties: false, properties: { t: { const: 'end' } } },
    {
      type: 'object',
      required: ['t', 'code', 'message'],
      additionalProperties: false,
      properties: { t: { const: 'error' }, code: { type: 'string', pattern: '^[a-z_]{1,64}$' }, message: { type: 'string', maxLength: 1024 } }
    }
  ]
}

let validators: { req: ValidateFunction<BlobRequestFrame>, ctl: ValidateFunction<BlobControlFrame> } | undefined
function compiled (): NonNullable<typeof validators> {
  if (validators == null) {
    validators = { req: compileSchema<BlobRequestFrame>(requestSchema), ctl: compileSchema<BlobControlFrame>(controlSchema) }
  }
  return validators
}

export function isBlobRequest (x: unknown): x is BlobRequestFrame {
  return compiled().req(x)
}

export function isBlobControl (x: unknown): x is BlobControlFrame {
  return compiled().ctl(x)
}

function varintLength (n: number): number {
  let len = 1
  while (n >= 0x80) { n = Math.floor(n / 0x80); len++ }
  return len
}

function writeVarint (n: number, buf: Uint8Array, at: number): void {
  while (n >= 0x80) {
    buf[at++] = (n % 0x80) | 0x80
    n = Math.floor(n / 0x80)
  }
  buf[at] = n
}

const encoder = new TextEncoder()
const decoder = new TextDecoder('utf-8', { fatal: true })

/** A JSON control frame (request, header, end, error), ready to send. */
export function encodeControlFrame (frame: BlobRequestFrame | BlobControlFrame): Uint8Array {
  const json = encoder.encode(JSON.stringify(frame))
  const len = json.byteLength + 1
  const prefix = varintLength(len)
  const out = new Uint8Array(prefix + len)
  writeVarint(len, out, 0)
  out[prefix] = FRAME_CONTROL
  out.set(json, prefix + 1)
  return out
}

/**
 * Frames `n` bytes that were read into `buf` at `DATA_FRAME_HEADROOM`: the prefix is written
 * into the headroom, so the chunk is sent without a copy. Returns the frame's bytes.
 */
export function frameDataInPlace (buf: Uint8Array, n: number): Uint8Array {
  const len = n + 1
  const prefix = varintLength(len)
  const start = DATA_FRAME_HEADROOM - 1 - prefix
  writeVarint(len, buf, start)
  buf[DATA_FRAME_HEADROOM - 1] = FRAME_DATA
  return buf.subarray(start, DATA_FRAME_HEADROOM + n)
}

/** A data frame holding a copy of `data` (for senders that do not read into a headroom). */
export function encodeDataFrame (data: Uint8Array): Uint8Array {
  const buf = new Uint8Array(DATA_FRAME_HEADROOM + data.byteLength)
  buf.set(data, DATA_FRAME_HEADROOM)
  return frameDataInPlace(buf, data.byteLength)
}

export type BlobFrame =
  | { kind: 'control', value: unknown }
  /** File bytes, as the views they arrived in (write them with `writev`). */
  | { kind: 'data', chunks: Uint8Array[], byteLength: number }

export interface BlobFrameReaderOptions {
  maxControlBytes: number
  /** 0: data frames are a protocol violation (what a server expects). */
  maxDataBytes: number
  /**
   * Pause the stream when this many bytes are buffered and not yet read, resume below a
   * quarter of it. Yamux acknowledges data on receipt, so without this a slow disk would
   * let a fast sender fill memory. Unset: no pausing, and at most two frames' worth is buffered.
   */
  highWaterMark?: number
}

/** Yamux's largest receive window: what can still arrive after a pause. */
const MAX_IN_FLIGHT_AFTER_PAUSE = 16 * 1024 * 1024

/**
 * Reads blob frames from a stream. Each length is checked against the limit of its kind
 * before the payload is buffered; anything malformed throws a `WireError`.
 */
export class BlobFrameReader {
  private chunks: Uint8Array[] = []
  private length = 0
  private ended: boolean
  private disposed = false
  private failure: Error | undefined
  private wake: (() => void) | undefined
  private readonly maxFrame: number
  private readonly highWaterMark: number | undefined
  private readonly lowWaterMark: number
  private readonly maxBuffered: number

  constructor (private readonly stream: Stream, private readonly opts: BlobFrameReaderOptions) {
    this.maxFrame = Math.max(opts.maxControlBytes, opts.maxDataBytes) + 1
    this.highWaterMark = opts.highWaterMark
    this.lowWaterMark = Math.max(this.maxFrame + MAX_VARINT_BYTES, Math.floor((opts.highWaterMark ?? 0) / 4))
    this.maxBuffered = opts.highWaterMark == null ? 2 * (this.maxFrame + MAX_VARINT_BYTES) : Number.POSITIVE_INFINITY
    if (opts.highWaterMark != null) {
      // While paused, the stream keeps what is still in flight; it must not reset for that.
      stream.maxReadBufferLength = Math.max(stream.maxReadBufferLength, MAX_IN_FLIGHT_AFTER_PAUSE + opts.highWaterMark)
    }
    this.ended = stream.remoteWriteStatus !== 'writable'
    stream.addEventListener('message', this.onMessage)
    stream.addEventListener('remoteCloseWrite', this.onRemoteCloseWrite)
    stream.addEventListener('close', this.onClose)
  }

  /** Bytes received and not yet read. */
  get buffered (): number {
    return this.length
  }

  /** Stops listening; unread bytes are dropped. */
  dispose (): void {
    this.disposed = true
    this.stream.removeEventListener('message', this.onMessage)
    this.stream.removeEventListener('remoteCloseWrite', this.onRemoteCloseWrite)
    this.stream.removeEventListener('close', this.onClose)
    this.chunks = []
    this.length = 0
    this.notify()
  }

  private readonly onMessage = (evt: { data: Uint8Array | Iterable<Uint8Array> }): void => {
    if (evt.data instanceof Uint8Array) this.append(evt.data)
    else for (const b of evt.data) this.append(b)
    if (this.length > this.maxBuffered && this.failure == null) {
      this.failure = new WireError(`peer sent ${this.length} bytes beyond what was asked`, 'frame_too_large')
    }
    if (this.highWaterMark != null && this.length > this.highWaterMark && this.stream.readStatus === 'readable') this.stream.pause()
    this.notify()
  }

  private readonly onRemoteCloseWrite = (): void => {
    this.ended = true
    this.notify()
  }

  private readonly onClose = (evt: Event): void => {
    const error = (evt as Event & { error?: unknown }).error
    if (error != null && this.failure == null) this.failure = error instanceof Error ? error : new Error(String(error))
    this.ended = true
    this.notify()
  }

  private append (b: Uint8Array): void {
    if (b.byteLength === 0) return
    this.chunks.push(b)
    this.length += b.byteLength
  }

  private notify (): void {
    const w = this.wake
    this.wake = undefined
    w?.()
  }

  private byteAt (i: number): number {
    for (const c of this.chunks) {
      if (i < c.byteLength) return c[i]
      i -= c.byteLength
    }
    throw new RangeError('read past buffered bytes')
  }

  /** Removes `n` bytes from the front, as views. */
  private take (n: number): Uint8Array[] {
    const out: Uint8Array[] = []
    while (n > 0) {
      const c = this.chunks[0]
      if (c.byteLength <= n) {
        out.push(c)
        this.chunks.shift()
        n -= c.byteLength
        this.length -= c.byteLength
      } else {
        out.push(c.subarray(0, n))
        this.chunks[0] = c.subarray(n)
        this.length -= n
        n = 0
      }
    }
    return out
  }

  /** A whole frame if one is buffered, `undefined` if more bytes are needed. */
  private parse (): BlobFrame | undefined {
    let len = 0
    let scale = 1
    let prefix = 0
    for (;;) {
      if (prefix === this.length) return undefined
      if (prefix === MAX_VARINT_BYTES) throw new WireError('frame length prefix too long', 'frame_too_large')
      const b = this.byteAt(prefix++)
      len += (b & 0x7f) * scale
      scale *= 0x80
      if ((b & 0x80) === 0) break
    }
    if (len === 0) throw new WireError('empty frame', 'invalid_frame')
    if (len > this.maxFrame) throw new WireError(`frame of ${len} bytes exceeds ${this.maxFrame}`, 'frame_too_large')
    if (this.length <= prefix) return undefined
    const kind = this.byteAt(prefix)
    if (kind === FRAME_CONTROL) {
      if (len - 1 > this.opts.maxControlBytes) throw new WireError(`control frame of ${len - 1} bytes exceeds ${this.opts.maxControlBytes}`, 'frame_too_large')
    } else if (kind === FRAME_DATA) {
      if (this.opts.maxDataBytes === 0) throw new WireError('unexpected data frame', 'invalid_frame')
      if (len - 1 > this.opts.maxDataBytes) throw new WireError(`data frame of ${len - 1} bytes exceeds ${this.opts.maxDataBytes}`, 'frame_too_large')
    } else {
      throw new WireError(`unknown frame kind ${kind}`, 'invalid_frame')
    }
    if (this.length < prefix + len) return undefined
    this.take(prefix + 1)
    const payload = this.take(len - 1)
    if (kind === FRAME_DATA) return { kind: 'data', chunks: payload, byteLength: len - 1 }
    let text: string
    try {
      text = decoder.decode(payload.length === 1 ? payload[0] : Buffer.concat(payload))
    } catch {
      throw new WireError('frame is not UTF-8', 'invalid_frame')
    }
    try {
      return { kind: 'control', value: JSON.parse(text) }
    } catch {
      throw new WireError('frame is not JSON', 'invalid_frame')
    }
  }

  private maybeResume (): void {
    if (this.stream.readStatus === 'paused' && this.length < this.lowWaterMark) {
      try { this.stream.resume() } catch {}
    }
  }

  /**
   * The next frame; `null` when the remote closed its side between frames. Throws a
   * `WireError` for a malformed frame or one cut off by the end of the stream, and the
   * stream's own error when it was reset.
   */
  async read (signal?: AbortSignal): Promise<BlobFrame | null> {
    for (;;) {
      signal?.throwIfAborted()
      if (this.disposed) throw new WireError('the reader was disposed', 'truncated_frame')
      if (this.failure instanceof WireError) throw this.failure
      const frame = this.parse()
      if (frame !== undefined) {
        this.maybeResume()
        return frame
      }
      if (this.failure != null) throw this.failure
      this.maybeResume()
      if (this.ended && this.stream.readBufferLength === 0) {
        if (this.length === 0) return null
        throw new WireError(`stream ended inside a frame (${this.length} bytes buffered)`, 'truncated_frame')
      }
      await new Promise<void>((resolve, reject) => {
        const onAbort = (): void => { this.wake = undefined; reject(signal?.reason) }
        this.wake = () => { signal?.removeEventListener('abort', onAbort); resolve() }
        signal?.addEventListener('abort', onAbort, { once: true })
      })
    }
  }
}
