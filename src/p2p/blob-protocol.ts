/**
 * `/shepherd/blob/2.0.0`: a node pulls a model file from a peer that has it. One stream per
 * transfer. The requester sends one request frame; the holder answers a `header` (size and
 * sha256 of the whole file), then the bytes from the requested offset as data frames, then
 * `end`, or `error` at any point. Either side resetting the stream ends the transfer.
 */
import { createHash, type Hash } from 'node:crypto'
import { createReadStream } from 'node:fs'
import { open, type FileHandle } from 'node:fs/promises'
import { peerIdFromString } from '@libp2p/peer-id'
import type { Connection, Stream } from '@libp2p/interface'
import { ShepherdError, WireError } from '../errors.js'
import { createLogger } from '../logger.js'
import {
  BLOB_PROTOCOL, BLOB_VERSION, BlobFrameReader, DATA_FRAME_HEADROOM, DEFAULT_BLOB_CHUNK_BYTES, MAX_BLOB_CHUNK_BYTES, MAX_BLOB_CONTROL_BYTES,
  MAX_BLOB_REQUEST_BYTES, encodeControlFrame, frameDataInPlace, isBlobControl, isBlobRequest, type BlobControlFrame, type BlobRequestFrame
} from './blob-messages.js'
import type { Host } from './host.js'

/**
 * Why a transfer failed. Codes a server sends: `model_unavailable`, `busy`, `bad_offset`,
 * `content_mismatch`, `internal_error`. Codes the requester decides: `peer_unreachable`,
 * `transfer_truncated`, `transfer_stalled`, `transfer_corrupt`, `transfer_aborted`, and the
 * local ones of src/node/model-transfer.ts.
 */
export class BlobTransferError extends ShepherdError {
  constructor (message: string, code: string, status = 502, readonly peer: string | null = null) {
    super(message, { code, status })
  }
}

/** Codes a server may send, with the status each maps to; any other arrives as `remote_error`. */
const REMOTE_CODES: Record<string, number> = {
  model_unavailable: 404,
  busy: 503,
  bad_offset: 416,
  content_mismatch: 409,
  internal_error: 502
}

/** A file a server agrees to send: where it is and how large the node listed it. */
export interface BlobSource { path: string, size: number }

/**
 * Which file, if any, answers a request. Only files the node itself lists may be served:
 * the name is a key into that list, never a path.
 */
export type BlobResolver = (name: string, fingerprint: string) => BlobSource | undefined | Promise<BlobSource | undefined>

/** A frame broke the protocol; the stream is reset and the peer reported. */
export type BlobViolationListener = (peer: string, reason: string) => void

export interface BlobServeOptions {
  /** Transfers sent at once; a request beyond them is answered `busy`. Default 2. */
  maxConcurrent?: number
  /** Bytes per data frame. Default 256 KiB, at most 1 MiB. */
  chunkBytes?: number
  /** A peer that opens a stream must send its request within this time. Default 10 s. */
  requestTimeoutMs?: number
  onViolation?: BlobViolationListener
}

export interface BlobOpenOptions {
  signal?: AbortSignal
  /** Default 5 s. */
  connectTimeoutMs?: number
  /**
   * How long to wait for the header. The server hashes the whole file before it answers the
   * first request for it (then remembers the digest): tens of seconds for a large model on a
   * slow disk. Default 10 min.
   */
  headerTimeoutMs?: number
  /** A body that sends nothing for this long is given up. Default 30 s. */
  idleTimeoutMs?: number
}

/** An open transfer: the header, and the body from the requested offset to the end. */
export interface BlobDownload {
  peer: string
  /** Size of the whole file. */
  size: number
  /** sha256 of the whole file, lowercase hex. */
  sha256: string
  offset: number
  /**
   * The file's bytes from `offset`, one data frame at a time (as views, for `writev`).
   * Ends after exactly `size - offset` bytes and the `end` frame; throws a `BlobTransferError`
   * otherwise. Leaving it early resets the stream.
   */
  chunks: AsyncGenerator<Uint8Array[], void, undefined>
  /** Gives up the transfer (resets the stream) without reading the body. */
  cancel: () => void
}

export interface BlobStats {
  /** Transfers sent to the end. */
  served: number
  /** Transfers that ended in an error frame. */
  failed: number
  /** Requests answered `busy`. */
  busy: number
  violations: number
  /** File bytes handed to streams. */
  bytesSent: number
  /** Transfers in progress. */
  active: number
}

