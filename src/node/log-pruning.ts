/**
 * Pruning of the append-only logs a node keeps in LevelDB (its audit log, the command audit log):
 * entries older than a retention time go, and beyond a count only the newest stay. Without it a
 * node would keep every record forever, and a peer that keeps sending malformed frames (each one
 * an audit entry) could fill the disk.
 */

/** The range operations pruning needs from a LevelDB sublevel (abstract-level's own). */
export interface PrunableLog {
  keys: (options: { gt?: string, lt?: string, reverse?: boolean, limit?: number }) => { all: () => Promise<string[]> }
  clear: (options: { gt?: string, lt?: string }) => Promise<void>
}

export interface LogRetention {
  /** Entries older than this go. */
  maxAgeMs: number
  /** Beyond this many entries, the oldest go. */
  maxEntries: number
}

/**
 * The key prefix of entries written at `at` (ms since the epoch) in a log whose keys start with
 * the 15-digit, zero-padded time: everything that sorts before it is older.
 */
export function timeKey (at: number): string {
  return Math.max(0, Math.floor(at)).toString().padStart(15, '0')
}

/**
 * Deletes the entries of the log under `prefix` (keys `prefix + timeKey(at) + ...`) that are older
 * than `retention.maxAgeMs` at `now`, then all but the newest `retention.maxEntries`. Returns how
 * many keys it found to delete (an estimate only in that the two steps may overlap).
 */
export async function pruneLog (log: PrunableLog, prefix: string, retention: LogRetention, now: number): Promise<{ expired: number, overflow: number }> {
  // The character after the last printable ASCII one: the end of the prefix's key range.
  const end = prefix + '\u007f'
  const cutoff = prefix + timeKey(now - retention.maxAgeMs)
  const expired = (await log.keys({ gt: prefix, lt: cutoff }).all()).length
  if (expired > 0) await log.clear({ gt: prefix, lt: cutoff })
  let overflow = 0
  if (Number.isFinite(retention.maxEntries)) {
    const keep = Math.max(0, Math.floor(retention.maxEntries))
    // The newest `keep` keys, newest first; the last of them is the oldest that stays.
    const newest = await log.keys({ gt: prefix, lt: end, reverse: true, limit: keep + 1 }).all()
    if (newest.length > keep) {
      const oldestKept = keep > 0 ? newest[keep - 1] : end
      overflow = (await log.keys({ gt: prefix, lt: oldestKept }).all()).length
      await log.clear({ gt: prefix, lt: oldestKept })
    }
  }
  return { expired, overflow }
}
