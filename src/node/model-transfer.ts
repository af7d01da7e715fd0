/**
 * Model distribution, the node's side: which of its files it lets peers pull, and where a
 * pulled model is written. A model arrives in `<dir>/.partial/<name>.<fingerprint>.gguf.part`
 * (the scanner skips dot-dirs), is checked against the fingerprint the caller named (the sha256
 * of the whole file: never what the source announces, a source can lie) and for a valid GGUF
 * header, and only then appears as `<dir>/<name>.gguf`, by an atomic link that never replaces a
 * file. A source that announces or sends other content is refused before or after its bytes are
 * written to the `.part`, which is then deleted.
 */
import { createHash, type Hash } from 'node:crypto'
import { constants as fsConstants } from 'node:fs'
import { link, mkdir, open, rename, stat, statfs, unlink, type FileHandle } from 'node:fs/promises'
import { basename, dirname, join } from 'node:path'
import { MODEL_FINGERPRINT_MISMATCH, MODEL_INVALID_FILE } from '../errors.js'
import { createLogger } from '../logger.js'
import { isFingerprint, isSafeModelName } from '../p2p/index.js'
import { BlobTransferError, hashFileRange, isAborted, openBlob, type BlobOpenOptions, type BlobResolver } from '../p2p/index.js'
import type { Host } from '../p2p/index.js'
import { GgufFormatError, readGgufHeader } from './resources/gguf.js'
import type { ModelFile } from './resources/types.js'

const log = createLogger('node:model-transfer')

/** `name-00001-of-00003.gguf`: a split model is several files; one stream cannot carry it. */
const SPLIT_RE = /-\d{5}-of-\d{5}\.gguf$/i

/**
 * What this node lets peers pull: exactly the models it lists (name and fingerprint must both
 * match), as single files. `models` is read on every request, so it follows rescans.
 */
export function modelResolver (models: () => readonly ModelFile[]): BlobResolver {
  return (name, fingerprint) => {
    const m = models().find(m => m.name === name && m.fingerprint === fingerprint)
    if (m === undefined || SPLIT_RE.test(basename(m.path))) return undefined
    return { path: m.path, size: m.sizeBytes }
  }
}

/** Where pulled models go when none is configured: the first models dir, else `<dataDir>/models`. */
export function defaultModelsDestDir (opts: { dataDir: string, modelsDirs: readonly string[] }): string {
  return opts.modelsDirs[0] ?? join(opts.dataDir, 'models')
}

export interface TransferPaths {
  /** `<destDir>/<name>.gguf` */
  final: string
  /** `<destDir>/.partial` */
  partialDir: string
  /** `<destDir>/.partial/<name, '/' as %2F>.<fingerprint>.gguf.part` */
  part: string
}

/**
 * Where a pulled model is staged and installed. A name with folders (`Qwen/x`) lands in them
 * (`<destDir>/Qwen/x.gguf`); its staging file stays flat in `.partial/`, the name's slashes
 * escaped, so two names never share one.
 */
export function transferPaths (destDir: string, name: string, fingerprint: string): TransferPaths {
  const partialDir = join(destDir, '.partial')
  const flat = name.replaceAll('%', '%25').replaceAll('/', '%2F')
  return { final: join(destDir, `${name}.gguf`), partialDir, part: join(partialDir, `${flat}.${fingerprint}.gguf.part`) }
}

export interface TransferProgress {
  peer: string
  /** Bytes of the file on disk so far (resumed prefix included). */
  receivedBytes: number
  totalBytes: number
  /** Bytes this call took from the network. */
  transferredBytes: number
}

export interface FetchModelOptions extends Omit<BlobOpenOptions, 'signal'> {
  name: string
  fingerprint: string
  destDir: string
  /** Aborting keeps the `.part` file, so a later call resumes. */
  signal?: AbortSignal
  onProgress?: (p: TransferProgress) => void
  /**
   * Called for each source whose content is not the named fingerprint or not a valid GGUF
   * (codes `model_fingerprint_mismatch`, `model_invalid_file`), so the caller can audit it.
   */
  onSourceRejected?: (peer: string, code: string, message: string) => void
}

export interface FetchModelResult {
  /** `<destDir>/<name>.gguf` */
  path: string
  sizeBytes: number
  sha256: string
  /** The peer that sent the last byte; null when the file was already in place. */
  peer: string | null
  /** Bytes this call took from the network. */
  transferredBytes: number
  /** Bytes of an earlier `.part` this call started from. */
  resumedFromBytes: number
  /** The destination already held this exact file; nothing was written. */
  alreadyPresent: boolean
}

/** A failed fetch, with what each source answered. */
export class ModelTransferError extends BlobTransferError {
  constructor (message: string, code: string, status: number, readonly attempts: ReadonlyArray<{ peer: string, code: string }> = []) {
    super(message, code, status)
  }
}

