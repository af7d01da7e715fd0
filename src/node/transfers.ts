/**
 * Progress of this node's model work (issue 15 item 4): a file pulled from a peer, then loaded.
 * The rows ride in the node's snapshot (`transfers`), so every member can show a deployment's
 * transfer %, bytes and loading state, and the API relays changes as SSE `deployment:progress`.
 * In memory only: a restart starts a pull again (resumed from its `.part` file) and says so here.
 */
import { EventEmitter } from 'node:events'

export type ReplicaPhase = 'transferring' | 'loading' | 'loaded' | 'failed'

/** One model's progress on this node, as gossiped (snapshot field `transfers`). */
export interface TransferRow {
  model: string
  /** The file meant (sha256), when the command named one. */
  fingerprint: string | null
  phase: ReplicaPhase
  /** Bytes of the file on disk (a resumed pull counts what it had). */
  receivedBytes: number | null
  totalBytes: number | null
  /** Recent rate while transferring. */
  bytesPerSec: number | null
  /** `code: message` when failed. */
  error: string | null
  /** Last change, ms since the epoch. */
  at: number
}

export interface TransferTrackerOptions {
  /** Least time between two progress changes of one transfer that are announced. */
  progressEveryMs?: number
  /** How long a finished row (loaded, failed) stays visible. */
  keepFinishedMs?: number
  /** Rows kept (the snapshot schema's limit). */
  maxRows?: number
  clock?: () => number
}

export const TRANSFER_DEFAULTS = { progressEveryMs: 500, keepFinishedMs: 60_000, maxRows: 64 } as const

/**
 * The rows of this node's model work. `change` fires for each announced change (progress at most
 * every `progressEveryMs` per model; phase changes always).
 */
export class TransferTracker extends EventEmitter<{ change: [TransferRow] }> {
  private readonly rows = new Map<string, TransferRow>()
  private readonly lastAnnounced = new Map<string, number>()
  private readonly rate = new Map<string, { at: number, bytes: number }>()
  private readonly o: Required<TransferTrackerOptions>

  constructor (opts: TransferTrackerOptions = {}) {
    super()
    this.o = { ...TRANSFER_DEFAULTS, clock: Date.now, ...opts }
  }

  private set (model: string, patch: Partial<TransferRow>, announce = true): void {
    const now = this.o.clock()
    const prev = this.rows.get(model)
    const row: TransferRow = { model, fingerprint: null, phase: 'transferring', receivedBytes: null, totalBytes: null, bytesPerSec: null, error: null, ...prev, ...patch, at: now }
    this.rows.delete(model)
    this.rows.set(model, row)
    while (this.rows.size > this.o.maxRows) this.rows.delete(this.rows.keys().next().value as string)
    if (!announce) return
    this.lastAnnounced.set(model, now)
    this.emit('change', { ...row })
  }

  /** A pull of `model` starts. */
  begin (model: string, fingerprint: string | null): void {
    this.rate.delete(model)
    this.set(model, { fingerprint, phase: 'transferring', receivedBytes: null, totalBytes: null, bytesPerSec: null, error: null })
  }

  /** Bytes on disk so far; announced at most every `progressEveryMs`, and always at the end. */
  progress (model: string, receivedBytes: number, totalBytes: number): void {
    const now = this.o.clock()
    const r = this.rate.get(model)
    let bytesPerSec = this.rows.get(model)?.bytesPerSec ?? null
    if (r == null) this.rate.set(model, { at: now, bytes: receivedBytes })
    else if (now - r.at >= 1000) {
      bytesPerSec = Math.round((receivedBytes - r.bytes) * 1000 / (now - r.at))
      this.rate.set(model, { at: now, bytes: receivedBytes })
    }
    const due = now - (this.lastAnnounced.get(model) ?? 0) >= this.o.progressEveryMs || receivedBytes >= totalBytes
    this.set(model, { phase: 'transferring', receivedBytes, totalBytes, bytesPerSec }, due)
  }

  /** The engine loads it (after a pull, or from a file the node had). */
  loading (model: string, fingerprint: string | null, totalBytes: number | null): void {
    const prev = this.rows.get(model)
    this.set(model, { phase: 'loading', bytesPerSec: null, fingerprint: fingerprint ?? prev?.fingerprint ?? null, ...(prev?.phase === 'transferring' ? {} : { receivedBytes: totalBytes, totalBytes }) })
  }

  loaded (model: string): void {
    this.set(model, { phase: 'loaded', bytesPerSec: null, error: null })
  }

  failed (model: string, err: unknown): void {
    const e = err as { code?: unknown, message?: unknown }
    const text = `${typeof e?.code === 'string' ? `${e.code}: ` : ''}${String(e?.message ?? err)}`.slice(0, 300)
    this.set(model, { phase: 'failed', bytesPerSec: null, error: text })
  }

  /** Current rows, finished ones for `keepFinishedMs`; oldest first. */
  list (): TransferRow[] {
    const now = this.o.clock()
    for (const [model, row] of this.rows) {
      if ((row.phase === 'loaded' || row.phase === 'failed') && now - row.at > this.o.keepFinishedMs) this.rows.delete(model)
    }
    return [...this.rows.values()].map(r => ({ ...r }))
  }
}

/** Percent done (one decimal), or null when the size is unknown. */
export function percentOf (row: Pick<TransferRow, 'phase' | 'receivedBytes' | 'totalBytes'>): number | null {
  if (row.phase === 'loading' || row.phase === 'loaded') return 100
  if (row.receivedBytes == null || row.totalBytes == null || row.totalBytes <= 0) return null
  return Math.min(100, Math.floor(row.receivedBytes * 1000 / row.totalBytes) / 10)
}

/** The snapshot schema of `transfers` (see snapshot.ts). */
export const TRANSFER_ROWS_SCHEMA = {
  type: 'array',
  maxItems: TRANSFER_DEFAULTS.maxRows,
  items: {
    type: 'object',
    required: ['model', 'phase', 'at'],
    properties: {
      model: { type: 'string', minLength: 1, maxLength: 256 },
      fingerprint: { type: ['string', 'null'], maxLength: 64 },
      phase: { enum: ['transferring', 'loading', 'loaded', 'failed'] },
      receivedBytes: { type: ['number', 'null'], minimum: 0 },
      totalBytes: { type: ['number', 'null'], minimum: 0 },
      bytesPerSec: { type: ['number', 'null'] },
      error: { type: ['string', 'null'], maxLength: 512 },
      at: { type: 'number' }
    }
  }
} as const
