import fs from 'node:fs/promises'
import path from 'node:path'
import { Level } from 'level'
import { ShepherdError, storageError } from '../errors.js'
import type { CommandStoreBackend } from './commands/index.js'
import { pruneLog, type LogRetention, type PrunableLog } from './log-pruning.js'

/** The data dir exists but cannot be used: unreadable, not a directory, or locked by another node. */
export class StoreError extends ShepherdError {
  constructor (message: string, code = 'store_unavailable', cause?: unknown) {
    super(message, { code, status: 500, cause })
  }
}

export interface KnownPeer {
  id: string
  name: string
  addresses: string[]
  lastSeen: number
}

/** Records of one kind, keyed by string; `sync` writes are on disk before they resolve. */
export interface RecordTable<V> {
  get: (key: string) => Promise<V | undefined>
  put: (key: string, value: V, opts?: { sync?: boolean }) => Promise<void>
  del: (key: string) => Promise<void>
  values: (opts?: { reverse?: boolean, limit?: number, lt?: string }) => Promise<V[]>
  entries: () => Promise<Array<[string, V]>>
}

/** One line of the audit log: who did what, and the verdict. */
export interface AuditEntry {
  at: number
  kind: string
  peer?: string
  detail: string
  verdict: 'accepted' | 'rejected' | 'dropped'
}

type Json = Record<string, unknown> | unknown[] | string | number | boolean | null

/**
 * Every write of the store goes through here: a failure becomes a typed error (issue 11 item 5):
 * `insufficient_storage` (507) when the disk is full (LevelDB says `IO error: ...: No space left
 * on device`), `store_unavailable` (503) otherwise. Callers change memory only after it resolves.
 * Measured on a full tmpfs: LevelDB refuses the write, and takes writes again once space is freed.
 */
async function written (write: Promise<unknown>, what: string): Promise<void> {
  try {
    await write
  } catch (err) {
    throw storageError(err, what)
  }
}

/**
 * The one place for durable node state: a LevelDB database in the data dir, with a sublevel
 * per kind of record (`meta` for the identity key, `peers` for peers met before, more to come).
 */
export class Store {
  private constructor (private readonly db: Level<string, Json>, readonly dir: string) {}

  /** Opens (creating if needed) the store in `dataDir`, with one clear error per failure case. */
  static async open (dataDir: string): Promise<Store> {
    try {
      // The store holds the node's private key: a new data dir is the owner's alone (other local
      // users could otherwise read the key and run as this node, a member of its mesh).
      await fs.mkdir(dataDir, { recursive: true, mode: 0o700 })
      await fs.access(dataDir, fs.constants.R_OK | fs.constants.W_OK)
    } catch (err: any) {
      throw new StoreError(`data dir ${dataDir} is not usable: ${err.code ?? err.message}`, 'data_dir_unusable', err)
    }
    const dir = path.join(dataDir, 'store')
    const db = new Level<string, Json>(dir, { valueEncoding: 'json' })
    try {
      await db.open()
    } catch (err: any) {
      if (err.cause?.code === 'LEVEL_LOCKED') {
        throw new StoreError(`data dir ${dataDir} is in use by another shepherd-mesh process (use --data-dir)`, 'data_dir_locked', err)
      }
      throw new StoreError(`cannot open the store in ${dir}: ${err.cause?.message ?? err.message}; run 'shepherd-mesh doctor --data-dir ${dataDir} --repair'`, 'store_corrupt', err)
    }
    return new Store(db, dir)
  }

  private get meta () { return this.db.sublevel<string, Json>('meta', { valueEncoding: 'json' }) }
  private get peers () { return this.db.sublevel<string, KnownPeer>('peers', { valueEncoding: 'json' }) }

  async getMeta<T extends Json> (key: string): Promise<T | undefined> {
    return await this.meta.get(key) as T | undefined
  }

  async putMeta (key: string, value: Json): Promise<void> {
    await written(this.meta.put(key, value, { sync: true } as any), `cannot save '${key}'`)
  }

  async knownPeers (): Promise<KnownPeer[]> {
    return await this.peers.values().all()
  }

  async rememberPeer (peer: KnownPeer): Promise<void> {
    await written(this.peers.put(peer.id, peer), 'cannot remember a peer')
  }

  /** A named table of JSON records, for parts that keep their own (deployments, commands). */
  table<V> (name: string): RecordTable<V> {
    const sub = this.db.sublevel<string, V>(name, { valueEncoding: 'json' })
    return {
      get: async key => await sub.get(key),
      put: async (key, value, opts) => { await written(sub.put(key, value, { sync: opts?.sync === true } as any), `cannot write to '${name}'`) },
      del: async key => { await written(sub.del(key), `cannot delete from '${name}'`) },
      values: async (opts = {}) => await sub.values({ reverse: opts.reverse === true, limit: opts.limit ?? -1, ...(opts.lt != null ? { lt: opts.lt } : {}) }).all(),
      entries: async () => await sub.iterator().all()
    }
  }

  /** The backend of the command store (runs, terms, command audit): a LevelDB sublevel. */
  commandBackend (): CommandStoreBackend {
    const sub = this.db.sublevel<string, any>('commands', { valueEncoding: 'json' }) as unknown as CommandStoreBackend
    // Writes fail typed (507 on a full disk, 503 otherwise) like every other write of the store.
    return {
      get: sub.get.bind(sub),
      values: sub.values.bind(sub),
      keys: sub.keys.bind(sub),
      clear: sub.clear.bind(sub),
      put: async (key, value, options) => { await written(sub.put(key, value, options), 'cannot write a command record') },
      batch: async (ops, options) => { await written(sub.batch(ops, options), 'cannot write command records') }
    }
  }

  private auditSeq = 0
  private get audit () { return this.db.sublevel<string, AuditEntry>('audit', { valueEncoding: 'json' }) }

  /** Appends an entry to the durable audit log (keys sort by time, then arrival). */
  async appendAudit (entry: Omit<AuditEntry, 'at'>): Promise<void> {
    const at = Date.now()
    const key = `${at.toString().padStart(15, '0')}-${(this.auditSeq++).toString().padStart(9, '0')}`
    await written(this.audit.put(key, { at, ...entry }), 'cannot append to the audit log')
  }

  /** Deletes audit entries older than `retention.maxAgeMs`, then all but the newest `retention.maxEntries`. */
  async pruneAudit (retention: LogRetention, now = Date.now()): Promise<number> {
    const pruned = await pruneLog(this.audit as unknown as PrunableLog, '', retention, now)
    return pruned.expired + pruned.overflow
  }

  /** The newest `limit` audit entries, newest first. */
  async auditLog (limit = 100): Promise<AuditEntry[]> {
    return await this.audit.values({ reverse: true, limit }).all()
  }

  async close (): Promise<void> {
    await this.db.close()
  }
}
