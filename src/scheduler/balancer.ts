import type { ModelHost } from './model-registry.js'

export type BalanceStrategy = 'least-loaded' | 'round-robin' | 'random' | 'weighted' | 'lowest-latency'

/** Loaded replicas come before ones that would have to load the model first. */
export function stateRank (h: Pick<ModelHost, 'state'>): number {
  return h.state === 'loaded' ? 0 : h.state === 'loading' ? 1 : 2
}

/**
 * Orders replicas best first under a strategy. `inflight` is what this node itself has sent
 * to each host and not yet seen finish, which is fresher than the host's gossiped load.
 */
export function orderHosts (hosts: ModelHost[], strategy: BalanceStrategy, ctx: { inflight: (peer: string) => number, counter: number, random?: () => number }): ModelHost[] {
  const random = ctx.random ?? Math.random
  const load = (h: ModelHost): number => h.load + ctx.inflight(h.peerId)
  const list = [...hosts]
  switch (strategy) {
    case 'least-loaded':
      return list.sort((a, b) => stateRank(a) - stateRank(b) || load(a) - load(b) || (a.rttMs ?? 1e9) - (b.rttMs ?? 1e9) || a.peerId.localeCompare(b.peerId))
    case 'lowest-latency':
      return list.sort((a, b) => stateRank(a) - stateRank(b) || (a.rttMs ?? 1e9) - (b.rttMs ?? 1e9) || load(a) - load(b))
    case 'round-robin': {
      list.sort((a, b) => a.peerId.localeCompare(b.peerId))
      const k = list.length === 0 ? 0 : ctx.counter % list.length
      return [...list.slice(k), ...list.slice(0, k)]
    }
    case 'random':
      for (let i = list.length - 1; i > 0; i--) {
        const j = Math.floor(random() * (i + 1))
        ;[list[i], list[j]] = [list[j], list[i]]
      }
      return list
    case 'weighted': {
      // Weighted random without replacement: capacity over (1 + load).
      const out: ModelHost[] = []
      const pool = list.map(h => ({ h, w: h.weight / (1 + load(h)) }))
      while (pool.length > 0) {
        const total = pool.reduce((s, x) => s + x.w, 0)
        let r = random() * total
        let idx = pool.findIndex(x => (r -= x.w) < 0)
        if (idx < 0) idx = pool.length - 1
        out.push(pool[idx].h)
        pool.splice(idx, 1)
      }
      return out
    }
  }
}
