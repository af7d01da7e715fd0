/**
 * Watching swarm-group leadership on a `MeshCluster` from the root namespace: every node's
 * `GET /api/groups/:name`, polled until a set of nodes agrees on one leader among themselves.
 * Shared by the LAN group and chaos tests and `bench/lan-groups.ts`.
 */
import { setTimeout as sleep } from 'node:timers/promises'
import type { MeshCluster } from './mesh-cluster.js'

/** A group as `GET /api/groups/:name` describes it. */
export interface ApiGroup {
  name: string
  leader: string | null
  term: number
  joined: boolean
  members: Array<{ id: string, name: string, status: string, self: boolean }>
}

/** An agreement reached: who leads, at which term, and when (ms after `t0`). */
export interface Agreement {
  leader: string
  term: number
  ms: number
}

/**
 * Records every term each node reported, and every time one went down. Terms are persisted and
 * only grow, so any decrease is a bug (a restart included: the data dir is kept).
 */
export class TermWatch {
  private readonly last = new Map<number, number>()
  readonly violations: string[] = []

  record (node: number, term: number): void {
    const prev = this.last.get(node)
    if (prev != null && term < prev) this.violations.push(`node ${node}: term went from ${prev} to ${term}`)
    if (prev == null || term > prev) this.last.set(node, term)
  }

  /** The highest term `node` reported so far (-1 if none). */
  highest (node: number): number {
    return this.last.get(node) ?? -1
  }
}

/** Node `i`'s view of `group`, or the error text when it did not answer. */
export async function groupView (cluster: MeshCluster, i: number, group = 'default', watch?: TermWatch, timeoutMs = 1500): Promise<ApiGroup | string> {
  try {
    const g = await cluster.getJson<ApiGroup>(i, `/api/groups/${group}`, timeoutMs)
    watch?.record(i, g.term)
    return g
  } catch (err) {
    return (err as Error).message
  }
}

function describeView (cluster: MeshCluster, v: ApiGroup | string | undefined): string {
  if (v == null) return 'nothing'
  if (typeof v === 'string') return `error: ${v}`
  const name = (id: string | null): string => {
    if (id == null) return 'none'
    const n = cluster.nodes.find(n => n.peerId === id)
    return n != null ? `lan-${n.index}` : `…${id.slice(-6)}`
  }
  return `leader ${name(v.leader)} term ${v.term}, members ${v.members.map(m => `${m.name}:${m.status}`).join(' ')}`
}

/**
 * Polls the nodes of `side` until all of them report the same leader and term, the leader is
 * one of them, and each lists exactly the nodes of `side` as its alive members (so the
 * others are known to be gone, and nobody of the side is missing). `accept` can demand more
 * (a higher term, a different leader). Rejects after `timeoutMs` with every node's last view.
 */
export async function waitForOneLeader (cluster: MeshCluster, side: number[], opts: {
  t0: number
  timeoutMs: number
  what: string
  group?: string
  intervalMs?: number
  watch?: TermWatch
  accept?: (a: { leader: string, term: number }) => boolean
}): Promise<Agreement> {
  const group = opts.group ?? 'default'
  const ids = new Set(side.map(i => cluster.nodes[i].peerId))
  let last = new Map<number, ApiGroup | string>()
  while (performance.now() - opts.t0 < opts.timeoutMs) {
    const views = await Promise.all(side.map(async i => await groupView(cluster, i, group, opts.watch)))
    const at = performance.now() - opts.t0
    last = new Map(side.map((i, k) => [i, views[k]]))
    const ok = views.every((v): v is ApiGroup => typeof v !== 'string')
    if (ok) {
      const first = views[0]
      const agreed = first.leader != null && ids.has(first.leader) &&
        views.every(v => v.leader === first.leader && v.term === first.term) &&
        views.every(v => {
          const alive = v.members.filter(m => m.status === 'alive').map(m => m.id)
          return alive.length === ids.size && alive.every(id => ids.has(id))
        })
      if (agreed && (opts.accept == null || opts.accept({ leader: first.leader as string, term: first.term }))) {
        return { leader: first.leader as string, term: first.term, ms: at }
      }
    }
    await sleep(opts.intervalMs ?? 50)
  }
  const detail = side.map(i => `  node ${i}: ${describeView(cluster, last.get(i))}`).join('\n')
  throw new Error(`${opts.what}: not reached within ${opts.timeoutMs} ms\n${detail}`)
}

/** Index of the node whose peer id is `id` (throws when none is). */
export function indexOf (cluster: MeshCluster, id: string): number {
  const i = cluster.nodes.findIndex(n => n.peerId === id)
  if (i < 0) throw new Error(`no node of the cluster has id ${id}`)
  return i
}