interface DigestEntry { size: number, mtimeMs: number, digest: Promise<string> }

/** Feeds bytes `[start, end)` of the file at `path` to `hash`. */
export async function hashFileRange (hash: Hash, path: string, start: number, end: number, signal?: AbortSignal): Promise<void> {
  if (end <= start) return
  const rs = createReadStream(path, { start, end: end - 1, highWaterMark: 1024 * 1024, signal })
  let n = 0
  for await (const chunk of rs) {
    hash.update(chunk as Buffer)
    n += (chunk as Buffer).byteLength
  }
  if (n !== end - start) throw new Error(`${path} ended after ${start + n} of ${end} bytes`)
}

/**
 * sha256 of whole files, remembered by (path, size, mtime). Hashing a model of several GB
 * takes seconds, so it is done once, on first request, streaming; concurrent requests for the
 * same file share one computation.
 */
export class FileDigests {
  private readonly entries = new Map<string, DigestEntry>()
  readonly stats = { hits: 0, computed: 0 }

  constructor (private readonly maxEntries = 256) {}

  async sha256 (path: string, size: number, mtimeMs: number): Promise<string> {
    const e = this.entries.get(path)
    if (e !== undefined && e.size === size && e.mtimeMs === mtimeMs) {
      this.stats.hits++
      // Most recently used last, so eviction drops the oldest.
      this.entries.delete(path)
      this.entries.set(path, e)
      return await e.digest
    }
    this.stats.computed++
    const digest = (async () => {
      const hash = createHash('sha256')
      await hashFileRange(hash, path, 0, size)
      return hash.digest('hex')
    })()
    this.entries.set(path, { size, mtimeMs, digest })
    digest.catch(() => { if (this.entries.get(path)?.digest === digest) this.entries.delete(path) })
    while (this.entries.size > this.maxEntries) this.entries.delete(this.entries.keys().next().value as string)
    return await digest
  }
}

const DEFAULTS = {
  maxConcurrent: 2,
  chunkBytes: DEFAULT_BLOB_CHUNK_BYTES,
  requestTimeoutMs: 10_000,
  connectTimeoutMs: 5_000,
  headerTimeoutMs: 10 * 60_000,
  idleTimeoutMs: 30_000,
  /** Client read buffer before the stream is paused. */
  highWaterMark: 4 * 1024 * 1024,
  /** Streams a peer may open to us at once; transfers beyond `maxConcurrent` are answered busy. */
  maxInboundStreams: 32
}

function errorFrame (err: unknown): BlobControlFrame {
  if (err instanceof BlobTransferError && Object.hasOwn(REMOTE_CODES, err.code)) return { t: 'error', code: err.code, message: err.message.slice(0, 1024) }
  // fs errors carry local paths; a peer learns only that reading failed.
  return { t: 'error', code: 'internal_error', message: 'the file could not be read' }
}

/** Read through a call, so the compiler does not assume an earlier check still holds. */
export function isAborted (signal?: AbortSignal): boolean {
  return signal?.aborted === true
}

async function send (stream: Stream, bytes: Uint8Array, signal?: AbortSignal): Promise<void> {
  if (!stream.send(bytes)) await stream.onDrain({ signal })
}

/**
 * Serves model files to peers and fetches them from peers. One per host.
 */
export class BlobService {
  private readonly log = createLogger('p2p:blob')
  private resolve?: BlobResolver
  private opts: Required<Omit<BlobServeOptions, 'onViolation'>> & Pick<BlobServeOptions, 'onViolation'> = {
    maxConcurrent: DEFAULTS.maxConcurrent, chunkBytes: DEFAULTS.chunkBytes, requestTimeoutMs: DEFAULTS.requestTimeoutMs
  }

  private readonly transfers = new Set<AbortController>()
  readonly stats: BlobStats = { served: 0, failed: 0, busy: 0, violations: 0, bytesSent: 0, active: 0 }
  /** Digests of served files; share one across services of the same node. */
  readonly digests: FileDigests

  constructor (private readonly host: Host, opts: { digests?: FileDigests } = {}) {
    this.digests = opts.digests ?? new FileDigests()
  }

