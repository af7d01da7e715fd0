/**
 * Whether one candidate can take a replica, and how: constraints first, then memory fit after
 * reservations. Shared by every placement strategy; the strategies only rank what fits.
 *
 * The per-candidate pass keeps to scalars and reused scratch arrays: it runs for every member of
 * the group on every decision, while the per-GPU layout is only worked out for the chosen few.
 */
import type { NodeReservation, Placement, PlacementCandidate, PlacementKind, PlacementRequest, Rejection } from './placement.js'

/** A candidate that can take a replica, with the numbers strategies rank on. */
export interface NodeFit {
  candidate: PlacementCandidate
  kind: PlacementKind
  /** `loaded` 0, `gpu` 1, `gpu-split` 2, `cpu` 3: lower is better for resource-fit. */
  kindRank: number
  /** The GPU fitted to (`gpu` only, else -1) and its free memory. */
  gpuIndex: number
  gpuFreeBytes: number
  /** Free memory on the GPUs it may use and in RAM, after reservations, before this replica. */
  freeVramBytes: number
  freeRamBytes: number
  /** 0 loaded, 1 loading, 2 file on disk, 3 not held. */
  holding: number
}

/** What every candidate is checked against, worked out once per decision. */
export interface FitContext {
  model: string
  fingerprint: string | undefined
  needBytes: number
  gpuRequired: boolean
  minVramBytes: number
  labels: Array<[string, string]>
  reserved: Record<string, NodeReservation> | undefined
  current: Set<string>
}

const HOLDING: Record<string, number> = { loaded: 0, loading: 1, on_disk: 2 }
const NOT_HELD = 3
const KIND_RANK: Record<PlacementKind, number> = { loaded: 0, gpu: 1, 'gpu-split': 2, cpu: 3 }

export function memoryNeed (sizeBytes: number, overhead: number, kvCacheBytes: number): number {
  return Math.ceil(sizeBytes * overhead + kvCacheBytes)
}

export function fitContext (req: PlacementRequest, needBytes: number): FitContext {
  const minVramBytes = bytes(req.constraints?.minVramBytes)
  return {
    model: req.model,
    fingerprint: req.fingerprint,
    needBytes,
    gpuRequired: req.constraints?.gpuRequired === true || minVramBytes > 0,
    minVramBytes,
    labels: Object.entries(req.constraints?.labels ?? {}),
    reserved: req.reserved,
    current: new Set(req.current)
  }
}

/** Gossiped numbers may be missing or garbage; treat those as nothing. */
function bytes (x: number | undefined): number {
  return typeof x === 'number' && x > 0 && Number.isFinite(x) ? x : 0
}

/** Bytes as GiB with one decimal (`24.0 GiB`); integer arithmetic, as toFixed is slow in a per-node loop. */
export function gib (n: number): string {
  const tenths = Math.round(n / 2 ** 30 * 10)
  return `${(tenths - tenths % 10) / 10}.${tenths % 10} GiB`
}

function holdingOf (c: PlacementCandidate, ctx: FitContext): number {
  let best = NOT_HELD
  for (const m of c.models) {
    const same = ctx.fingerprint !== undefined ? m.fingerprint === ctx.fingerprint : m.name === ctx.model
    if (same) best = Math.min(best, HOLDING[m.state] ?? NOT_HELD)
  }
  return best
}

/** Free bytes per usable GPU (at least minVram total), after reservations. Fills the scratch arrays; returns how many. */
function usableGpus (c: PlacementCandidate, ctx: FitContext, indexes: number[], free: number[]): number {
  const r = ctx.reserved?.[c.id]
  const perGpu = typeof r === 'object' ? r.gpuBytes : undefined
  let n = 0
  for (const g of c.resources.gpus) {
    const total = bytes(g.totalMemoryBytes)
    if (total < ctx.minVramBytes) continue
    indexes[n] = g.index
    // Some tools report no used memory; count it as 0 rather than leave the GPU unusable.
    free[n] = Math.max(0, total - bytes(g.usedMemoryBytes) - bytes(perGpu?.[g.index]))
    n++
  }
  const anywhere = anywhereBytes(r)
  if (anywhere > 0) deductAnywhere(free, n, anywhere)
  return n
}

function anywhereBytes (r: NodeReservation | undefined): number {
  return typeof r === 'number' ? bytes(r) : bytes(r?.anywhereBytes)
}

/**
 * Takes bytes of unknown place off the GPUs, most free first: where a best-effort leader would
 * have put them, and the choice that hurts the single-GPU fit check most, so it errs safe.
 */
function deductAnywhere (free: number[], n: number, amount: number): void {
  while (amount > 0) {
    let most = -1
    for (let i = 0; i < n; i++) if (free[i] > 0 && (most < 0 || free[i] > free[most])) most = i
    if (most < 0) return
    const take = Math.min(free[most], amount)
    free[most] -= take
    amount -= take
  }
}

// Scratch for the per-candidate pass: placeReplicas is synchronous, so one set serves every call.
const scratchIndexes: number[] = []
const scratchFree: number[] = []

/**
 * Checks one candidate against the request: a {@link NodeFit} when it can take a replica, else
 * the rejection saying why.
 */
