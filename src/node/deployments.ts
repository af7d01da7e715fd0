import { EventEmitter } from 'node:events'
import type { PrivateKey } from '@libp2p/interface'
import { BadRequestError, storageError } from '../errors.js'
import { createLogger } from '../logger.js'
import { AuditLimiter } from './audit-limiter.js'
import { DEPLOYMENT_CLOCK_SKEW_MS, checkDeployment, signDeployment } from './deployment-record.js'
import type { RecordTable, Store } from './store.js'

/** What signing and checking records needs (see deployment-record.ts). */
export interface DeploymentAuthority {
  /** This node's key: it signs every version this node writes. */
  key: PrivateKey
  /** TrustPolicy.isMember: only members' records are merged. */
  isMember: (peer: string) => boolean
  /** Records a refused record (stable `code` from AUTHORITY_CODES). */
  audit: (code: string, peer: string, detail: string) => void
}

export interface DeploymentConstraints {
  gpuRequired?: boolean
  minVramBytes?: number
  labels?: Record<string, string>
  /** Run ONE replica split over several nodes (llama.cpp RPC through the mesh), even if one node could hold it (issue 16). */
  split?: boolean
}

/** Desired state: `replicas` copies of `model` loaded in `group`. Last writer wins on (updatedAt, origin). */
export interface Deployment {
  model: string
  replicas: number
  group: string
  strategy?: string
  constraints?: DeploymentConstraints
  /**
   * The model file this deployment means: the sha256 of its content, resolved when it was
   * deployed. Routing and replica copies follow it when members hold different files of one name.
   */
  fingerprint?: string
  updatedAt: number
  /** Node that made this version: the member whose key signed it. */
  origin: string
  deleted: boolean
  /** `origin`'s signature of the rest (deployment-record.ts); unsigned records are never merged. */
  sig?: string
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

  private readonly log = createLogger('node:deployments')
  private readonly audits = new AuditLimiter()

  private constructor (store: Store, private readonly self: () => string, private readonly auth: DeploymentAuthority) {
    super()
    this.table = store.table<Deployment>('deployments')
  }

  static async open (store: Store, self: () => string, auth: DeploymentAuthority): Promise<DeploymentStore> {
    const d = new DeploymentStore(store, self, auth)
    const limit = Date.now() + DEPLOYMENT_CLOCK_SKEW_MS
    for (const rec of await d.table.values()) {
      // A stamp from the future (merged before records were checked) would win for ever: dropped.
      if (!Number.isSafeInteger(rec.updatedAt) || rec.updatedAt > limit) {
        d.log.warn('dropping a deployment record stamped in the future', { model: rec.model, updatedAt: rec.updatedAt })
        await d.table.del(rec.model).catch(() => {})
        continue
      }
      d.records.set(rec.model, rec)
    }
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
      // Unsigned records (kept from before records were signed) stay local: peers would refuse them.
      .filter(d => d.sig != null && (!d.deleted || now - d.updatedAt < TOMBSTONE_TTL_MS))
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
  async put (input: { model: string, replicas: number, group: string, strategy?: string, constraints?: DeploymentConstraints, fingerprint?: string }): Promise<Deployment> {
    if (!Number.isInteger(input.replicas) || input.replicas < 1) throw new BadRequestError('replicas must be a positive integer', 'replicas')
    if (!this.records.has(input.model) && this.records.size >= MAX_DEPLOYMENTS) throw new BadRequestError(`at most ${MAX_DEPLOYMENTS} deployments`, 'model', 'too_many_deployments')
    const rec = await signDeployment(this.auth.key, { ...input, updatedAt: this.stamp(input.model), origin: this.self(), deleted: false })
    await this.save(rec, `cannot save deployment '${input.model}'`)
    return rec
  }

  async remove (model: string): Promise<Deployment | undefined> {
    const cur = this.get(model)
    if (cur == null) return undefined
    const { sig: _old, ...rest } = cur
    const rec = await signDeployment(this.auth.key, { ...rest, updatedAt: this.stamp(model), origin: this.self(), deleted: true })
    await this.save(rec, `cannot delete deployment '${model}'`)
    return rec
  }

  /**
   * Merges records `from` gossiped; returns how many were newer than ours. A record is taken only
   * when signed by its origin, a member, and not stamped beyond now + skew; a refused one is
   * audited and not kept, so it is never gossiped on.
   */
  async merge (incoming: Deployment[], from = ''): Promise<number> {
    let changed = 0
    for (const rec of incoming) {
      // The set is gossiped whole in every snapshot: it must stay within what peers accept.
      if (!this.records.has(rec.model) && this.records.size >= MAX_DEPLOYMENTS) continue
      if (JSON.stringify(rec).length > MAX_RECORD_BYTES) continue
      const cur = this.records.get(rec.model)
      if (cur?.sig === rec.sig && cur?.updatedAt === rec.updatedAt) continue
      const verdict = await checkDeployment(rec, { isMember: p => p === this.self() || this.auth.isMember(p), now: Date.now() })
      if (!verdict.ok) {
        this.refused(verdict.code, from, rec.model, `deployment '${String(rec.model).slice(0, 128)}' from origin ${String(rec.origin).slice(0, 64)}: ${verdict.reason}`)
        continue
      }
      if (newer(rec, this.records.get(rec.model))) {
        await this.save(rec, 'cannot merge a deployment')
        changed++
      }
    }
    return changed
  }

  /** Audits a refusal, once per (code, peer, model) per 10 s: the same snapshot comes again and again. */
  private refused (code: string, from: string, model: string, detail: string): void {
    if (!this.audits.take(`${code}|${from}|${model}`)) return
    this.log.warn('refused a deployment record', { code, from, detail })
    this.auth.audit(code, from, detail)
  }

  /** On disk first (sync), then in memory: a failed write (507 on a full disk) changes nothing. */
  private async save (rec: Deployment, what: string): Promise<void> {
    try {
      await this.table.put(rec.model, rec, { sync: true })
    } catch (err) {
      throw storageError(err, what)
    }
    this.records.set(rec.model, rec)
    this.emit('change', rec)
  }
}
