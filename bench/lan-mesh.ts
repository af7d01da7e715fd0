/**
 * The mesh on a real (namespace) LAN, at 3 and at 10 nodes, mDNS discovery only:
 * - time until every node sees all others alive with a resource snapshot,
 * - kill -9 and silent link loss detection (until every other node says dead),
 * - idle gossip traffic per node, from the /metrics byte counters over ~5 s,
 * - idle resident memory per node,
 * - heartbeat delivery delay (publish on the sender to arrival on the receiver; one clock for all
 *   namespaces, so exact): from each node's histogram, read before and after the idle window.
 * Needs root and iproute2 (see test/support/netns.ts) and a built node (`npm run build`).
 */
import { cpus, loadavg } from 'node:os'
import { setTimeout as sleep } from 'node:timers/promises'
import { MeshCluster, promSum } from '../test/lan/mesh-cluster.js'
import { cpuMs } from './process-cpu.js'
import type { BenchTable, Cell } from './table.js'

const SIZES = [3, 10]
const CONVERGE_TARGET_MS = 2000
const KILL_TARGET_MS = 3000
const LINK_TARGET_MS = 5000
const RSS_TARGET_MB = 150
/** Seed 000: heartbeat delay < 10 ms on one LAN. */
const HEARTBEAT_TARGET_MS = 10
const IDLE_WINDOW_MS = 5000
/** How long past a target a wait keeps going, so a miss is measured rather than cut off. */
const GRACE_MS = 5000

interface Timed { ms: number | null, error?: string }

async function timed (fn: () => Promise<number>): Promise<Timed> {
  try {
    return { ms: await fn() }
  } catch (err) {
    return { ms: null, error: (err as Error).message.split('\n')[0] }
  }
}

interface SizeResult {
  nodes: number
  spawnToReadyMs: number
  converge: Timed
  sentBps: number[] | null
  receivedBps: number[] | null
  rssMb: number[]
  cpuPercent: number[] | null
  rssSource: string
  /** Heartbeats received by all nodes in the idle window, and how many within 2, 5 and 10 ms. */
  heartbeats: { n: number, le2: number, le5: number, le10: number } | null
  kill: Timed
  link: Timed
  notes: string[]
}

async function measure (n: number): Promise<SizeResult> {
  const notes: string[] = []
  const interval = n > 5 ? 100 : 50
  const t0 = performance.now()
  const cluster = await MeshCluster.start({ nodes: n, startTimeoutMs: 45_000 })
  try {
    const lastReady = Math.max(...cluster.nodes.map(x => x.readyAt))
    const all = cluster.nodes.map(x => x.index)
    const converge = await timed(async () => await cluster.waitForConverged(all, { t0: lastReady, timeoutMs: 30_000, intervalMs: interval }))
    if (converge.error != null) notes.push(`${n} nodes, converge: ${converge.error}`)

    // Idle: let the join traffic settle, then read the counters twice.
    await sleep(1000)
    // A starved node can be slow to answer; an unread node leaves its figures out, not the run.
    const read = async (): Promise<Array<{ at: number, text: string }>> =>
      await Promise.all(all.map(async i => {
        for (let attempt = 0; attempt < 3; attempt++) {
          try {
            return { text: await cluster.metricsText(i, 5000), at: performance.now() }
          } catch {}
        }
        notes.push(`${n} nodes: GET /metrics on node ${i} failed 3 times`)
        return { text: '', at: performance.now() }
      }))
    const pids = all.map(i => cluster.nodes[i].proc?.child.pid)
    const cpuBefore = pids.map(cpuMs)
    const tCpu = performance.now()
    const before = await read()
    await sleep(IDLE_WINDOW_MS)
    const after = await read()
    const cpuAfter = pids.map(cpuMs)
    const cpuWindow = (performance.now() - tCpu) / 1000
    // cpuMs is NaN for a process it cannot read: then no CPU figure at all.
    const cpuPercent = [...cpuBefore, ...cpuAfter].some(Number.isNaN)
      ? null
      : all.map(i => 100 * (cpuAfter[i] - cpuBefore[i]) / (cpuWindow * 1000))
    const rate = (name: string): number[] | null => {
      const out: number[] = []
      for (const i of all) {
        const a = promSum(before[i].text, name)
        const b = promSum(after[i].text, name)
        if (a != null && b != null) out.push((b - a) / ((after[i].at - before[i].at) / 1000))
      }
      if (out.length < n) notes.push(`${n} nodes: ${name} read on ${out.length} of ${n} nodes`)
      return out.length > 0 ? out : null
    }
    const sentBps = rate('shepherd_gossip_bytes_sent_total')
    const receivedBps = rate('shepherd_gossip_bytes_received_total')
    const alive = all.map(i => promSum(after[i].text, 'shepherd_peers', { status: 'alive' }))
    if (alive.some(a => a !== n - 1)) notes.push(`${n} nodes: shepherd_peers{status="alive"} per node at idle = ${alive.join(',')} (expected ${n - 1})`)

    const rssSources = new Set<string>()
    const rssMb = all.map(i => {
      const fromMetrics = promSum(after[i].text, 'process_resident_memory_bytes')
      if (fromMetrics != null) {
        rssSources.add('/metrics process_resident_memory_bytes')
        return fromMetrics / 2 ** 20
      }
      rssSources.add('/proc/<pid>/status VmRSS')
      return (cluster.rssBytes(i) ?? NaN) / 2 ** 20
    })
    const rssSource = [...rssSources].join(' and ')
    const delta = (le: string): number => all.reduce((sum, i) =>
      sum + (promSum(after[i].text, 'shepherd_heartbeat_delay_ms_bucket', { le }) ?? 0) - (promSum(before[i].text, 'shepherd_heartbeat_delay_ms_bucket', { le }) ?? 0), 0)
    const hbCount = delta('+Inf')
    const heartbeats = hbCount > 0 ? { n: hbCount, le2: delta('2'), le5: delta('5'), le10: delta('10') } : null

    const victim = n - 1
    const cut = n - 2
    const others = all.filter(i => i !== victim)
    const tKill = performance.now()
    cluster.kill(victim, 'SIGKILL')
    const kill = await timed(async () => await cluster.waitForStatus(others, victim, 'dead', { t0: tKill, timeoutMs: KILL_TARGET_MS + GRACE_MS, intervalMs: interval }))
    if (kill.error != null) notes.push(`${n} nodes, kill -9: ${kill.error}`)

    const observers = others.filter(i => i !== cut)
    const tDown = performance.now()
    await cluster.lan.linkDown(cut)
    const link = await timed(async () => await cluster.waitForStatus(observers, cut, 'dead', { t0: tDown, timeoutMs: LINK_TARGET_MS + GRACE_MS, intervalMs: interval }))
    if (link.error != null) notes.push(`${n} nodes, link down: ${link.error}`)

    return { nodes: n, spawnToReadyMs: lastReady - t0, converge, sentBps, receivedBps, rssMb, cpuPercent, rssSource, heartbeats, kill, link, notes }
  } finally {
    await cluster.destroy()
  }
}

