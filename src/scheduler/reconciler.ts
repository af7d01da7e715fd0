import { createLogger } from '../logger.js'
import type { Deployment, PeerView } from '../node/index.js'
import { placeReplicas, type PlacementCandidate, type PlacementStrategy } from './placement.js'
import { brokenSplitHeads, budgetedResources, planSplitReplica, shardsOf, withoutBrokenSplit } from './split-reconcile.js'
import type { MeshModel } from './model-registry.js'
import type { ReconcilerView } from './router-ports.js'

/** Sends one signed command as the leader of `group` at `term`; resolves with the executor's verdict. */
export type CommandSender = (target: string, type: 'load_model' | 'unload_model' | 'serve_rpc', payload: Record<string, unknown>, ctx: { group: string, term: number }) => Promise<{ status: string, error?: { code: string, message: string } }>

export interface ReconcilerOptions {
  intervalMs: number
  /** A placement not visible in snapshots after this long is retried elsewhere. */
  pendingTtlMs: number
  send: CommandSender
}

/** What a deployment looks like now, for `GET /api/deployments`. */
export interface DeploymentStatus {
  desired: number
  /** `shards`: a split replica (issue 16), each node's layers, the head (`nodeId`) first. */
  actual: Array<{ nodeId: string, name: string, state: string, shards?: Array<{ nodeId: string, layers: [number, number] | null }> }>
  pending: string[]
  unplaceable: number
  lastError: string | null
  /** Which node reconciles it: the group's leader. */
  leader: string | null
}

interface Pending { node: string, until: number }

/**
 * Retiring a replica unpins it with a zero keep-alive: the node unloads it as soon as its running
 * requests end, so no request is cut (an `unload_model` would abort them).
 */
const RETIRE = (model: string): Record<string, unknown> => ({ model, keepAliveMs: 0 })

/**
 * The leader's control loop: for every deployment of a group this node leads, compare desired
 * replicas with the replicas the members' snapshots show, place the missing ones (placement
 * strategy) with `load_model` commands and remove extras with `unload_model`.
 */
export class Reconciler {
  private timer?: NodeJS.Timeout
  private soon?: NodeJS.Timeout
  private readonly pending = new Map<string, Pending[]>()
  private readonly unplaceable = new Map<string, number>()
  private readonly lastError = new Map<string, string>()
  /** Deleted deployments whose replicas were told to unload (per model, the version handled). */
  private readonly retired = new Map<string, number>()
  private running = false
  private rrCursor = 0
  private readonly log = createLogger('scheduler:reconciler')
  readonly stats = { placed: 0, unloaded: 0, failed: 0, ticks: 0 }

  /**
   * `view` is what it reads of the mesh and its groups; `router` gives the models the mesh has
   * (the router's registry, so both agree on which file a name means).
   */
  constructor (private readonly view: ReconcilerView, private readonly router: { models: () => Map<string, MeshModel> }, private readonly opts: ReconcilerOptions) {}

  start (): void {
    this.timer = setInterval(() => { void this.tick() }, this.opts.intervalMs)
    this.timer.unref()
    const poke = (): void => { this.kick() }
    this.view.onChange(poke)
  }

  stop (): void {
    clearInterval(this.timer)
    clearTimeout(this.soon)
  }

  /** Reconcile soon (coalesced): after a death, a new leader, a deployment change. */
  kick (delayMs = 50): void {
    if (this.soon != null) return
    this.soon = setTimeout(() => { this.soon = undefined; void this.tick() }, delayMs)
    this.soon.unref()
  }

  /**
   * Members of a group. Replicas are counted on `alive` and `suspect` members (a late heartbeat
   * on a loaded machine must not trigger a second copy); new ones go to `alive` members only.
   */
  private members (group: string, statuses: ReadonlyArray<PeerView['status']> = ['alive']): PeerView[] {
    const self = this.view.self()
    const peers = this.view.peers().filter(p => statuses.includes(p.status) && p.groups.includes(group))
    return this.view.joined(group) ? [self, ...peers] : peers
  }