  /** Starts answering peers' requests for the files `resolve` admits. */
  async serve (resolve: BlobResolver, opts: BlobServeOptions = {}): Promise<void> {
    const chunkBytes = opts.chunkBytes ?? DEFAULTS.chunkBytes
    if (!Number.isInteger(chunkBytes) || chunkBytes < 1 || chunkBytes > MAX_BLOB_CHUNK_BYTES) throw new RangeError(`chunkBytes must be 1..${MAX_BLOB_CHUNK_BYTES}`)
    this.resolve = resolve
    this.opts = {
      maxConcurrent: opts.maxConcurrent ?? DEFAULTS.maxConcurrent,
      chunkBytes,
      requestTimeoutMs: opts.requestTimeoutMs ?? DEFAULTS.requestTimeoutMs,
      onViolation: opts.onViolation
    }
    await this.host.handle(BLOB_PROTOCOL, (stream, conn) => { void this.onStream(stream, conn) }, {
      maxInboundStreams: DEFAULTS.maxInboundStreams,
      maxOutboundStreams: DEFAULTS.maxInboundStreams
    })
  }

  /** Stops serving and ends the transfers in progress. */
  async stop (): Promise<void> {
    await this.host.unhandle(BLOB_PROTOCOL).catch(() => {})
    for (const ac of this.transfers) ac.abort(new BlobTransferError('the node is stopping', 'busy', 503))
  }

  private violation (peer: string, stream: Stream, reason: string): void {
    this.stats.violations++
    this.log.warn('protocol violation', { peer, reason })
    this.opts.onViolation?.(peer, reason)
    stream.abort(new WireError(reason))
  }

  private async onStream (stream: Stream, conn: Connection): Promise<void> {
    const peer = conn.remotePeer.toString()
    const reader = new BlobFrameReader(stream, { maxControlBytes: MAX_BLOB_REQUEST_BYTES, maxDataBytes: 0 })
    let frame
    try {
      frame = await reader.read(AbortSignal.timeout(this.opts.requestTimeoutMs))
    } catch (err: any) {
      this.violation(peer, stream, err instanceof WireError ? err.message : `no request frame: ${err?.message ?? err}`)
      return
    } finally {
      reader.dispose()
    }
    if (frame === null) {
      await stream.close().catch(() => {})
      return
    }
    if (frame.kind !== 'control' || !isBlobRequest(frame.value)) {
      this.violation(peer, stream, 'invalid request frame')
      return
    }
    const req = frame.value
    if (this.stats.active >= this.opts.maxConcurrent) {
      this.stats.busy++
      try {
        await send(stream, encodeControlFrame({ t: 'error', code: 'busy', message: `this node already sends ${this.stats.active} models` }))
        await stream.close()
      } catch (err) {
        stream.abort(err as Error)
      }
      return
    }
    this.stats.active++
    const ac = new AbortController()
    this.transfers.add(ac)
    const onClose = (): void => { ac.abort(new BlobTransferError('the requesting peer went away', 'transfer_aborted', 499)) }
    stream.addEventListener('close', onClose)
    const started = Date.now()
    try {
      const bytes = await this.sendFile(stream, req, ac.signal)
      this.stats.served++
      this.log.debug('sent', { peer, name: req.name, offset: req.offset, bytes, ms: Date.now() - started })
      await stream.close().catch(() => {})
    } catch (err) {
      if (ac.signal.aborted) {
        this.log.debug('transfer ended early', { peer, name: req.name, reason: ac.signal.reason })
        stream.abort(ac.signal.reason)
        return
      }
      this.stats.failed++
      this.log.debug('transfer failed', { peer, name: req.name, err: err as Error })
      try {
        await send(stream, encodeControlFrame(errorFrame(err)))
        await stream.close()
      } catch {
        stream.abort(err as Error)
      }
    } finally {
      this.stats.active--
      this.transfers.delete(ac)
      stream.removeEventListener('close', onClose)
    }
  }