const pct = (part: number, whole: number): string => `${(100 * part / whole).toFixed(1)} %`
const mean = (xs: number[]): number => xs.reduce((a, b) => a + b, 0) / xs.length
const ms = (t: Timed): Cell => t.ms == null ? 'timeout' : Math.round(t.ms)
const met = (value: number | null, target: number): Cell => value == null ? 'no' : value <= target ? 'yes' : 'no'
const meanMax = (xs: number[] | null, digits = 0): Cell => xs == null ? 'n/a' : `${mean(xs).toFixed(digits)} / ${Math.max(...xs).toFixed(digits)}`

export async function run (): Promise<BenchTable> {
  const load = loadavg().map(x => x.toFixed(1)).join(' ')
  const results: SizeResult[] = []
  for (const n of SIZES) results.push(await measure(n))
  const rows: Cell[][] = []
  for (const r of results) {
    rows.push(
      ['spawn → all nodes printed ready (ms)', r.nodes, Math.round(r.spawnToReadyMs), null, null],
      ['last ready → all see all alive + snapshot (ms)', r.nodes, ms(r.converge), `≤ ${CONVERGE_TARGET_MS}`, met(r.converge.ms, CONVERGE_TARGET_MS)],
      ['kill -9 → dead on all others (ms)', r.nodes, ms(r.kill), `≤ ${KILL_TARGET_MS}`, met(r.kill.ms, KILL_TARGET_MS)],
      ['link down → dead on all others (ms)', r.nodes, ms(r.link), `≤ ${LINK_TARGET_MS}`, met(r.link.ms, LINK_TARGET_MS)],
      ['idle gossip sent per node, B/s (mean / max)', r.nodes, meanMax(r.sentBps), null, null],
      ['idle gossip received per node, B/s (mean / max)', r.nodes, meanMax(r.receivedBps), null, null],
      ['idle CPU per node, % of one core (mean / max)', r.nodes, meanMax(r.cpuPercent, 1), null, null],
      ['idle RSS per node, MB (mean / max)', r.nodes, meanMax(r.rssMb, 1), `≤ ${RSS_TARGET_MB} (max)`, met(Math.max(...r.rssMb), RSS_TARGET_MB)],
      ['heartbeats delivered ≤ 2 / ≤ 5 / ≤ 10 ms (% of those in the idle window)', r.nodes, r.heartbeats == null ? 'n/a' : `${pct(r.heartbeats.le2, r.heartbeats.n)} / ${pct(r.heartbeats.le5, r.heartbeats.n)} / ${pct(r.heartbeats.le10, r.heartbeats.n)} of ${r.heartbeats.n}`, `< ${HEARTBEAT_TARGET_MS} ms`, r.heartbeats == null ? 'no' : r.heartbeats.le10 / r.heartbeats.n >= 0.99 ? 'yes (p99)' : 'no']
    )
  }
  return {
    title: 'Mesh on a namespace LAN (mDNS discovery, default membership timings)',
    columns: ['Metric', 'Nodes', 'Value', 'Target', 'Met'],
    rows,
    notes: [
      'Times are polled from the root namespace (GET /api/peers every 50 ms at 3 nodes, 100 ms at 10), so they',
      'overstate the truth by up to one interval plus one request. "Dead on all others" is the slowest observer.',
      `Machine: ${cpus().length} CPUs, load average ${load} at start (every node and the poller share these CPUs).`,
      `Idle gossip: /metrics byte counters read twice ${IDLE_WINDOW_MS / 1000} s apart, 1 s after convergence.`,
      `RSS source: ${[...new Set(results.map(r => r.rssSource))].join(', ')}.`,
      ...results.flatMap(r => r.notes)
    ]
  }
}
