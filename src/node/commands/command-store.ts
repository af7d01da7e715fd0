import { randomBytes } from 'node:crypto'
import type { RejectCode, SignedResult } from '../../p2p/index.js'
import { pruneLog, type LogRetention, type PrunableLog } from '../log-pruning.js'

/**
 * The few operations the command store needs from LevelDB, so it can live in a sublevel of the
 * node's store (`db.sublevel('commands', { valueEncoding: 'json' })` satisfies it) without
 * reaching into the store's private database.
 */
export interface CommandStoreBackend {
  get: (key: string) => Promise<unknown>
  put: (key: string, value: any, options?: { sync?: boolean }) => Promise<void>
  batch: (operations: Array<{ type: 'put', key: string, value: any } | { type: 'del', key: string }>, options?: { sync?: boolean }) => Promise<void>
  values: (options: { gt?: string, lt?: string, reverse?: boolean, limit?: number }) => { all: () => Promise<unknown[]> }
  keys: PrunableLog['keys']
  clear: PrunableLog['clear']
}

/** How long command records are kept (see `CommandStore.prune`). */
export interface CommandRetention {
  /** A finished command's record (and result) is kept at least this long after it was accepted. */
  keepResultsMs: number
  /** The command audit log. */
  audit: LogRetention
}

/** What is kept for each accepted command id: the proof that it ran (or is running), and its result. */
export interface RunRecord {
  id: string
  type: string
  issuer: string
  group: string
  term: number
  acceptedAt: number
  /**
   * The command's own expiry. Once it (plus the clock allowance) is past, a replay is refused as
   * expired before its id is looked up, so the record may then be pruned.
   */
  expiresAt?: number
  /** `running` from acceptance until the result is stored; a `running` record found after a restart was interrupted. */
  state: 'running' | 'done'
  result?: SignedResult
}

export type AuditVerdict = 'accepted' | 'rejected' | 'completed'

/** One line of the command audit log. Strings from unauthenticated frames are cut short before they are kept. */
export interface CommandAuditEntry {
  /** Sort key and pagination cursor: pass it as `before` to get older entries. */
  cursor: string
  at: number
  verdict: AuditVerdict
  /** Why a command was rejected (or `replay`: answered with the stored result). */
  reason?: RejectCode
  id?: string
  type?: string
  issuer?: string
  /** The remote end of the stream it came on. */
  peer?: string
  group?: string
  term?: number
  /** For `completed`: how it ended. */
  status?: SignedResult['status']
  error?: { code: string, message: string }
  durationMs?: number
  detail?: string
}

export type AuditInput = Omit<CommandAuditEntry, 'cursor' | 'at'>

const RUN = 'run!'
/** Run records read per step while pruning. */
const PRUNE_PAGE = 500
/** The executor's longest command lifetime: the expiry assumed for a record written without one. */
const LONGEST_LIFETIME_MS = 24 * 3_600_000
const TERM = 'term!'
const AUDIT = 'audit!'
/** The character after `!`: the end of a prefix's key range. */
const END = '"'

/**
 * Durable command state: the idempotency records (a command id runs at most once, even across
 * restarts), the newest leadership term seen per group (fencing), and the audit log. Every
 * write that something relies on after a crash is `sync`.
 */
export class CommandStore {
  /** Newest term per group, once read or raised; misses are not cached (any peer can name a group). */
  private readonly terms = new Map<string, number>()
  private termWrites: Promise<void> = Promise.resolve()
  private seq = 0
  /** Tells apart entries of two runs that land in the same millisecond. */
  private readonly boot = randomBytes(4).toString('hex')

  constructor (private readonly backend: CommandStoreBackend, private readonly clock: () => number = Date.now) {}

  async getRun (id: string): Promise<RunRecord | undefined> {
    return (await this.backend.get(RUN + id) ?? undefined) as RunRecord | undefined
  }