  /** Sends the header and the file from `req.offset`; returns the bytes sent. */
  private async sendFile (stream: Stream, req: BlobRequestFrame, signal: AbortSignal): Promise<number> {
    const unavailable = (): BlobTransferError => new BlobTransferError(`no model '${req.name}' with fingerprint ${req.fingerprint.slice(0, 12)}… here`, 'model_unavailable', 404)
    const src = this.resolve == null ? undefined : await this.resolve(req.name, req.fingerprint)
    if (src === undefined) throw unavailable()
    let fh: FileHandle
    try {
      fh = await open(src.path, 'r')
    } catch (err: any) {
      if (err?.code === 'ENOENT') throw unavailable()
      throw err
    }
    let next: Promise<{ buf: Buffer, n: number }> | undefined
    try {
      const st = await fh.stat()
      // A file that changed since the node listed it is not the one the fingerprint names.
      if (!st.isFile() || st.size !== src.size) throw unavailable()
      const size = st.size
      if (req.offset > size) throw new BlobTransferError(`offset ${req.offset} is past the end (${size} bytes)`, 'bad_offset', 416)
      const sha256 = await this.digests.sha256(src.path, size, st.mtimeMs)
      signal.throwIfAborted()
      if (req.sha256 !== undefined && req.sha256 !== sha256) throw new BlobTransferError('this node holds other content under that name and fingerprint', 'content_mismatch', 409)
      await send(stream, encodeControlFrame({ t: 'header', size, sha256 }), signal)

      const chunkBytes = this.opts.chunkBytes
      const readChunk = async (position: number): Promise<{ buf: Buffer, n: number }> => {
        const want = Math.min(chunkBytes, size - position)
        const buf = Buffer.allocUnsafe(DATA_FRAME_HEADROOM + want)
        let n = 0
        while (n < want) {
          const { bytesRead } = await fh.read(buf, DATA_FRAME_HEADROOM + n, want - n, position + n)
          if (bytesRead === 0) throw unavailable().withMessage(`'${req.name}' shrank while being sent`)
          n += bytesRead
        }
        return { buf, n }
      }
      // One chunk is read ahead, so the disk works while the previous chunk is on the wire.
      let position = req.offset
      next = position < size ? readChunk(position) : undefined
      while (next !== undefined) {
        const { buf, n } = await next
        position += n
        next = position < size ? readChunk(position) : undefined
        next?.catch(() => {})
        signal.throwIfAborted()
        const more = stream.send(frameDataInPlace(buf, n))
        this.stats.bytesSent += n
        if (!more) await stream.onDrain({ signal })
      }
      await send(stream, encodeControlFrame({ t: 'end' }), signal)
      return size - req.offset
    } finally {
      await next?.catch(() => {})
      await fh.close().catch(() => {})
    }
  }

  /** Asks `peer` for a file; see `openBlob`. */
  async open (peer: string, req: Omit<BlobRequestFrame, 'v'>, opts: BlobOpenOptions = {}): Promise<BlobDownload> {
    return await openBlob(this.host, peer, req, opts)
  }
}

/**
 * Asks `peer` for the file named by `req` and resolves once its header arrived. Errors are
 * `BlobTransferError`s: the server's code (`model_unavailable`, `busy`, ...), or
 * `peer_unreachable`, `transfer_truncated`, `transfer_stalled`, `transfer_aborted`; a peer
 * that breaks the protocol gets its stream reset and a `WireError`.
 */
