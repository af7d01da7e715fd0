/**
 * Replica placement: which nodes of a swarm group start the missing replicas of a deployment
 * (model M, N replicas). The group leader calls {@link placeReplicas} with what every member
 * last gossiped; the function is pure and synchronous, so the leader can re-run it on every
 * membership change and any decision can be replayed from its inputs (and `seed`).
 *
 * It never unloads anything to make room: a replica that fits nowhere is counted in
 * `unplaceable` and the cluster is left as it is.
 */
import { BadRequestError } from '../errors.js'
import type { ModelSummary, NodeResources } from '../node/index.js'
import { evaluateCandidate, fitContext, layoutOf, memoryNeed, type FitContext, type NodeFit } from './placement-fit.js'
import { newSeed } from './placement-random.js'
import { PLACEMENT_STRATEGIES } from './placement-strategies.js'

export type PlacementStrategy = 'resource-fit' | 'least-loaded' | 'locality' | 'round-robin' | 'weighted' | 'random' | 'label-cost'

/** A group member as the leader sees it. */
export interface PlacementCandidate {
  id: string
  name: string
  resources: NodeResources
  /** Model files the node holds, and whether an engine has them in memory. */
  models: Array<Pick<ModelSummary, 'name' | 'fingerprint' | 'state' | 'sizeBytes'>>
  /** Requests running + queued. */
  load: number
  labels: Record<string, string>
  /** What running this node costs, in any currency as long as it is the same for all. */
  costPerHour?: number
}

/**
 * Bytes already promised to other deployments on one node. A plain number is shorthand for
 * `{ anywhereBytes }`; the exact form is what {@link addReservations} produces from decisions.
 */
export type NodeReservation = number | {
  ramBytes?: number
  /** Bytes by GPU index (`GpuInfo.index`). */
  gpuBytes?: Record<number, number>
  /**
   * Bytes whose place is not known. Since they may land anywhere they are held against RAM and
   * against the GPUs (most free first) alike: safe, at the price of idle capacity.
   */
  anywhereBytes?: number
}

export interface PlacementConstraints {
  /** Only GPU placements (single GPU or split); no CPU fallback. */
  gpuRequired?: boolean
  /**
   * Only GPUs with at least this much total memory are used; smaller ones are ignored, also for
   * splits. Implies `gpuRequired`.
   */
  minVramBytes?: number
  /** Every pair must be among the node's labels. */
  labels?: Record<string, string>
}

export interface PlacementRequest {
  model: string
  /** When given, a node holds the model only if its file has this fingerprint; else by name. */
  fingerprint?: string
  /** Model file size. */
  sizeBytes: number
  /** Replicas wanted in all, including `current`. */
  replicas: number
  /** Default `resource-fit`. */
  strategy?: PlacementStrategy
  constraints?: PlacementConstraints
  /**
   * Nodes already running a replica: kept, never given a second one, and counted against
   * `replicas` whether or not they are among the candidates.
   */
  current: string[]
  /** Bytes promised to other deployments, by node id; subtracted from free RAM / VRAM. */
  reserved?: Record<string, NodeReservation>
  /** Memory need = sizeBytes × memoryOverhead + kvCacheBytes. Default 1.2. */
  memoryOverhead?: number
  /** Context (KV cache) allowance added to the need. Default 0. */
  kvCacheBytes?: number
  /** `label-cost`: labels a node should have; more matches rank first. */
  preferLabels?: Record<string, string>
  /** `random` and `weighted`: the PRNG seed. Without one a fresh seed is drawn and reported. */
  seed?: number
  /** `round-robin`: position in the id-sorted candidate ring to start from. Default 0. */
  rrCursor?: number
}

/** How a replica is held in memory on its node. */
export type PlacementKind = 'gpu' | 'gpu-split' | 'cpu' | 'loaded'

export interface Placement {
  nodeId: string
  /** The GPU it runs on; null when it runs from RAM, is split (see `gpus`) or is already loaded. */
  gpuIndex: number | null
  kind: PlacementKind
  /** Bytes it takes on each GPU: one entry for `gpu`, several for `gpu-split`, none otherwise. */
  gpus: Array<{ index: number, bytes: number }>
  /** Bytes it takes from RAM (`cpu` only). */
  ramBytes: number
  reason: string
}

export type RejectionCode =
  | 'duplicate-candidate'
  | 'already-hosts'
  | 'label-mismatch'
  | 'no-gpu'
  | 'vram-too-small'
  | 'no-fit'
  | 'outranked'
  | 'not-needed'

export interface Rejection {
  nodeId: string
  code: RejectionCode
  reason: string
}

export interface PlacementDecision {
  strategy: PlacementStrategy
  /** Estimated memory one replica takes. */
  needBytes: number
  /** Replicas this decision had to place: `replicas` less those already running. */
  missing: number
  /** New replicas to start, best first. */
  place: Placement[]
  /** Replicas that fit nowhere: reported, never forced. */
  unplaceable: number
  /** Every candidate not chosen, with why. */
  rejected: Rejection[]
  /** The seed `random` / `weighted` used (null for the other strategies). */
  seed: number | null
  /** `round-robin`: the cursor to pass next time (the others return `rrCursor` unchanged). */
  nextRrCursor: number
}

/** Defaults for every optional request field, in one place. */
export const PLACEMENT_DEFAULTS: Readonly<{ strategy: PlacementStrategy, memoryOverhead: number, kvCacheBytes: number, rrCursor: number }> = Object.freeze({
  strategy: 'resource-fit',
  /** Weights plus compute buffers over the file size; llama.cpp needs roughly this for a short context. */
  memoryOverhead: 1.2,
  kvCacheBytes: 0,
  rrCursor: 0
})