  /** Stores a run record and, in the same synced write, the audit entry that goes with it. */
  async putRun (record: RunRecord, audit?: AuditInput): Promise<void> {
    if (audit == null) {
      await this.backend.put(RUN + record.id, record, { sync: true })
      return
    }
    const entry = this.auditEntry(audit)
    await this.backend.batch([
      { type: 'put', key: RUN + record.id, value: record },
      { type: 'put', key: AUDIT + entry.cursor, value: entry }
    ], { sync: true })
  }

  /** Newest term seen for `group` (0 when none). */
  async termOf (group: string): Promise<number> {
    const cached = this.terms.get(group)
    if (cached != null) return cached
    const stored = await this.backend.get(TERM + group)
    const term = typeof stored === 'number' ? stored : 0
    // A write may have landed while this read was in flight.
    const now = this.terms.get(group)
    if (now != null) return now
    if (typeof stored === 'number') this.terms.set(group, term)
    return term
  }

  /**
   * Raises `group`'s newest term to `term` (persisted), unless a newer one was seen meanwhile:
   * then false, and the command must be refused as stale.
   */
  async admitTerm (group: string, term: number): Promise<boolean> {
    await this.termOf(group)
    // Everything from here to the first await runs alone, so two commands cannot both pass.
    const current = this.terms.get(group) ?? 0
    if (term < current) return false
    if (term === current && this.terms.has(group)) {
      await this.termWrites
      return true
    }
    this.terms.set(group, term)
    // Writes of one group's term are chained, so an older value can never overwrite a newer one.
    const write = this.termWrites.then(async () => {
      await this.backend.put(TERM + group, this.terms.get(group), { sync: true })
    })
    this.termWrites = write.catch(() => {})
    await write
    return true
  }

  async appendAudit (entry: AuditInput): Promise<CommandAuditEntry> {
    const full = this.auditEntry(entry)
    await this.backend.put(AUDIT + full.cursor, full, { sync: true })
    return full
  }

  private auditEntry (entry: AuditInput): CommandAuditEntry {
    const at = this.clock()
    const cursor = `${at.toString().padStart(15, '0')}-${(this.seq++).toString().padStart(9, '0')}-${this.boot}`
    return { cursor, at, ...entry }
  }

  /**
   * Deletes the records nothing can ask for any more: a finished run whose command has expired
   * (a replay of it is refused as expired before its id is looked up) and whose result is older
   * than `keepResultsMs`, and audit entries beyond the audit retention. A `running` record stays:
   * after a restart it is how an interrupted command is answered.
   */
  async prune (retention: CommandRetention): Promise<{ runs: number, audit: number }> {
    const now = this.clock()
    let runs = 0
    let after = RUN
    for (;;) {
      const page = await this.backend.values({ gt: after, lt: RUN.slice(0, -1) + END, limit: PRUNE_PAGE }).all() as RunRecord[]
      if (page.length === 0) break
      const stale = page.filter(r => r.state === 'done' && Math.max(r.expiresAt ?? r.acceptedAt + LONGEST_LIFETIME_MS, r.acceptedAt + retention.keepResultsMs) < now)
      if (stale.length > 0) await this.backend.batch(stale.map(r => ({ type: 'del' as const, key: RUN + r.id })))
      runs += stale.length
      after = RUN + page[page.length - 1].id
    }
    const audit = await pruneLog(this.backend, AUDIT, retention.audit, now)
    return { runs, audit: audit.expired + audit.overflow }
  }

  /** The newest `limit` audit entries older than the cursor `before` (or all), newest first. */
  async listAudit (opts: { limit?: number, before?: string } = {}): Promise<CommandAuditEntry[]> {
    const limit = Math.max(1, Math.min(opts.limit ?? 100, 1000))
    const lt = opts.before != null ? AUDIT + opts.before : AUDIT.slice(0, -1) + END
    return await this.backend.values({ gt: AUDIT, lt, reverse: true, limit }).all() as CommandAuditEntry[]
  }
}
