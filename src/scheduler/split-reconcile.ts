/**
 * The reconciler's split step (issue 16), kept out of reconciler.ts: the inputs the pure planner
 * (split-placement.ts) takes, read off the members' snapshots, and the checks on split replicas
 * that are running. Pure functions of `PeerView`s.
 */
import type { NodeResources, PeerView } from '../node/index.js'
import { planSplit, type SplitPlan } from './split-placement.js'

type Model = PeerView['models'][number]

function bytes (x: number | undefined): number {
  return typeof x === 'number' && Number.isFinite(x) && x > 0 ? x : 0
}

/** Bytes of the models a node has in memory (loaded or loading). */
export function loadedBytes (m: Pick<PeerView, 'models'>): number {
  return m.models.filter(x => x.state !== 'on_disk').reduce((s, x) => s + bytes(x.sizeBytes), 0)
}

/**
 * A node's resources with its model budget applied (`--max-loaded-mb`, gossiped as
 * `memory.modelBudgetBytes`): free memory is at most the budget less what it has loaded and
 * what its rpc-servers hold for other nodes' splits (`memory.rpcServerBytes`), so placement
 * never plans past what the node would keep. Without a budget, the OS's free memory already
 * counts the rpc-servers.
 */
export function budgetedResources (m: Pick<PeerView, 'resources' | 'models'>): NodeResources | null {
  const r = m.resources
  if (r == null) return null
  const budget = r.memory.modelBudgetBytes
  if (budget == null || !(budget > 0)) return r
  const free = Math.max(0, budget - loadedBytes(m) - bytes(r.memory.rpcServerBytes))
  return { ...r, memory: { ...r.memory, availableBytes: Math.min(bytes(r.memory.availableBytes), free) } }
}

function holds (x: Model, model: string, fingerprint: string): boolean {
  return x.name === model && x.fingerprint === fingerprint
}

/** Plans one split replica of `model` over `members` (those that serve peers and report resources). */
export function planSplitReplica (members: PeerView[], model: string, fingerprint: string, needBytes: number, maxNodes?: number): SplitPlan {
  const candidates = members.filter(m => m.resources != null && m.servesPeers).map(m => ({
    id: m.id,
    freeBytes: bytes(budgetedResources(m)?.memory.availableBytes),
    rttMs: m.rttMs,
    holdsFile: m.models.some(x => holds(x, model, fingerprint))
  }))
  return planSplit(candidates, { needBytes, ...(maxNodes != null ? { maxNodes } : {}) })
}

/** The shards a member's copy of `model` announces (a split replica it heads), or undefined. */
export function shardsOf (m: PeerView, model: string, fingerprint: string | undefined): Array<{ nodeId: string, layers: [number, number] | null }> | undefined {
  return m.models.find(x => x.name === model && (fingerprint == null || x.fingerprint === fingerprint) && x.shards != null)?.shards
}

/**
 * Split replicas that lost a node: the head announces shards on a node that is no longer a live
 * member. Their heads unload them themselves on `peer:dead`; the leader does not count them and
 * tells the head again in case it missed the death.
 */
export function brokenSplitHeads (counted: PeerView[], model: string, fingerprint: string | undefined): string[] {
  const live = new Set(counted.map(m => m.id))
  return counted.filter(m => {
    const shards = shardsOf(m, model, fingerprint)
    return shards != null && shards.some(s => !live.has(s.nodeId))
  }).map(m => m.id)
}

/**
 * `m` as placement should see it when its split replica of `model` is broken: that copy is
 * being dropped, so it is neither a loaded copy ("already has the model loaded; no new memory")
 * nor memory in use. Seen as loaded, a new leader (the dead worker had led) once placed the whole
 * model on the broken head, past its budget, instead of a new split.
 */
export function withoutBrokenSplit (m: PeerView, model: string, fingerprint: string): PeerView {
  if (!m.models.some(x => holds(x, model, fingerprint) && x.shards != null)) return m
  return { ...m, models: m.models.map(x => holds(x, model, fingerprint) && x.shards != null ? { ...x, state: 'on_disk' as const, pinned: false, shards: undefined } : x) }
}
