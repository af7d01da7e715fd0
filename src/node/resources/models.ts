/**
 * Finds the GGUF models a node can serve. Scans are meant to repeat every few seconds, so each
 * file's header is read once and remembered by (path, size, mtime). A model's fingerprint is the
 * sha256 of its whole content (content-hash.ts): files up to `inlineHashBytes` are hashed during
 * the scan; bigger ones are hashed in the background and listed only once their hash is known
 * (a model is never announced under a fingerprint that is not its content's).
 */
import { readdir, realpath, stat } from 'node:fs/promises'
import { basename, join, relative, resolve, sep } from 'node:path'
import { createLogger, type Logger } from '../../logger.js'
import { ContentHashCache, type HashedFile } from './content-hash.js'
import { GgufFormatError, readGgufHeader, type GgufHeader } from './gguf.js'
import type { ModelFile } from './types.js'

/** `name-00001-of-00003.gguf`, the llama.cpp split naming. */
const SPLIT_RE = /^(.+)-(\d{5})-of-(\d{5})\.gguf$/i

/** Architectures that are GGUF but not servable chat/completion models on their own. */
const NON_MODEL_ARCHITECTURES = new Set(['clip'])

interface CacheEntry {
  size: number
  mtimeMs: number
  /** null: the file is not a usable GGUF (remembered so it is not re-read every scan). */
  header: GgufHeader | null
}

/** Remembers parsed headers by path, invalidated when size or mtime change. */

/** Unreadable dirs already reported (dir:errno). */
const warnedDirs = new Set<string>()
export class ModelScanCache {
  private readonly entries = new Map<string, CacheEntry>()
  /** Lookups answered from the cache, and headers that had to be read. */
  readonly stats = { hits: 0, misses: 0 }

  get (path: string, size: number, mtimeMs: number): CacheEntry | undefined {
    const e = this.entries.get(path)
    if (e !== undefined && e.size === size && e.mtimeMs === mtimeMs) {
      this.stats.hits++
      return e
    }
    this.stats.misses++
    return undefined
  }

  set (path: string, entry: CacheEntry): void { this.entries.set(path, entry) }

  /** Forgets paths not seen in the latest scan so the cache cannot grow without bound. */
  retain (seen: Set<string>): void {
    for (const path of this.entries.keys()) if (!seen.has(path)) this.entries.delete(path)
  }

  get size (): number { return this.entries.size }
}

export interface ScanModelsOptions {
  /** Header cache; pass the same one on every scan. Defaults to a process-wide cache. */
  cache?: ModelScanCache
  /** How many levels of subdirectories to enter below each dir. Default 1. */
  depth?: number
  /** Content hashes; pass the same one on every scan. Defaults to a process-wide, in-memory one. */
  hashes?: ContentHashCache
  /**
   * Models up to this size are hashed during the scan; bigger ones in the background (listed
   * once hashed). 64 MiB hashes in well under a second even on a Raspberry Pi's SD card.
   */
  inlineHashBytes?: number
  log?: Logger
}

const defaultCache = new ModelScanCache()
const defaultHashes = new ContentHashCache()
export const DEFAULT_INLINE_HASH_BYTES = 64 * 1024 * 1024
const defaultLog = createLogger('resources:models')

interface Found extends HashedFile {
  real: string
  /** The models dir the walk started from: the model's id is its path below it. */
  root: string
}

async function walk (root: string, dir: string, depth: number, out: Found[], visited: Set<string>, log: Logger): Promise<void> {
  let real: string
  let names: string[]
  try {
    real = await realpath(dir)
    if (visited.has(real)) return
    visited.add(real)
    names = await readdir(dir)
  } catch (err) {
    // Rescans run every few seconds: say it once per dir and error, not every time.
    const key = `${dir}:${(err as NodeJS.ErrnoException).code ?? ''}`
    if (!warnedDirs.has(key)) {
      warnedDirs.add(key)
      log.warn('skipping unreadable models dir', { dir, err: err as Error })
    }
    return
  }
  names.sort()
  for (const name of names) {
    if (name.startsWith('.')) continue
    const path = join(dir, name)
    let st
    try {
      st = await stat(path) // follows symlinks: model dirs are often links into a blob store
    } catch {
      continue // dangling link or raced deletion
    }
    if (st.isDirectory()) {
      if (depth > 0) await walk(root, path, depth - 1, out, visited, log)
    } else if (st.isFile() && name.toLowerCase().endsWith('.gguf')) {
      let fileReal = path
      try { fileReal = await realpath(path) } catch {}
      out.push({ path, real: fileReal, root, size: st.size, mtimeMs: st.mtimeMs, ino: st.ino })
    }
  }
}

