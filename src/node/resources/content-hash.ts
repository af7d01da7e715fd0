/**
 * A model's identity is the sha256 of its whole file content (issue 11 item 3): two files with
 * the same name and different bytes are different models, and a pulled file is checked against
 * the fingerprint a command named. Hashing a 40 GB model takes minutes, so each result is
 * remembered by (path, size, mtime, inode) and persisted in a sidecar in the data dir (never in
 * a models dir, which peers and users write to), and files are hashed one at a time with one
 * fixed buffer, yielding to the event loop between reads, so start-up and requests keep going.
 */
import { createHash } from 'node:crypto'
import { open, readFile, rename, writeFile } from 'node:fs/promises'
import { setImmediate as yieldToLoop } from 'node:timers/promises'
import { createLogger, type Logger } from '../../logger.js'

/** One file of a model (a split model has several, hashed in order as one stream). */
export interface HashedFile {
  path: string
  size: number
  mtimeMs: number
  ino: number
}

/** Where a pulled model came from, recorded when it was installed. */
export interface ModelSource {
  /** Peer id of the node that sent the verified bytes. */
  peer: string
  /** ISO time of the install. */
  at: string
  /** The fingerprint the command named (equal to the file's sha256). */
  fingerprint: string
}

interface Entry {
  /** `size:mtimeMs:ino` of each part, joined by `|`: any change invalidates the hash. */
  stamp: string
  sha256: string
  source?: ModelSource
}

export interface ContentHashCacheOptions {
  /** Sidecar JSON file (in the data dir); none keeps the cache in memory only. */
  file?: string
  /** Read size. 1 MiB: large enough for full disk speed, small enough to yield often. */
  chunkBytes?: number
  /** Called after a background hash finished (the scanner then lists the model). */
  onHashed?: (path: string) => void
  log?: Logger
}

/** Entries the sidecar keeps at most (one per model file; a models dir rarely holds more than a few hundred). */
const MAX_ENTRIES = 4096

function stampOf (parts: readonly HashedFile[]): string {
  return parts.map(p => `${p.size}:${p.mtimeMs}:${p.ino}`).join('|')
}

/**
 * Full-content sha256 of model files, cached and persisted. Jobs run one at a time (bounded
 * I/O: one file read at a time through one buffer); asking twice for the same file joins the
 * running job.
 */
export class ContentHashCache {
  private readonly entries = new Map<string, Entry>()
  private readonly jobs = new Map<string, Promise<string>>()
  private queue: Promise<unknown> = Promise.resolve()
  private loaded: Promise<void> | undefined
  private readonly log: Logger
  private readonly chunkBytes: number
  /** Lookups answered from the cache, files hashed, and bytes read to hash them. */
  readonly stats = { hits: 0, hashed: 0, bytesHashed: 0 }

  constructor (private readonly opts: ContentHashCacheOptions = {}) {
    this.log = opts.log ?? createLogger('resources:content-hash')
    this.chunkBytes = opts.chunkBytes ?? 1024 * 1024
  }

