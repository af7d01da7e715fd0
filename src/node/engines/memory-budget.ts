/**
 * The memory rule both local engines follow before loading a model: when memory is short, the
 * least recently used idle model is unloaded first. This module only decides which models go;
 * each engine unloads them through its own unload path, so peers hear of it at once.
 *
 * Two limits apply together. The budget caps what loaded models may hold in all (by default
 * total memory less the reserve): it is the operator's say in how much of the node models get.
 * The reserve is memory that must stay available once the model is loaded: it catches a node
 * whose memory other processes already took, which a budget counting only our models cannot see.
 */
import { statSync } from 'node:fs'
import { freemem, totalmem } from 'node:os'

const GiB = 1024 ** 3

/** A loaded model as the budget sees it. */
export interface LoadedModelUsage {
  /** The engine's key for it, handed back as is in the answer. */
  name: string
  /** Memory it holds, in bytes. */
  sizeBytes: number
  /** When a request last took or gave it back (ms since the epoch). */
  lastUsed: number
  /** Never unloaded to make room: it serves or queues requests, is still loading, or is pinned. */
  busy: boolean
}

/** The limits a load is checked against, all in bytes. */
export interface MemoryLimits {
  /** Most that loaded models, the new one included, may hold in all. */
  budgetBytes: number
  /** Memory the system could hand out now (on Linux, MemAvailable). */
  availableBytes: number
  /** Memory that must stay available once the new model is loaded. */
  reserveBytes: number
}

/** Engine options that shape the limits; every engine with local models takes them. */
export interface MemoryBudgetOptions {
  /**
   * Memory budget for loaded models, in bytes. Absent or 0: total memory less the reserve.
   */
  maxLoadedBytes?: number
  /** Memory kept available for the system and other processes. Default: 10 % of total memory, at most 1 GiB. */
  memoryReserveBytes?: number
  /** Reports available memory in bytes, asked before each load. Default `os.freemem` (MemAvailable on Linux). */
  availableMemoryBytes?: () => number
}

/** 10 % of total memory, at most 1 GiB: a small machine keeps some room, a large one is not left idle. */
export function defaultReserveBytes (totalBytes: number = totalmem()): number {
  return Math.min(GiB, Math.floor(totalBytes * 0.1))
}

/**
 * Throws `RangeError` for a limit that is negative or not a number, so a bad setting fails at
 * start rather than at the first load.
 */
export function checkMemoryBudgetOptions (options: MemoryBudgetOptions): void {
  for (const key of ['maxLoadedBytes', 'memoryReserveBytes'] as const) {
    const value = options[key]
    if (value !== undefined && !(value >= 0)) throw new RangeError(`${key} must be a non-negative number of bytes`)
  }
}

/**
 * The limits right now: the options where given, else derived from `os.totalmem()`, and the
 * available memory asked of the probe (a probe that fails or makes no sense leaves only the budget).
 */
export function defaultMemoryLimits (options: MemoryBudgetOptions = {}): MemoryLimits {
  const total = totalmem()
  const reserveBytes = options.memoryReserveBytes ?? defaultReserveBytes(total)
  const budgetBytes = options.maxLoadedBytes !== undefined && options.maxLoadedBytes > 0
    ? options.maxLoadedBytes
    : Math.max(0, total - reserveBytes)
  let availableBytes: number
  try {
    availableBytes = (options.availableMemoryBytes ?? freemem)()
  } catch {
    availableBytes = NaN
  }
  // Refusing every load because a probe broke would be worse than loading unchecked.
  if (!Number.isFinite(availableBytes)) availableBytes = Infinity
  return { budgetBytes, availableBytes, reserveBytes }
}

/**
 * The models to unload, in that order, before loading one of `needBytes`: idle ones, least
 * recently used first, until the loaded total plus the new one fits the budget and the memory
 * left available after the load is at least the reserve. Unloading a model is counted as
 * making its size available again.
 *
 * When even unloading every idle model is not enough, all of them are returned: the load is
 * tried anyway and the engine's own errors decide, since the sizes are estimates.
 *
 * @example
 * ```ts
 * victimsFor([
 *   { name: 'a', sizeBytes: 4e9, lastUsed: 1, busy: false },
 *   { name: 'b', sizeBytes: 4e9, lastUsed: 2, busy: false }
 * ], 4e9, { budgetBytes: 10e9, availableBytes: 20e9, reserveBytes: 1e9 }) // ['a']
 * ```
 */
export function victimsFor (loaded: readonly LoadedModelUsage[], needBytes: number, limits: MemoryLimits): string[] {
  const used = loaded.reduce((sum, m) => sum + m.sizeBytes, 0)
  let freed = 0
  const fits = (): boolean =>
    used - freed + needBytes <= limits.budgetBytes &&
    limits.availableBytes + freed - needBytes >= limits.reserveBytes
  // Stable sort: models used at the same instant keep the caller's order.
  const idle = loaded.filter(m => !m.busy).sort((a, b) => a.lastUsed - b.lastUsed)
  const victims: string[] = []
  for (const m of idle) {
    if (fits()) break
    victims.push(m.name)
    freed += m.sizeBytes
  }
  return victims
}

/** A model file's size in bytes; 0 when unknown, which leaves the memory checks to the engine's backend. */
export function modelFileBytes (entry: { path: string, sizeBytes?: number }): number {
  if (entry.sizeBytes !== undefined) return entry.sizeBytes
  try {
    return statSync(entry.path).size
  } catch {
    return 0
  }
}
