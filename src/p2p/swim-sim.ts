/**
 * A simulator of the membership protocol (issue 14): the real `swim.ts` state machines of N
 * nodes, virtual time, and a simulated network that loses and delays each message at random.
 * No I/O, deterministic for a seed; 10,000 nodes run in seconds because each node's state keeps
 * only what changed from a shared, converged roster (see `SwimState.base`).
 *
 * One run measures, the way Serf's convergence simulator reports its numbers:
 * - convergence: a newcomer joins through one seed; the time until every live node holds it alive;
 * - detection: nodes are killed (they stop answering); the time until the first node declares one
 *   dead, and until every live node holds it dead;
 * - false positives: live nodes that some node declared dead (of all live nodes);
 * - messages a node sends per second, averaged over the run.
 */
import { SWIM_LAN_DEFAULTS, initSwim, nextDeadline, step, type SwimAction, type SwimConfig, type SwimMessage, type SwimState } from './swim.js'

export interface SimOptions {
  nodes: number
  /** Probability that one message is lost. */
  lossRate: number
  /** One-way latency, uniform between the two bounds (ms). */
  latencyMs: [min: number, max: number]
  /** Virtual time simulated (ms). */
  durationMs: number
  /** Nodes killed at `eventAtMs` (they stop answering), and a newcomer joins at the same time. */
  kill: number
  eventAtMs: number
  config?: SwimConfig
  seed?: number
}

export interface SimResult {
  nodes: number
  lossRate: number
  /** Join known alive by every live node (ms after the join); null: not within the run. */
  convergenceMs: number | null
  /** Median over the killed nodes: first node to declare it dead, and every live node holding it dead. */
  detectFirstMs: number | null
  detectAllMs: number | null
  /** Live nodes declared dead by some node. */
  falsePositives: number
  falsePositiveRate: number
  /** Suspicions of live nodes raised, refuted ones included (distinct member and incarnation). */
  suspicions: number
  messagesPerNodePerSec: number
  delivered: number
  wallMs: number
}

/** A binary min-heap of timed events (ties keep insertion order). */
class Heap<T extends { at: number, n: number }> {
  private readonly a: T[] = []
  get size (): number { return this.a.length }
  push (x: T): void {
    const a = this.a
    a.push(x)
    let i = a.length - 1
    while (i > 0) {
      const p = (i - 1) >> 1
      if (less(a[p], a[i])) break
      ;[a[p], a[i]] = [a[i], a[p]]
      i = p
    }
  }

  pop (): T | undefined {
    const a = this.a
    const top = a[0]
    const last = a.pop()
    if (a.length > 0 && last != null) {
      a[0] = last
      let i = 0
      for (;;) {
        const l = 2 * i + 1
        const r = l + 1
        let m = i
        if (l < a.length && less(a[l], a[m])) m = l
        if (r < a.length && less(a[r], a[m])) m = r
        if (m === i) break
        ;[a[m], a[i]] = [a[i], a[m]]
        i = m
      }
    }
    return top
  }
}
function less (x: { at: number, n: number }, y: { at: number, n: number }): boolean {
  return x.at < y.at || (x.at === y.at && x.n < y.n)
}

type Ev = { at: number, n: number, node: number } & ({ kind: 'tick' } | { kind: 'msg', from: string, msg: SwimMessage })

/** mulberry32 for the network's own randomness (loss, latency), apart from the nodes'. */
function rng (seed: number): () => number {
  let s = seed >>> 0
  return () => {
    let t = (s = (s + 0x6D2B79F5) >>> 0)
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }
}

function median (xs: number[]): number | null {
  if (xs.length === 0) return null
  const s = [...xs].sort((a, b) => a - b)
  return s[Math.floor(s.length / 2)]
}