function invalid (message: string, param: string): BadRequestError {
  return new BadRequestError(message, param, 'invalid_placement_request')
}

function nonNegative (value: number | undefined, param: string): void {
  if (value !== undefined && !(Number.isFinite(value) && value >= 0)) throw invalid(`${param} must be a finite number >= 0`, param)
}

function validate (req: PlacementRequest): void {
  if (typeof req.model !== 'string' || req.model.length === 0) throw invalid('model must be a non-empty string', 'model')
  nonNegative(req.sizeBytes, 'sizeBytes')
  if (!Number.isSafeInteger(req.replicas) || req.replicas < 0) throw invalid('replicas must be an integer >= 0', 'replicas')
  if (req.strategy !== undefined && !Object.hasOwn(PLACEMENT_STRATEGIES, req.strategy)) throw invalid(`unknown placement strategy '${String(req.strategy)}'`, 'strategy')
  nonNegative(req.memoryOverhead, 'memoryOverhead')
  nonNegative(req.kvCacheBytes, 'kvCacheBytes')
  nonNegative(req.constraints?.minVramBytes, 'constraints.minVramBytes')
  if (req.rrCursor !== undefined && !Number.isSafeInteger(req.rrCursor)) throw invalid('rrCursor must be an integer', 'rrCursor')
  if (req.seed !== undefined && !Number.isFinite(req.seed)) throw invalid('seed must be a finite number', 'seed')
}

function placementOf (fit: NodeFit, ctx: FitContext, strategy: PlacementStrategy): Placement {
  const { why, ...layout } = layoutOf(fit, ctx)
  return { ...layout, reason: `${strategy}: ${why}` }
}

/**
 * Decides which nodes start the missing replicas of one deployment.
 *
 * Each candidate is first filtered (already hosts it, labels, GPU constraints), then checked for
 * fit: the memory need on one GPU (the tightest that fits), else split over its GPUs (fewest,
 * most free first), else in RAM unless a GPU is required; a node that already has this model
 * loaded needs nothing new. The strategy then ranks the nodes that fit and the first `missing`
 * get one replica each. Runs in O(n log n) for n candidates.
 *
 * @throws BadRequestError (`invalid_placement_request`) on a malformed request.
 */
export function placeReplicas (candidates: PlacementCandidate[], req: PlacementRequest): PlacementDecision {
  validate(req)
  const strategy = req.strategy ?? PLACEMENT_DEFAULTS.strategy
  const needBytes = memoryNeed(req.sizeBytes, req.memoryOverhead ?? PLACEMENT_DEFAULTS.memoryOverhead, req.kvCacheBytes ?? PLACEMENT_DEFAULTS.kvCacheBytes)
  const ctx = fitContext(req, needBytes)
  const missing = Math.max(0, req.replicas - ctx.current.size)
  const rrCursor = req.rrCursor ?? PLACEMENT_DEFAULTS.rrCursor

  const rejected: Rejection[] = []
  const feasible: NodeFit[] = []
  const seen = new Set<string>()
  // Round-robin walks a ring of every candidate, fit or not, so its cursor keeps its meaning as nodes come and go.
  const ring: Array<{ id: string, fit: NodeFit | null }> = []
  for (const c of candidates) {
    if (seen.has(c.id)) {
      rejected.push({ nodeId: c.id, code: 'duplicate-candidate', reason: 'listed more than once; the first entry was used' })
      continue
    }
    seen.add(c.id)
    const result = evaluateCandidate(c, ctx)
    if ('candidate' in result) feasible.push(result)
    else rejected.push(result)
    if (strategy === 'round-robin') ring.push({ id: c.id, fit: 'candidate' in result ? result : null })
  }

  let seed: number | null = null
  if (strategy === 'random' || strategy === 'weighted') seed = req.seed ?? newSeed()
  const picked = missing === 0 || feasible.length === 0
    ? { chosen: [], nextRrCursor: rrCursor }
    : PLACEMENT_STRATEGIES[strategy](feasible, missing, { seed: seed ?? 0, rrCursor, preferLabels: req.preferLabels ?? {}, ring })

  const place = picked.chosen.map(fit => placementOf(fit, ctx, strategy))
  if (picked.chosen.length < feasible.length) {
    const chosenIds = new Set(place.map(p => p.nodeId))
    const code: RejectionCode = missing === 0 ? 'not-needed' : 'outranked'
    const why = missing === 0 ? 'fits, but no replica is missing' : `fits, but ranked below the ${place.length} chosen by ${strategy}`
    for (const fit of feasible) {
      if (!chosenIds.has(fit.candidate.id)) rejected.push({ nodeId: fit.candidate.id, code, reason: why })
    }
  }
  return { strategy, needBytes, missing, place, unplaceable: missing - place.length, rejected, seed, nextRrCursor: picked.nextRrCursor ?? rrCursor }
}

/**
 * Folds a decision's placements into a reservation map (returning a new one, the input is left
 * as it is), so a leader that places several deployments in a row does not promise the same
 * bytes twice.
 */
export function addReservations (reserved: Record<string, NodeReservation>, decision: PlacementDecision): Record<string, NodeReservation> {
  const out: Record<string, NodeReservation> = { ...reserved }
  for (const p of decision.place) {
    if (p.kind === 'loaded') continue
    const prev = out[p.nodeId]
    const next = typeof prev === 'number'
      ? { anywhereBytes: prev, ramBytes: 0, gpuBytes: {} as Record<number, number> }
      : { ...prev, ramBytes: prev?.ramBytes ?? 0, gpuBytes: { ...prev?.gpuBytes } }
    next.ramBytes += p.ramBytes
    for (const g of p.gpus) next.gpuBytes[g.index] = (next.gpuBytes[g.index] ?? 0) + g.bytes
    out[p.nodeId] = next
  }
  return out
}