  /** A replica is a pinned copy (loaded for a deployment); on-demand copies come and go. */
  private replicasOn (members: PeerView[], model: string, fingerprint: string | undefined): Array<{ member: PeerView, state: string }> {
    return members.flatMap(m => m.models
      .filter(x => x.name === model && (fingerprint == null || x.fingerprint === fingerprint) && x.pinned === true && x.state !== 'on_disk')
      .map(x => ({ member: m, state: x.state })))
  }

  status (d: Deployment): DeploymentStatus {
    const fp = this.router.models().get(d.model)?.fingerprint ?? undefined
    const actual = this.replicasOn(this.members(d.group, ['alive', 'suspect']), d.model, fp).map(r => {
      const shards = shardsOf(r.member, d.model, fp)
      return { nodeId: r.member.id, name: r.member.name, state: r.state, ...(shards != null ? { shards } : {}) }
    })
    return {
      desired: d.replicas,
      actual,
      pending: (this.pending.get(d.model) ?? []).map(p => p.node),
      unplaceable: this.unplaceable.get(d.model) ?? 0,
      lastError: this.lastError.get(d.model) ?? null,
      leader: this.view.leaderOf(d.group).leader
    }
  }

  async tick (): Promise<void> {
    if (this.running) return
    this.running = true
    this.stats.ticks++
    try {
      const now = Date.now()
      for (const d of this.view.deployments()) {
        if (!this.view.isLeader(d.group)) continue
        const { term } = this.view.leaderOf(d.group)
        if (d.deleted) await this.retire(d, term)
        else await this.reconcile(d, term, now)
      }
    } catch (err) {
      this.log.warn('reconcile failed', { err })
    } finally {
      this.running = false
    }
  }

  private async reconcile (d: Deployment, term: number, now: number): Promise<void> {
    const members = this.members(d.group)
    const counted = this.members(d.group, ['alive', 'suspect'])
    const alive = new Set(members.map(m => m.id))
    const entry = this.router.models().get(d.model)
    if (entry == null) {
      this.lastError.set(d.model, `no node of the mesh has the model file '${d.model}'`)
      return
    }
    const fingerprint = entry.fingerprint
    if (fingerprint == null) {
      // Members hold different files under this name and nothing says which one: copy none.
      this.lastError.set(d.model, `members hold different files named '${d.model}'; redeploy it with a fingerprint`)
      return
    }
    // A split replica that lost a node is no replica: its head is told to drop it (issue 16).
    const broken = brokenSplitHeads(counted, d.model, fingerprint)
    for (const head of broken) void this.command(d, head, 'unload_model', { model: d.model }, term)
    const holding = this.replicasOn(counted, d.model, fingerprint).map(r => r.member.id).filter(id => !broken.includes(id))
    const pending = (this.pending.get(d.model) ?? []).filter(p => p.until > now && alive.has(p.node) && !holding.includes(p.node))
    this.pending.set(d.model, pending)
    const current = [...new Set([...holding, ...pending.map(p => p.node)])]

    if (current.length < d.replicas) {
      // A broken split's head is being told to drop it: placement sees that copy as gone.
      const placeable = members.map(m => broken.includes(m.id) ? withoutBrokenSplit(m, d.model, fingerprint) : m)
      const candidates: PlacementCandidate[] = placeable.filter(m => m.resources != null && m.servesPeers).map(m => ({
        id: m.id,
        name: m.name,
        resources: budgetedResources(m)!,
        models: m.models,
        load: m.load != null ? m.load.active + m.load.queued : 0,
        labels: m.labels
      }))
      const decision = placeReplicas(candidates, {
        model: d.model,
        fingerprint,
        sizeBytes: entry.sizeBytes,
        replicas: d.replicas,
        strategy: (d.strategy ?? 'resource-fit') as PlacementStrategy,
        constraints: d.constraints,
        current,
        rrCursor: this.rrCursor
      })
      this.rrCursor = decision.nextRrCursor
      this.unplaceable.set(d.model, decision.unplaceable)
      if (decision.unplaceable > 0) this.lastError.set(d.model, `${decision.unplaceable} replica(s) fit on no node: ${decision.rejected.map(r => `${r.nodeId.slice(-6)} ${r.code}`).join(', ')}`)
      const sources = entry.hosts.filter(h => alive.has(h.peerId) || h.local).map(h => h.peerId)
      // Fits no single node (or a split was asked for): ONE replica over several nodes (issue 16).
      if ((d.constraints?.split === true || (decision.place.length === 0 && decision.unplaceable > 0)) && current.length === 0) {
        this.placeSplit(d, term, now, fingerprint, decision.needBytes, placeable, sources, pending)
        return
      }
      for (const p of decision.place) {
        pending.push({ node: p.nodeId, until: now + this.opts.pendingTtlMs })
        this.stats.placed++
        this.log.info('placing replica', { model: d.model, node: p.nodeId, reason: p.reason })
        void this.command(d, p.nodeId, 'load_model', { model: d.model, fingerprint, sources: sources.filter(s => s !== p.nodeId).slice(0, 8), keepAliveMs: -1 }, term)
      }
    } else if (holding.length > d.replicas) {
      const extras = counted.filter(m => holding.includes(m.id))
        .sort((a, b) => (b.load?.active ?? 0) - (a.load?.active ?? 0) || b.id.localeCompare(a.id))
        .slice(0, holding.length - d.replicas)
      for (const m of extras) {
        this.stats.unloaded++
        void this.command(d, m.id, 'load_model', RETIRE(d.model), term)
      }
    }
  }