  /** Reads the sidecar once; a missing or damaged one starts an empty cache (hashes are recomputed). */
  async load (): Promise<void> {
    this.loaded ??= (async () => {
      if (this.opts.file == null) return
      try {
        const data = JSON.parse(await readFile(this.opts.file, 'utf8')) as { v?: number, entries?: Record<string, Entry> }
        if (data.v !== 1 || data.entries == null || typeof data.entries !== 'object') return
        for (const [path, e] of Object.entries(data.entries).slice(0, MAX_ENTRIES)) {
          if (typeof e?.stamp === 'string' && typeof e.sha256 === 'string' && /^[0-9a-f]{64}$/.test(e.sha256)) this.entries.set(path, e)
        }
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'ENOENT') this.log.warn('ignoring unreadable model hash cache', { file: this.opts.file, err: err as Error })
      }
    })()
    await this.loaded
  }

  /** The cached hash (and source) of a model whose parts are unchanged since they were hashed. */
  lookup (parts: readonly HashedFile[]): { sha256: string, source?: ModelSource } | undefined {
    const e = this.entries.get(parts[0].path)
    if (e === undefined || e.stamp !== stampOf(parts)) return undefined
    this.stats.hits++
    return e.source != null ? { sha256: e.sha256, source: e.source } : { sha256: e.sha256 }
  }

  /** Whether a hash of these parts is queued or running. */
  pending (parts: readonly HashedFile[]): boolean {
    return this.jobs.has(`${parts[0].path}\0${stampOf(parts)}`)
  }

  /** Hashes the parts (after the jobs queued before), caches and persists the result. */
  async hash (parts: readonly HashedFile[]): Promise<string> {
    await this.load()
    const hit = this.lookup(parts)
    if (hit !== undefined) return hit.sha256
    const key = `${parts[0].path}\0${stampOf(parts)}`
    const running = this.jobs.get(key)
    if (running !== undefined) return await running
    const job = this.queue.then(async () => await this.compute(parts)).finally(() => { this.jobs.delete(key) })
    this.queue = job.catch(() => {})
    this.jobs.set(key, job)
    return await job
  }

  /** Starts hashing in the background; `onHashed` is called when done. Failures are logged. */
  schedule (parts: readonly HashedFile[]): void {
    if (this.pending(parts)) return
    this.hash(parts).then(
      () => { this.opts.onHashed?.(parts[0].path) },
      err => { this.log.warn('could not hash model file', { path: parts[0].path, err: err as Error }) }
    )
  }

  /**
   * Records a hash already verified elsewhere (a pull computes it while writing), with where the
   * file came from; saves the sidecar.
   */
  async remember (parts: readonly HashedFile[], sha256: string, source?: ModelSource): Promise<void> {
    await this.load()
    this.entries.set(parts[0].path, { stamp: stampOf(parts), sha256, ...(source != null ? { source } : {}) })
    await this.save()
  }

  /** Forgets paths not seen in the latest scan (a pending job is kept: its path is being scanned). */
  retain (seen: ReadonlySet<string>): void {
    let changed = false
    for (const path of [...this.entries.keys()]) {
      if (!seen.has(path)) { this.entries.delete(path); changed = true }
    }
    if (changed) void this.save()
  }

  get size (): number { return this.entries.size }

  private async compute (parts: readonly HashedFile[]): Promise<string> {
    const started = performance.now()
    const hash = createHash('sha256')
    const buf = Buffer.allocUnsafe(this.chunkBytes)
    for (const p of parts) {
      const fh = await open(p.path, 'r')
      try {
        let position = 0
        while (position < p.size) {
          const { bytesRead } = await fh.read(buf, 0, Math.min(buf.length, p.size - position), position)
          if (bytesRead === 0) throw new Error(`${p.path} shrank while being hashed`)
          hash.update(buf.subarray(0, bytesRead))
          position += bytesRead
          this.stats.bytesHashed += bytesRead
          // Lets timers, heartbeats and requests run between reads of a multi-GB file.
          await yieldToLoop()
        }
      } finally {
        await fh.close()
      }
    }
    const sha256 = hash.digest('hex')
    this.stats.hashed++
    const prev = this.entries.get(parts[0].path)
    // A source recorded for these very bytes stays with them.
    const source = prev?.sha256 === sha256 ? prev.source : undefined
    this.entries.set(parts[0].path, { stamp: stampOf(parts), sha256, ...(source != null ? { source } : {}) })
    const bytes = parts.reduce((s, p) => s + p.size, 0)
    if (bytes > 64 * 1024 * 1024) this.log.info('hashed model file', { path: parts[0].path, bytes, ms: Math.round(performance.now() - started) })
    await this.save()
    return sha256
  }

  private saving: Promise<void> = Promise.resolve()

  /** Writes the sidecar atomically (temp file, rename); a failed write is logged, never thrown. */
  private async save (): Promise<void> {
    const file = this.opts.file
    if (file == null) return
    this.saving = this.saving.then(async () => {
      const entries = Object.fromEntries([...this.entries.entries()].slice(-MAX_ENTRIES))
      const tmp = `${file}.tmp`
      try {
        await writeFile(tmp, JSON.stringify({ v: 1, entries }))
        await rename(tmp, file)
      } catch (err) {
        this.log.warn('could not save model hash cache', { file, err: err as Error })
      }
    })
    await this.saving
  }
}