/** Runs one simulation. */
export function simulate (o: SimOptions): SimResult {
  const wall = performance.now()
  const config = o.config ?? SWIM_LAN_DEFAULTS
  const rand = rng(o.seed ?? 1)
  const ids = Array.from({ length: o.nodes }, (_, i) => `n${i}`)
  const newcomer = `n${o.nodes}`
  const index = new Map<string, number>(ids.map((id, i) => [id, i]))
  index.set(newcomer, o.nodes)
  const states: SwimState[] = ids.map((id, i) => initSwim(id, config, { base: ids, seed: (o.seed ?? 1) * 7919 + i }))
  const up: boolean[] = ids.map(() => true)
  const scheduled: number[] = ids.map(() => Infinity)
  const heap = new Heap<Ev>()
  let n = 0
  let sent = 0
  let delivered = 0

  // Killed: spread over the roster; the newcomer joins through node 0's neighbour.
  const killed = new Set<number>()
  for (let k = 0; k < o.kill; k++) killed.add(1 + Math.floor((k + 0.5) * (o.nodes - 1) / o.kill))
  const knowsNewcomer = new Set<number>()
  const deadSeenBy = new Map<string, Set<number>>()
  const firstDead = new Map<string, number>()
  const allDead = new Map<string, number>()
  const falselyDead = new Set<string>()
  const suspected = new Set<string>()
  let convergedAt: number | null = null

  function schedule (i: number, now: number): void {
    // A deadline in the past was just handled by a tick at `now`: never spin on one instant.
    const d = Math.max(now + 1, nextDeadline(states[i]))
    if (d < scheduled[i]) {
      scheduled[i] = d
      heap.push({ at: d, n: n++, node: i, kind: 'tick' })
    }
  }

  let live = o.nodes
  const liveCount = (): number => live

  function perform (i: number, actions: SwimAction[], now: number): void {
    for (const a of actions) {
      if (a.t === 'send') {
        sent++
        if (rand() < o.lossRate) continue
        const to = index.get(a.to)
        if (to == null) continue
        const lat = o.latencyMs[0] + rand() * (o.latencyMs[1] - o.latencyMs[0])
        heap.push({ at: now + lat, n: n++, node: to, kind: 'msg', from: states[i].self, msg: a.msg })
        continue
      }
      if (!up[i]) continue
      const target = index.get(a.id)
      if (a.id === newcomer && a.status === 'alive' && i !== o.nodes) {
        knowsNewcomer.add(i)
        if (convergedAt == null && knowsNewcomer.size >= liveCount() - 1) convergedAt = now
      }
      if (a.status === 'suspect' && target != null && up[target]) suspected.add(`${a.id}@${a.inc}`)
      if (a.status === 'dead') {
        if (target != null && up[target]) falselyDead.add(a.id)
        if (target != null && killed.has(target)) {
          if (!firstDead.has(a.id)) firstDead.set(a.id, now)
          let seen = deadSeenBy.get(a.id)
          if (seen == null) deadSeenBy.set(a.id, seen = new Set())
          seen.add(i)
          if (!allDead.has(a.id) && seen.size >= liveCount()) allDead.set(a.id, now)
        }
      }
    }
  }

  for (let i = 0; i < states.length; i++) schedule(i, 0)
  let eventDone = false
  while (heap.size > 0) {
    const ev = heap.pop()
    if (ev == null || ev.at > o.durationMs) break
    const now = ev.at
    if (!eventDone && now >= o.eventAtMs) {
      eventDone = true
      for (const k of killed) up[k] = false
      live = o.nodes - killed.size + 1
      // The newcomer: knows the roster (a push-pull with its seed), announces itself to the seed.
      const s = initSwim(newcomer, config, { base: ids, seed: 4242, now })
      states.push(s)
      up.push(true)
      scheduled.push(Infinity)
      const seed = states[0].self
      const r1 = step(s, { t: 'add', id: seed }, now)
      const r2 = step(s, { t: 'join' }, now)
      perform(o.nodes, [...r1.actions, ...r2.actions], now)
      schedule(o.nodes, now)
    }
    const i = ev.node
    if (!up[i]) continue
    if (ev.kind === 'tick') {
      if (ev.at !== scheduled[i]) continue
      scheduled[i] = Infinity
      perform(i, step(states[i], { t: 'tick' }, now).actions, now)
    } else {
      delivered++
      perform(i, step(states[i], { t: 'recv', from: ev.from, msg: ev.msg }, now).actions, now)
    }
    schedule(i, now)
  }

  const killedIds = [...killed].map(k => ids[k])
  return {
    nodes: o.nodes,
    lossRate: o.lossRate,
    convergenceMs: convergedAt != null ? Math.round(convergedAt - o.eventAtMs) : null,
    detectFirstMs: killedIds.every(id => firstDead.has(id)) ? median(killedIds.map(id => firstDead.get(id)! - o.eventAtMs)) : null,
    detectAllMs: killedIds.every(id => allDead.has(id)) ? median(killedIds.map(id => allDead.get(id)! - o.eventAtMs)) : null,
    falsePositives: falselyDead.size,
    falsePositiveRate: falselyDead.size / live,
    suspicions: suspected.size,
    messagesPerNodePerSec: sent / states.length / (o.durationMs / 1000),
    delivered,
    wallMs: Math.round(performance.now() - wall)
  }
}