  /**
   * Places one split replica: each worker is told to serve its part for the head (`serve_rpc`,
   * awaited: the head's llama-server connects to them at once), then the head loads the model
   * with `--rpc` through the tunnel.
   */
  private placeSplit (d: Deployment, term: number, now: number, fingerprint: string, needBytes: number, members: PeerView[], sources: string[], pending: Pending[]): void {
    const plan = planSplitReplica(members, d.model, fingerprint, needBytes)
    if (!plan.ok) {
      this.unplaceable.set(d.model, 1)
      this.lastError.set(d.model, `fits on no node and cannot be split: ${plan.reason}`)
      return
    }
    this.unplaceable.set(d.model, 0)
    pending.push({ node: plan.head, until: now + this.opts.pendingTtlMs })
    this.stats.placed++
    this.log.info('placing split replica', { model: d.model, head: plan.head, workers: plan.workers, reason: plan.reason })
    void (async () => {
      const served = await Promise.all(plan.workers.map(async w => await this.command(d, w, 'serve_rpc', { model: d.model, head: plan.head }, term)))
      if (served.some(ok => !ok)) {
        const list = this.pending.get(d.model)
        if (list != null) this.pending.set(d.model, list.filter(p => p.node !== plan.head))
        return
      }
      await this.command(d, plan.head, 'load_model', {
        model: d.model,
        fingerprint,
        sources: sources.filter(s => s !== plan.head).slice(0, 8),
        keepAliveMs: -1,
        split: { workers: plan.workers, fractions: plan.shares.map(s => Math.round(s.fraction * 1e6) / 1e6) }
      }, term)
    })()
  }

  private async retire (d: Deployment, term: number): Promise<void> {
    if (this.retired.get(d.model) === d.updatedAt) return
    this.retired.set(d.model, d.updatedAt)
    this.pending.delete(d.model)
    for (const { member } of this.replicasOn(this.members(d.group, ['alive', 'suspect']), d.model, undefined)) {
      void this.command(d, member.id, 'load_model', RETIRE(d.model), term)
    }
  }

  private async command (d: Deployment, target: string, type: 'load_model' | 'unload_model' | 'serve_rpc', payload: Record<string, unknown>, term: number): Promise<boolean> {
    try {
      const res = await this.opts.send(target, type, payload, { group: d.group, term })
      if (res.status !== 'ok') throw new Error(`${res.error?.code ?? res.status}: ${res.error?.message ?? ''}`)
      this.lastError.delete(d.model)
      return true
    } catch (err: any) {
      this.stats.failed++
      this.lastError.set(d.model, `${type} on ${target.slice(-8)} failed: ${err?.message ?? String(err)}`)
      this.log.warn('command failed', { model: d.model, target, type, err })
      const list = this.pending.get(d.model)
      if (list != null) this.pending.set(d.model, list.filter(p => p.node !== target))
      this.kick(500)
      return false
    }
  }
}
