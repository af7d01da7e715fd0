/**
 * Placement strategies: each picks up to `k` distinct nodes, best first, from those that fit
 * (see placement-fit.ts). Ties always end on node id, so equal inputs give equal picks.
 */
import type { NodeFit } from './placement-fit.js'
import type { PlacementStrategy } from './placement.js'
import { keyedRandom } from './placement-random.js'

export interface StrategyContext {
  seed: number
  rrCursor: number
  preferLabels: Record<string, string>
  /** Round-robin only: every candidate (fit or not), in input order. */
  ring: Array<{ id: string, fit: NodeFit | null }>
}

export interface StrategyPick {
  chosen: NodeFit[]
  /** Round-robin only: where the next call should start. */
  nextRrCursor?: number
}

export type PlacementStrategyFn = (feasible: NodeFit[], k: number, ctx: StrategyContext) => StrategyPick

/** Plain code-unit order: locale-independent, so every leader sorts ids the same way. */
function byId (a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0
}

function finiteOr (x: number | undefined, fallback: number): number {
  return typeof x === 'number' && Number.isFinite(x) ? x : fallback
}

/**
 * Most room first: a copy already loaded, then one GPU, then a split, then RAM; within each,
 * most free VRAM, then most free RAM. Spreading over nodes keeps headroom everywhere, while the
 * fit itself packs tightly within a node (tightest GPU).
 */
function compareFit (a: NodeFit, b: NodeFit): number {
  return a.kindRank - b.kindRank ||
    b.freeVramBytes - a.freeVramBytes ||
    b.freeRamBytes - a.freeRamBytes ||
    byId(a.candidate.id, b.candidate.id)
}

/** Below this many picks, a bounded insertion beats sorting everything. */
const SELECT_LIMIT = 16

/**
 * The k best under `compare`, best first: O(n·k) insertion for the usual handful of replicas,
 * a full O(n log n) sort beyond. Equal to sorting and slicing, as `compare` is a total order.
 */
export function selectBest<T> (items: T[], k: number, compare: (a: T, b: T) => number): T[] {
  if (k <= 0) return []
  if (k > SELECT_LIMIT) return items.slice().sort(compare).slice(0, k)
  const best: T[] = []
  for (const item of items) {
    if (best.length === k && compare(item, best[k - 1]) >= 0) continue
    let i = best.length === k ? k - 1 : best.length
    while (i > 0 && compare(item, best[i - 1]) < 0) {
      best[i] = best[i - 1]
      i--
    }
    best[i] = item
  }
  return best
}

function topK (feasible: NodeFit[], k: number, compare: (a: NodeFit, b: NodeFit) => number): StrategyPick {
  return { chosen: selectBest(feasible, k, compare) }
}

/** Resource-based: the nodes with the most room for the model. */
export function resourceFit (feasible: NodeFit[], k: number): StrategyPick {
  return topK(feasible, k, compareFit)
}

/** Fewest running + queued requests, then most room. */
export function leastLoaded (feasible: NodeFit[], k: number): StrategyPick {
  return topK(feasible, k, (a, b) => finiteOr(a.candidate.load, 0) - finiteOr(b.candidate.load, 0) || compareFit(a, b))
}

/** Nodes that already hold the file (loaded, loading, then on disk: no copy over the LAN), then most room. */
export function locality (feasible: NodeFit[], k: number): StrategyPick {
  return topK(feasible, k, (a, b) => a.holding - b.holding || compareFit(a, b))
}

/**
 * Walks the id-sorted ring of all candidates from the cursor and takes the next ones that fit;
 * the ring includes nodes that do not fit so the cursor keeps its place as they come and go.
 */
export function roundRobin (_feasible: NodeFit[], k: number, ctx: StrategyContext): StrategyPick {
  const ring = ctx.ring.slice().sort((a, b) => byId(a.id, b.id))
  const n = ring.length
  const start = ((ctx.rrCursor % n) + n) % n
  const chosen: NodeFit[] = []
  let next = start
  for (let step = 0; step < n && chosen.length < k; step++) {
    const pos = (start + step) % n
    const fit = ring[pos].fit
    if (fit !== null) {
      chosen.push(fit)
      next = (pos + 1) % n
    }
  }
  return { chosen, nextRrCursor: next }
}

/**
 * Weighted random without replacement (Efraimidis–Spirakis: the k smallest of -ln(u) / weight).
 * Weight is free VRAM in GiB plus CPU cores, the capacity measure the request router's
 * `weighted` uses; u is drawn per node id from the seed.
 */
export function weighted (feasible: NodeFit[], k: number, ctx: StrategyContext): StrategyPick {
  const keyed = feasible.map(fit => {
    const weight = Math.max(1e-6, fit.freeVramBytes / 2 ** 30 + finiteOr(fit.candidate.resources.cpu?.cores, 1))
    return { fit, key: -Math.log(1 - keyedRandom(ctx.seed, fit.candidate.id)) / weight }
  })
  return { chosen: selectBest(keyed, k, (a, b) => a.key - b.key || byId(a.fit.candidate.id, b.fit.candidate.id)).map(x => x.fit) }
}

/** Uniform random: the k nodes whose seeded draw is smallest (a uniformly random k-subset, in random order). */
export function random (feasible: NodeFit[], k: number, ctx: StrategyContext): StrategyPick {
  const keyed = feasible.map(fit => ({ fit, key: keyedRandom(ctx.seed, fit.candidate.id) }))
  return { chosen: selectBest(keyed, k, (a, b) => a.key - b.key || byId(a.fit.candidate.id, b.fit.candidate.id)).map(x => x.fit) }
}

/** Most of `preferLabels` matched, then lowest cost per hour (unknown cost last), then most room. */
export function labelCost (feasible: NodeFit[], k: number, ctx: StrategyContext): StrategyPick {
  const wanted = Object.entries(ctx.preferLabels)
  const keyed = feasible.map(fit => {
    let matches = 0
    for (const [key, value] of wanted) if (fit.candidate.labels?.[key] === value) matches++
    return { fit, matches, cost: finiteOr(fit.candidate.costPerHour, Infinity) }
  })
  const compare = (a: typeof keyed[number], b: typeof keyed[number]): number =>
    b.matches - a.matches || (a.cost === b.cost ? 0 : a.cost < b.cost ? -1 : 1) || compareFit(a.fit, b.fit)
  return { chosen: selectBest(keyed, k, compare).map(x => x.fit) }
}

export const PLACEMENT_STRATEGIES: Record<PlacementStrategy, PlacementStrategyFn> = {
  'resource-fit': resourceFit,
  'least-loaded': leastLoaded,
  locality,
  'round-robin': roundRobin,
  weighted,
  random,
  'label-cost': labelCost
}