export async function openBlob (host: Host, peer: string, req: Omit<BlobRequestFrame, 'v'>, opts: BlobOpenOptions = {}): Promise<BlobDownload> {
  const userSignal = opts.signal
  const aborted = (): BlobTransferError => new BlobTransferError('the transfer was aborted', 'transfer_aborted', 499, peer).withCause(userSignal?.reason)
  if (isAborted(userSignal)) throw aborted()
  let stream: Stream
  try {
    const connectSignal = AbortSignal.any([userSignal ?? new AbortController().signal, AbortSignal.timeout(opts.connectTimeoutMs ?? DEFAULTS.connectTimeoutMs)])
    stream = await host.dialProtocol(peerIdFromString(peer), BLOB_PROTOCOL, { signal: connectSignal })
  } catch (err) {
    if (isAborted(userSignal)) throw aborted()
    throw new BlobTransferError(`cannot open a transfer stream to ${peer}`, 'peer_unreachable', 503, peer).withCause(err)
  }
  const reader = new BlobFrameReader(stream, { maxControlBytes: MAX_BLOB_CONTROL_BYTES, maxDataBytes: MAX_BLOB_CHUNK_BYTES, highWaterMark: DEFAULTS.highWaterMark })
  const onAbort = (): void => { stream.abort(aborted()) }
  userSignal?.addEventListener('abort', onAbort, { once: true })
  const release = (err?: Error): void => {
    userSignal?.removeEventListener('abort', onAbort)
    if (err !== undefined) stream.abort(err)
    reader.dispose()
  }
  const remoteError = (f: { code: string, message: string }): BlobTransferError =>
    new BlobTransferError(f.message, Object.hasOwn(REMOTE_CODES, f.code) ? f.code : 'remote_error', Object.hasOwn(REMOTE_CODES, f.code) ? REMOTE_CODES[f.code] : 502, peer)
  /** Maps whatever ended a read to the error the caller sees. */
  const failure = (err: any): Error => {
    if (isAborted(userSignal)) return aborted()
    if (err instanceof BlobTransferError) return err
    if (err instanceof WireError && err.code !== 'truncated_frame') return err
    return new BlobTransferError(`the transfer from ${peer} was cut off`, 'transfer_truncated', 502, peer).withCause(err)
  }
  const readControl = async (signal?: AbortSignal): Promise<BlobControlFrame | null> => {
    const frame = await reader.read(signal)
    if (frame === null) return null
    if (frame.kind === 'data') throw new WireError('data before the header')
    if (!isBlobControl(frame.value)) throw new WireError('invalid control frame')
    return frame.value
  }

  let header: BlobControlFrame | null
  try {
    await send(stream, encodeControlFrame({ v: BLOB_VERSION, ...req }), userSignal)
    const headerSignal = AbortSignal.any([userSignal ?? new AbortController().signal, AbortSignal.timeout(opts.headerTimeoutMs ?? DEFAULTS.headerTimeoutMs)])
    header = await readControl(headerSignal)
  } catch (err: any) {
    const e = err?.name === 'TimeoutError' && !isAborted(userSignal)
      ? new BlobTransferError(`${peer} did not answer in time`, 'transfer_stalled', 504, peer)
      : failure(err)
    release(e)
    throw e
  }
  if (header?.t === 'error') {
    release()
    await stream.close().catch(() => {})
    throw remoteError(header)
  }
  if (header?.t !== 'header' || header.size < req.offset) {
    const e = header === null ? failure(null) : new WireError(`expected a header at offset ${req.offset}, got ${JSON.stringify(header).slice(0, 100)}`)
    release(e)
    throw e
  }
  const { size, sha256 } = header
  const idleMs = opts.idleTimeoutMs ?? DEFAULTS.idleTimeoutMs
  let started = false

  const chunks = async function * (): AsyncGenerator<Uint8Array[], void, undefined> {
    started = true
    const idle = new AbortController()
    const timer = setTimeout(() => { idle.abort(new BlobTransferError(`${peer} sent nothing for ${idleMs} ms`, 'transfer_stalled', 504, peer)) }, idleMs)
    const signal = userSignal == null ? idle.signal : AbortSignal.any([userSignal, idle.signal])
    let remaining = size - req.offset
    // Clean: the server finished its side (`end` or `error`); anything else resets the stream.
    let clean = false
    let reason: Error = new BlobTransferError('transfer abandoned', 'transfer_aborted', 499, peer)
    try {
      for (;;) {
        timer.refresh()
        let frame
        try {
          frame = await reader.read(signal)
        } catch (err) {
          throw idle.signal.aborted && !isAborted(userSignal) ? idle.signal.reason : failure(err)
        }
        if (frame === null) throw failure(null)
        if (frame.kind === 'data') {
          if (frame.byteLength > remaining) throw new BlobTransferError(`${peer} sent more bytes than the ${size} it announced`, 'transfer_corrupt', 502, peer)
          remaining -= frame.byteLength
          yield frame.chunks
          continue
        }
        const ctl = frame.value
        if (!isBlobControl(ctl) || ctl.t === 'header') throw new WireError('invalid control frame')
        if (ctl.t === 'error') {
          clean = true
          throw remoteError(ctl)
        }
        if (remaining !== 0) throw new BlobTransferError(`${peer} ended the transfer ${remaining} bytes short`, 'transfer_truncated', 502, peer)
        clean = true
        return
      }
    } catch (err) {
      reason = err as Error
      throw err
    } finally {
      clearTimeout(timer)
      if (clean) {
        release()
        await stream.close().catch(() => {})
      } else {
        release(reason)
      }
    }
  }

  return {
    peer,
    size,
    sha256,
    offset: req.offset,
    chunks: chunks(),
    cancel: () => {
      const err = new BlobTransferError('transfer cancelled', 'transfer_aborted', 499, peer)
      // A running body sees the reset and runs its own cleanup.
      if (started) stream.abort(err)
      else release(err)
    }
  }
}
