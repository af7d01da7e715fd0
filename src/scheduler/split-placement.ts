/**
 * Split placement (issue 16): when a model fits no single node, ONE replica runs over several —
 * a head (llama-server, holding the file and the first layers) and workers (llama.cpp
 * `rpc-server`s reached through the mesh's tunnel). Pure and synchronous, like placement.ts:
 * the leader re-runs it on every membership change and any plan can be replayed from its inputs.
 *
 * Choice: the fewest nodes whose free memory together holds the model; among plans of that size,
 * a head that already holds the file, then the lowest RTT (as the leader measures it: on one
 * LAN the head's RTT to a worker is close to the leader's), then the most free memory. Each
 * node takes a share of the layers in proportion to its free memory (llama.cpp's
 * `--tensor-split`), which never exceeds what it has free since the shares sum to the need.
 */
export { layerRanges } from '../node/split/layers.js'

/** A node that may take part in a split, as the leader sees it. */
export interface SplitCandidate {
  id: string
  /** Memory this node can give the model: free RAM (or VRAM), capped by its model budget. */
  freeBytes: number
  /** The leader's RTT to it; null when unknown (ranked last). */
  rttMs: number | null
  /** Whether it has the model file (a head needs it; a worker gets tensors over RPC). */
  holdsFile: boolean
}

export interface SplitRequest {
  /** Memory one replica needs in all (weights + buffers), as placement computes it. */
  needBytes: number
  /** Most nodes one replica may span. Default {@link SPLIT_DEFAULTS.maxNodes}. */
  maxNodes?: number
  /** Whether a head without the file may be chosen (it pulls the file first). Default true. */
  headMayPull?: boolean
}

export interface SplitShare {
  nodeId: string
  /** Bytes this node is expected to hold. */
  bytes: number
  /** Its fraction of the model (weights of `--tensor-split`); all shares sum to 1. */
  fraction: number
}

export type SplitPlan =
  | { ok: true, head: string, workers: string[], shares: SplitShare[], reason: string }
  | { ok: false, reason: string }

export const SPLIT_DEFAULTS = Object.freeze({
  /** Each added node is another hop per token: past a few, a split is slower than useful. */
  maxNodes: 4
})

function usable (c: SplitCandidate): boolean {
  return Number.isFinite(c.freeBytes) && c.freeBytes > 0
}

function rttOf (c: SplitCandidate): number {
  return c.rttMs != null && Number.isFinite(c.rttMs) && c.rttMs >= 0 ? c.rttMs : Number.MAX_SAFE_INTEGER
}

/**
 * Workers for `head` among `others`: `k - 1` of them whose free memory with the head's reaches
 * `need`, taken by lowest RTT as long as the remaining slots, filled with the largest nodes
 * left, can still reach it. Undefined when no such set exists.
 */
function workersFor (head: SplitCandidate, others: SplitCandidate[], k: number, need: number): SplitCandidate[] | undefined {
  const byRtt = [...others].sort((a, b) => rttOf(a) - rttOf(b) || b.freeBytes - a.freeBytes || a.id.localeCompare(b.id))
  const chosen: SplitCandidate[] = []
  let sum = head.freeBytes
  for (let i = 0; i < byRtt.length && chosen.length < k - 1; i++) {
    const c = byRtt[i]
    const slotsAfter = k - 1 - chosen.length - 1
    // The best the remaining slots can add once c is taken: the largest nodes not yet considered.
    const rest = byRtt.slice(i + 1).map(x => x.freeBytes).sort((a, b) => b - a).slice(0, slotsAfter).reduce((s, x) => s + x, 0)
    if (sum + c.freeBytes + rest >= need) {
      chosen.push(c)
      sum += c.freeBytes
    }
  }
  return chosen.length === k - 1 && sum >= need ? chosen : undefined
}

/**
 * Plans one split replica over `candidates` (unique ids; those with no free memory are ignored).
 * Returns the head, the workers and every node's share, or why no split fits.
 */
export function planSplit (candidates: SplitCandidate[], req: SplitRequest): SplitPlan {
  const need = req.needBytes
  if (!(Number.isFinite(need) && need > 0)) return { ok: false, reason: 'the model needs no memory: nothing to split' }
  const maxNodes = Math.max(2, Math.floor(req.maxNodes ?? SPLIT_DEFAULTS.maxNodes))
  const seen = new Set<string>()
  const pool = candidates.filter(c => usable(c) && !seen.has(c.id) && seen.add(c.id) !== undefined)
  const heads = pool.filter(c => c.holdsFile || req.headMayPull !== false)
  if (heads.length === 0) return { ok: false, reason: 'no node can head the split (none holds the file and none may pull it)' }
  const total = [...pool].sort((a, b) => b.freeBytes - a.freeBytes).slice(0, maxNodes).reduce((s, c) => s + c.freeBytes, 0)
  if (total < need) return { ok: false, reason: `the ${Math.min(maxNodes, pool.length)} roomiest nodes have ${total} bytes free together; the model needs ${need}` }

  for (let k = 2; k <= Math.min(maxNodes, pool.length); k++) {
    let best: { head: SplitCandidate, workers: SplitCandidate[] } | undefined
    let bestKey: number[] = []
    for (const head of heads) {
      const workers = workersFor(head, pool.filter(c => c.id !== head.id), k, need)
      if (workers == null) continue
      const key = [head.holdsFile ? 0 : 1, Math.max(...workers.map(rttOf)), rttOf(head), -(head.freeBytes + workers.reduce((s, w) => s + w.freeBytes, 0))]
      if (best == null || compareKeys(key, bestKey) < 0 || (compareKeys(key, bestKey) === 0 && head.id < best.head.id)) {
        best = { head, workers }
        bestKey = key
      }
    }
    if (best != null) {
      const nodes = [best.head, ...best.workers]
      const sum = nodes.reduce((s, c) => s + c.freeBytes, 0)
      const shares = nodes.map(c => ({ nodeId: c.id, bytes: Math.ceil(need * c.freeBytes / sum), fraction: c.freeBytes / sum }))
      return {
        ok: true,
        head: best.head.id,
        workers: best.workers.map(w => w.id),
        shares,
        reason: `fits no single node; split over ${k} nodes in proportion to their free memory${best.head.holdsFile ? '' : ' (the head pulls the file first)'}`
      }
    }
  }
  return { ok: false, reason: `no set of at most ${maxNodes} nodes holds the model` }
}

function compareKeys (a: number[], b: number[]): number {
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return a[i] - b[i]
  return 0
}