export function evaluateCandidate (c: PlacementCandidate, ctx: FitContext): NodeFit | Rejection {
  const id = c.id
  if (ctx.current.has(id)) return { nodeId: id, code: 'already-hosts', reason: `already runs a replica of ${ctx.model}` }
  for (const [key, value] of ctx.labels) {
    const have = c.labels?.[key]
    if (have !== value) return { nodeId: id, code: 'label-mismatch', reason: `label ${key}=${value} wanted, node has ${have === undefined ? 'none' : `${key}=${have}`}` }
  }
  if (ctx.gpuRequired && c.resources.gpus.length === 0) return { nodeId: id, code: 'no-gpu', reason: 'a GPU is required and the node has none' }

  const indexes = scratchIndexes
  const free = scratchFree
  const n = usableGpus(c, ctx, indexes, free)
  if (ctx.minVramBytes > 0 && n === 0) {
    const largest = c.resources.gpus.reduce((m, g) => Math.max(m, bytes(g.totalMemoryBytes)), 0)
    return { nodeId: id, code: 'vram-too-small', reason: `no GPU with ${gib(ctx.minVramBytes)} or more (largest: ${gib(largest)})` }
  }
  let freeVram = 0
  for (let i = 0; i < n; i++) freeVram += free[i]
  const r = ctx.reserved?.[id]
  const ramReserved = (typeof r === 'object' ? bytes(r.ramBytes) : 0) + anywhereBytes(r)
  const freeRam = Math.max(0, bytes(c.resources.memory?.availableBytes) - ramReserved)
  const holding = holdingOf(c, ctx)
  const need = ctx.needBytes

  let kind: PlacementKind | null = null
  let best = -1
  // A copy already in memory costs nothing more (its bytes are in `used` already, so a fit check would wrongly fail).
  if (holding <= HOLDING.loading) kind = 'loaded'
  else {
    // Tightest single GPU that fits, keeping the roomier ones for bigger models.
    for (let i = 0; i < n; i++) {
      if (free[i] >= need && (best < 0 || free[i] < free[best] || (free[i] === free[best] && indexes[i] < indexes[best]))) best = i
    }
    if (best >= 0) kind = 'gpu'
    else if (n >= 2 && freeVram >= need) kind = 'gpu-split'
    else if (!ctx.gpuRequired && freeRam >= need) kind = 'cpu'
  }
  if (kind !== null) {
    return {
      candidate: c,
      kind,
      kindRank: KIND_RANK[kind],
      gpuIndex: best >= 0 ? indexes[best] : -1,
      gpuFreeBytes: best >= 0 ? free[best] : 0,
      freeVramBytes: freeVram,
      freeRamBytes: freeRam,
      holding
    }
  }

  let largestFree = 0
  for (let i = 0; i < n; i++) largestFree = Math.max(largestFree, free[i])
  const gpuPart = n === 0 ? 'no usable GPU' : `largest GPU free ${gib(largestFree)}, all ${n} GPU${n === 1 ? '' : 's'} ${gib(freeVram)}`
  const ramPart = ctx.gpuRequired ? 'RAM not considered (GPU required)' : `RAM free ${gib(freeRam)}`
  return { nodeId: id, code: 'no-fit', reason: `needs ${gib(need)}; ${gpuPart}; ${ramPart}${r !== undefined ? ', after reservations' : ''}` }
}

/**
 * Splits `need` over the fewest GPUs (most free first), in proportion to their free memory, as
 * llama.cpp's tensor split does. Returns them in index order.
 */
function splitOver (indexes: number[], free: number[], n: number, need: number): Array<{ index: number, bytes: number }> {
  const order = Array.from({ length: n }, (_, i) => i).sort((a, b) => free[b] - free[a] || indexes[a] - indexes[b])
  let sum = 0
  let used = 0
  while (used < n && sum < need) sum += free[order[used++]]
  const chosen = order.slice(0, used).sort((a, b) => indexes[a] - indexes[b])
  const out = chosen.map(i => ({ index: indexes[i], bytes: Math.floor(need * free[i] / sum) }))
  // Flooring leaves a few bytes over; give them to GPUs that have room for them.
  let rest = need - out.reduce((s, g) => s + g.bytes, 0)
  for (let k = 0; k < out.length && rest > 0; k++) {
    const add = Math.min(rest, free[chosen[k]] - out[k].bytes)
    out[k].bytes += add
    rest -= add
  }
  return out
}

/** Where a chosen fit puts the replica's memory, and why, in the shape the decision reports. */
export function layoutOf (f: NodeFit, ctx: FitContext): Omit<Placement, 'reason'> & { why: string } {
  const need = ctx.needBytes
  const nodeId = f.candidate.id
  switch (f.kind) {
    case 'loaded':
      return { nodeId, gpuIndex: null, kind: f.kind, gpus: [], ramBytes: 0, why: `already has the model ${f.holding === 0 ? 'loaded' : 'loading'}; no new memory` }
    case 'gpu':
      return { nodeId, gpuIndex: f.gpuIndex, kind: f.kind, gpus: [{ index: f.gpuIndex, bytes: need }], ramBytes: 0, why: `fits on GPU ${f.gpuIndex} (${gib(need)} of ${gib(f.gpuFreeBytes)} free)` }
    case 'gpu-split': {
      const indexes: number[] = []
      const free: number[] = []
      const gpus = splitOver(indexes, free, usableGpus(f.candidate, ctx, indexes, free), need)
      return { nodeId, gpuIndex: null, kind: f.kind, gpus, ramBytes: 0, why: `no single GPU fits ${gib(need)}; split over GPUs ${gpus.map(g => `${g.index} (${gib(g.bytes)})`).join(', ')}` }
    }
    case 'cpu':
      return {
        nodeId,
        gpuIndex: null,
        kind: f.kind,
        gpus: [],
        ramBytes: need,
        why: `runs from RAM (${gib(need)} of ${gib(f.freeRamBytes)} free)${f.candidate.resources.gpus.length > 0 ? '; no room on its GPUs' : ''}`
      }
  }
}