/** Failures of this node, not of a source: trying another peer would not help. */
const LOCAL_CODES = new Set(['destination_exists', 'insufficient_disk', 'disk_error'])
/** Bytes that hash to the named fingerprint yet are no GGUF: every other source would send the same. */
const FINAL_CODES = new Set([MODEL_INVALID_FILE])

/** Targets being fetched by this process: two writers on one `.part` would corrupt it. */
const inFlight = new Set<string>()

/**
 * Pulls model `name` (with `fingerprint`) into `destDir`, from the first of `peers` that can
 * send it; a source that fails mid-way hands over to the next, which resumes where it stopped.
 * Resolves once `<destDir>/<name>.gguf` holds the file, verified and synced. Throws a
 * `ModelTransferError`: `invalid_model_name`, `invalid_fingerprint`, `transfer_in_progress`,
 * `transfer_aborted`, `destination_exists`, `insufficient_disk`, `disk_error`,
 * `model_invalid_file`, or the last source's failure (`model_unavailable`,
 * `model_fingerprint_mismatch`, `transfer_truncated`, ...).
 */
export async function fetchModel (host: Host, peers: string | readonly string[], opts: FetchModelOptions): Promise<FetchModelResult> {
  if (!isSafeModelName(opts.name)) throw new ModelTransferError(`'${opts.name.slice(0, 100)}' is not a valid model name`, 'invalid_model_name', 400)
  if (!isFingerprint(opts.fingerprint)) throw new ModelTransferError('a fingerprint is 64 lowercase hex digits', 'invalid_fingerprint', 400)
  const sources = typeof peers === 'string' ? [peers] : [...peers]
  if (sources.length === 0) throw new ModelTransferError(`no peer to fetch '${opts.name}' from`, 'model_unavailable', 404)
  const paths = transferPaths(opts.destDir, opts.name, opts.fingerprint)
  if (inFlight.has(paths.part)) throw new ModelTransferError(`'${opts.name}' is already being fetched`, 'transfer_in_progress', 409)
  inFlight.add(paths.part)
  try {
    return await new Transfer(host, paths, opts).run(sources)
  } finally {
    inFlight.delete(paths.part)
  }
}

function asTransferError (err: unknown): BlobTransferError {
  if (err instanceof BlobTransferError) return err
  const e = err as { code?: unknown, message?: unknown }
  if (typeof e?.code === 'string' && /^[a-z_]+$/.test(e.code)) return new BlobTransferError(String(e.message), e.code, 502).withCause(err)
  return new BlobTransferError('the transfer failed', 'transfer_failed', 502).withCause(err)
}

function diskError (err: unknown, what: string): BlobTransferError {
  if ((err as { code?: unknown })?.code === 'ENOSPC') return new BlobTransferError(`no space left while ${what}`, 'insufficient_disk', 507).withCause(err)
  return new BlobTransferError(`disk error while ${what}`, 'disk_error', 500).withCause(err)
}

async function sameContent (path: string, size: number, sha256: string): Promise<boolean> {
  const st = await stat(path)
  if (!st.isFile() || st.size !== size) return false
  const hash = createHash('sha256')
  await hashFileRange(hash, path, 0, size)
  return hash.digest('hex') === sha256
}

async function fsyncDir (dir: string): Promise<void> {
  // Makes the new name durable; not every platform can open a directory, and that is fine.
  try {
    const fh = await open(dir, 'r')
    try { await fh.sync() } finally { await fh.close() }
  } catch {}
}

/** Writes all of `chunks` at `position`, however many calls that takes. */
async function writeAll (fh: FileHandle, chunks: Uint8Array[], position: number): Promise<void> {
  let rest = chunks
  for (;;) {
    const total = rest.reduce((s, c) => s + c.byteLength, 0)
    if (total === 0) return
    const { bytesWritten } = await fh.writev(rest, position)
    if (bytesWritten === total) return
    position += bytesWritten
    let skip = bytesWritten
    const left: Uint8Array[] = []
    for (const c of rest) {
      if (skip >= c.byteLength) { skip -= c.byteLength; continue }
      left.push(skip > 0 ? c.subarray(skip) : c)
      skip = 0
    }
    rest = left
  }
}

/** One fetch: the `.part` on disk, the hash of its bytes so far, and what the sources announced. */
class Transfer {
  /** Bytes of the `.part` known good (written and hashed). */
  private size = 0
  private hash: Hash = createHash('sha256')
  private expected: { size: number, sha256: string } | undefined
  private resumedFrom = 0
  private transferred = 0
  private destinationChecked = false
  /** The last attempt was refused on the source's announcement, before any byte was written. */
  private refusedAtHeader = false