async function headerOf (f: Found, cache: ModelScanCache, log: Logger): Promise<GgufHeader | null> {
  const hit = cache.get(f.path, f.size, f.mtimeMs)
  if (hit !== undefined) return hit.header
  let header: GgufHeader | null = null
  try {
    header = await readGgufHeader(f.path)
  } catch (err) {
    if (!(err instanceof GgufFormatError)) throw err
    log.debug('skipping file that is not a usable GGUF', { path: f.path, err })
  }
  cache.set(f.path, { size: f.size, mtimeMs: f.mtimeMs, header })
  return header
}

/**
 * Lists the GGUF models in `dirs` (each dir plus `depth` levels of subdirs). Unreadable dirs
 * are skipped with a warning, files that are not valid GGUF are skipped, the same file reached
 * twice (repeated dir, symlink) is listed once, and split models are listed once under their
 * base name with the sizes of all parts (only when every part is present).
 */
export async function scanModels (dirs: string[], opts: ScanModelsOptions = {}): Promise<ModelFile[]> {
  const cache = opts.cache ?? defaultCache
  const hashes = opts.hashes ?? defaultHashes
  const inlineHashBytes = opts.inlineHashBytes ?? DEFAULT_INLINE_HASH_BYTES
  await hashes.load()
  const log = opts.log ?? defaultLog
  const depth = opts.depth ?? 1

  const found: Found[] = []
  const visited = new Set<string>()
  for (const dir of dirs) await walk(resolve(dir), resolve(dir), depth, found, visited, log)

  const byReal = new Map<string, Found>()
  for (const f of found) if (!byReal.has(f.real)) byReal.set(f.real, f)
  const files = [...byReal.values()]
  const byPath = new Map(files.map(f => [f.path, f]))

  const models: ModelFile[] = []
  for (const f of files) {
    const file = basename(f.path)
    const split = SPLIT_RE.exec(file)
    // The id keeps the folders below the models dir (`Qwen/x` for `<dir>/Qwen/x.gguf`), so two
    // files of one name in different folders stay two models, and HF-style ids address files.
    const folder = relative(f.root, join(f.path, '..')).split(sep).filter(p => p !== '').join('/')
    const within = (base: string): string => folder === '' ? base : `${folder}/${base}`
    let name = within(file.slice(0, -'.gguf'.length))
    let sizeBytes = f.size
    let parts: Found[] = [f]
    if (split !== null) {
      const [, base, no, of] = split
      const total = Number(of)
      if (Number(no) !== 1) continue // listed through part 1
      parts = []
      for (let i = 1; i <= total; i++) {
        const part = byPath.get(join(f.path, '..', `${base}-${String(i).padStart(5, '0')}-of-${of}.gguf`))
        if (part === undefined) break
        parts.push(part)
      }
      if (parts.length !== total) {
        log.warn('skipping split model with missing parts', { path: f.path, found: parts.length, expected: total })
        continue
      }
      name = within(base)
      sizeBytes = parts.reduce((s, p) => s + p.size, 0)
    }

    const header = await headerOf(f, cache, log)
    if (header === null) continue
    if (header.architecture !== null && NON_MODEL_ARCHITECTURES.has(header.architecture)) continue

    let parameterCount = header.parameterCount
    if (parts.length > 1 && !header.metadata.has('general.parameter_count')) {
      // Each part holds its own tensors; the estimate needs all of them.
      parameterCount = 0
      for (const p of parts) {
        const h = p === f ? header : await headerOf(p, cache, log)
        if (h === null) { parameterCount = null; break }
        parameterCount += h.parameterCount ?? 0
      }
    }

    let content = hashes.lookup(parts)
    if (content === undefined) {
      if (sizeBytes > inlineHashBytes) {
        if (!hashes.pending(parts)) log.info('hashing model before announcing it', { path: f.path, sizeBytes })
        hashes.schedule(parts)
        continue
      }
      try {
        content = { sha256: await hashes.hash(parts) }
      } catch (err) {
        log.warn('skipping model that could not be hashed', { path: f.path, err: err as Error })
        continue
      }
    }

    models.push({
      name,
      path: f.path,
      sizeBytes,
      architecture: header.architecture,
      parameterCount,
      quantization: header.quantization,
      contextLength: header.contextLength,
      fingerprint: content.sha256,
      ...(content.source != null ? { source: content.source } : {})
    })
  }
  cache.retain(new Set(files.map(f => f.path)))
  hashes.retain(new Set(files.map(f => f.path)))
  models.sort((a, b) => a.name.localeCompare(b.name) || a.path.localeCompare(b.path))
  return models
}
