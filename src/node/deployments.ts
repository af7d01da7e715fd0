import { EventEmitter } from 'node:events'
import { BadRequestError } from '../errors.js'
import type { RecordTable, Store } from './store.js'

export interface DeploymentConstraints {
  gpuRequired?: boolean
  minVramBytes?: number
  labels?: Record<string, string>
}

/** Desired state: `replicas` copies of `model` loaded in `group`. Last writer wins on (updatedAt, origin). */
export interface Deployment {
  model: string
  replicas: number
  group: string
  strategy?: string
  constraints?: DeploymentConstraints
  updatedAt: number
  /** Node that made this version. */
  origin: string
  deleted: boolean
}

export interface DeploymentEvents {
  change: [Deployment]
}

/** Tombstones are gossiped this long so a deletion reaches every member, then dropped. */
const TOMBSTONE_TTL_MS = 24 * 3600_000
/** Deployments (tombstones included) a node keeps and gossips: the snapshot schema's limit. */
export const MAX_DEPLOYMENTS = 1024
/** One deployment as gossiped, and all of them together (the snapshot limit is 256 KiB). */
const MAX_RECORD_BYTES = 4096
const MAX_GOSSIP_BYTES = 128 * 1024

function newer (a: Deployment, b: Deployment | undefined): boolean {
  return b == null || a.updatedAt > b.updatedAt || (a.updatedAt === b.updatedAt && a.origin > b.origin)
}

/**
 * The durable, replicated set of deployments. Every node keeps all of them (LevelDB) and gossips
 * them in its snapshot, so whichever node leads a group next knows what to do.
 */
export class DeploymentStore extends EventEmitter<DeploymentEvents> {
  private readonly records = new Map<string, Deployment>()
  private readonly table: RecordTable<Deployment>

  private constructor (store: Store, private readonly self: () => string) {
    super()
    this.table = store.table<Deployment>('deployments')
  }

  static async open (store: Store, self: () => string): Promise<DeploymentStore> {
    const d = new DeploymentStore(store, self)
    for (const rec of await d.table.values()) d.records.set(rec.model, rec)
    return d
  }

  /** Live deployments (not deleted). */
  list (): Deployment[] {
    return [...this.records.values()].filter(d => !d.deleted).sort((a, b) => a.model.localeCompare(b.model))
  }

  get (model: string): Deployment | undefined {
    const d = this.records.get(model)
    return d?.deleted === false ? d : undefined
  }

  /**
   * What a snapshot carries: live records, then tombstones until they expire, newest first,
   * within a byte budget so the snapshot always fits the membership message limit.
   */
  gossip (now = Date.now()): Deployment[] {
    const out: Deployment[] = []
    let bytes = 0
    const all = [...this.records.values()]
      .filter(d => !d.deleted || now - d.updatedAt < TOMBSTONE_TTL_MS)
      .sort((a, b) => Number(a.deleted) - Number(b.deleted) || b.updatedAt - a.updatedAt)
    for (const d of all) {
      bytes += JSON.stringify(d).length
      if (bytes > MAX_GOSSIP_BYTES) break
      out.push(d)
    }
    return out
  }

  private stamp (model: string): number {
    return Math.max(Date.now(), (this.records.get(model)?.updatedAt ?? 0) + 1)
  }

  /** Creates or replaces a deployment; resolves once it is on disk (acknowledged = durable). */
  async put (input: { model: string, replicas: number, group: string, strategy?: string, constraints?: DeploymentConstraints }): Promise<Deployment> {
    if (!Number.isInteger(input.replicas) || input.replicas < 1) throw new BadRequestError('replicas must be a positive integer', 'replicas')
    if (!this.records.has(input.model) && this.records.size >= MAX_DEPLOYMENTS) throw new BadRequestError(`at most ${MAX_DEPLOYMENTS} deployments`, 'model', 'too_many_deployments')
    const rec: Deployment = { ...input, updatedAt: this.stamp(input.model), origin: this.self(), deleted: false }
    await this.save(rec)
    return rec
  }

  async remove (model: string): Promise<Deployment | undefined> {
    const cur = this.get(model)
    if (cur == null) return undefined
    const rec: Deployment = { ...cur, updatedAt: this.stamp(model), origin: this.self(), deleted: true }
    await this.save(rec)
    return rec
  }

  /** Merges records a peer gossiped; returns how many were newer than ours. */
  async merge (incoming: Deployment[]): Promise<number> {
    let changed = 0
    for (const rec of incoming) {
      // The set is gossiped whole in every snapshot: it must stay within what peers accept.
      if (!this.records.has(rec.model) && this.records.size >= MAX_DEPLOYMENTS) continue
      if (JSON.stringify(rec).length > MAX_RECORD_BYTES) continue
      if (newer(rec, this.records.get(rec.model))) {
        await this.save(rec)
        changed++
      }
    }
    return changed
  }

  private async save (rec: Deployment): Promise<void> {
    await this.table.put(rec.model, rec, { sync: true })
    this.records.set(rec.model, rec)
    this.emit('change', rec)
  }
}