  constructor (private readonly host: Host, private readonly paths: TransferPaths, private readonly opts: FetchModelOptions) {}

  private aborted (): ModelTransferError {
    return new ModelTransferError('the transfer was aborted', 'transfer_aborted', 499).withCause(this.opts.signal?.reason)
  }

  async run (peers: string[]): Promise<FetchModelResult> {
    try {
      await mkdir(this.paths.partialDir, { recursive: true })
      const st = await stat(this.paths.part).catch(() => undefined)
      if (st?.isFile() === true && st.size > 0) {
        // The prefix is hashed once; the bytes that follow are hashed as they are written.
        await hashFileRange(this.hash, this.paths.part, 0, st.size, this.opts.signal)
        this.size = st.size
        this.resumedFrom = st.size
      }
    } catch (err) {
      if (isAborted(this.opts.signal)) throw this.aborted()
      throw diskError(err, 'preparing the partial file')
    }

    const attempts: Array<{ peer: string, code: string }> = []
    let last: BlobTransferError | undefined
    for (const peer of peers) {
      for (let restarted = false; ;) {
        if (isAborted(this.opts.signal)) throw this.aborted()
        const startedAt = this.size
        try {
          return await this.attempt(peer)
        } catch (err) {
          if (isAborted(this.opts.signal)) throw this.aborted()
          const e = asTransferError(err)
          attempts.push({ peer, code: e.code })
          log.debug('source failed', { peer, name: this.opts.name, code: e.code, at: this.size })
          if (e.code === MODEL_FINGERPRINT_MISMATCH || e.code === MODEL_INVALID_FILE) {
            log.warn('refused a source\'s model content', { peer, name: this.opts.name, code: e.code })
            this.opts.onSourceRejected?.(peer, e.code, e.message)
          }
          if (FINAL_CODES.has(e.code)) {
            await this.discard()
            throw new ModelTransferError(e.message, e.code, e.status, attempts).withCause(e)
          }
          if (LOCAL_CODES.has(e.code)) throw new ModelTransferError(e.message, e.code, e.status, attempts).withCause(e)
          // A source that announced other content sent nothing: the verified prefix stays.
          if ((e.code === MODEL_FINGERPRINT_MISMATCH && !this.refusedAtHeader) || e.code === 'bad_offset') {
            // Bytes that failed verification are never kept; a part longer than the file is not the file.
            await this.discard()
            // When the bad bytes may be an older prefix (not this source's), this source gets one clean try.
            if (!restarted && (e.code === 'bad_offset' || startedAt > 0)) { restarted = true; continue }
          }
          last = e
          break
        }
      }
    }
    const e = last!
    throw new ModelTransferError(e.message, e.code, e.status, attempts).withCause(e)
  }

  private async discard (): Promise<void> {
    await unlink(this.paths.part).catch(() => {})
    this.size = 0
    this.hash = createHash('sha256')
    this.expected = undefined
    this.resumedFrom = 0
  }

  private async attempt (peer: string): Promise<FetchModelResult> {
    const { name, fingerprint, signal } = this.opts
    this.refusedAtHeader = false
    // The fingerprint is the sha256 of the whole file: an honest source refuses at once when its file differs.
    const dl = await openBlob(this.host, peer, { name, fingerprint, offset: this.size, sha256: fingerprint }, this.opts)
    let fh: FileHandle | undefined
    let done = false
    try {
      if (dl.sha256 !== fingerprint) {
        // What the source announces is checked against the command, never trusted: no byte is written.
        this.refusedAtHeader = true
        throw new BlobTransferError(`${peer} offers other content for '${name}' (sha256 ${dl.sha256.slice(0, 16)}…, expected ${fingerprint.slice(0, 16)}…)`, MODEL_FINGERPRINT_MISMATCH, 502, peer)
      }
      if (this.expected != null && dl.size !== this.expected.size) {
        throw new BlobTransferError(`${peer} holds other content for '${name}'`, 'content_mismatch', 409, peer)
      }
      this.expected = { size: dl.size, sha256: fingerprint }
      if (!this.destinationChecked) {
        this.destinationChecked = true
        if (await this.destinationHolds(dl.size, dl.sha256)) {
          await unlink(this.paths.part).catch(() => {})
          return this.result(null, dl.size, dl.sha256, true)
        }
      }
      await this.checkSpace(dl.size - this.size)

      try {
        fh = await open(this.paths.part, fsConstants.O_RDWR | fsConstants.O_CREAT, 0o644)
        // Drops whatever a failed write left beyond the verified prefix.
        await fh.truncate(this.size)
      } catch (err) {
        throw diskError(err, 'opening the partial file')
      }
      for await (const chunks of dl.chunks) {
        let n = 0
        for (const c of chunks) n += c.byteLength
        try {
          await writeAll(fh, chunks, this.size)
        } catch (err) {
          throw diskError(err, 'writing the partial file')
        }
        for (const c of chunks) this.hash.update(c)
        this.size += n
        this.transferred += n
        this.opts.onProgress?.({ peer, receivedBytes: this.size, totalBytes: dl.size, transferredBytes: this.transferred })
        if (isAborted(signal)) throw this.aborted()
      }
      try {
        await fh.sync()
        await fh.close()
        fh = undefined
      } catch (err) {
        throw diskError(err, 'syncing the partial file')
      }
      const digest = this.hash.copy().digest('hex')
      if (this.size !== dl.size || digest !== fingerprint) {
        throw new BlobTransferError(`'${name}' from ${peer} does not match fingerprint ${fingerprint.slice(0, 16)}…`, MODEL_FINGERPRINT_MISMATCH, 502, peer)
      }
      await this.checkGguf(peer)
      done = true
      const alreadyPresent = await this.install(dl.size, fingerprint)
      return this.result(peer, dl.size, fingerprint, alreadyPresent)
    } finally {
      if (!done) dl.cancel()
      await fh?.close().catch(() => {})
    }
  }

  /** Only a file with a valid GGUF header (magic, version, parsable metadata and tensors) is installed. */
  private async checkGguf (peer: string): Promise<void> {
    try {
      await readGgufHeader(this.paths.part)
    } catch (err) {
      if (!(err instanceof GgufFormatError)) throw diskError(err, 'reading the partial file')
      // The message without the staging path: it goes back to the command's issuer.
      throw new BlobTransferError(`'${this.opts.name}' is not a valid GGUF file: ${err.message.slice(err.path.length + 2)}`, MODEL_INVALID_FILE, 422, peer).withCause(err)
    }
  }

  private result (peer: string | null, size: number, sha256: string, alreadyPresent: boolean): FetchModelResult {
    return { path: this.paths.final, sizeBytes: size, sha256, peer, transferredBytes: this.transferred, resumedFromBytes: this.resumedFrom, alreadyPresent }
  }

  /** True when the destination already holds this content; throws when it holds other content. */
  private async destinationHolds (size: number, sha256: string): Promise<boolean> {
    let same: boolean
    try {
      same = await sameContent(this.paths.final, size, sha256)
    } catch (err: any) {
      if (err?.code === 'ENOENT') return false
      throw diskError(err, 'checking the destination')
    }
    if (!same) throw new BlobTransferError(`${this.paths.final} exists with other content`, 'destination_exists', 409)
    return true
  }

  private async checkSpace (needed: number): Promise<void> {
    let available: number
    try {
      const fs = await statfs(this.paths.partialDir)
      available = fs.bavail * fs.bsize
    } catch {
      return // not every filesystem reports it; a full disk still fails the write
    }
    if (available < needed) throw new BlobTransferError(`${needed} bytes needed, ${available} free in ${this.opts.destDir}`, 'insufficient_disk', 507)
  }

  /**
   * Gives the verified `.part` its final name. A hard link fails if the name exists, where a
   * rename would silently replace it; the `.part` name is dropped after. Returns whether the
   * destination already held the same file.
   */
  private async install (size: number, sha256: string): Promise<boolean> {
    const { part, final } = this.paths
    // A name with folders (`Qwen/x`) installs into them; the name check keeps them below destDir.
    if (dirname(final) !== this.opts.destDir) {
      try { await mkdir(dirname(final), { recursive: true }) } catch (err) { throw diskError(err, 'creating the model\'s folder') }
    }
    for (let tries = 0; ; tries++) {
      try {
        await link(part, final)
        break
      } catch (err: any) {
        if (err?.code === 'EEXIST') {
          if (await this.destinationHolds(size, sha256)) {
            await unlink(part).catch(() => {})
            return true
          }
          if (tries < 2) continue // removed since: link again
          throw diskError(err, 'installing the model')
        }
        if (!['EPERM', 'ENOTSUP', 'EOPNOTSUPP', 'EXDEV', 'ENOSYS'].includes(err?.code)) throw diskError(err, 'installing the model')
        // No hard links on this filesystem: check, then rename (not atomic against a racing writer).
        if (await this.destinationHolds(size, sha256)) {
          await unlink(part).catch(() => {})
          return true
        }
        try { await rename(part, final) } catch (e) { throw diskError(e, 'installing the model') }
        await fsyncDir(this.opts.destDir)
        return false
      }
    }
    try { await unlink(part) } catch (err) { throw diskError(err, 'removing the partial file') }
    await fsyncDir(this.opts.destDir)
    await fsyncDir(this.paths.partialDir)
    return false
  }
}
