/**
 * `npm run bench -- scale`: real node processes on loopback (`--engine none --no-mdns`, one swarm
 * key, each bootstrapping to the first; the compiled package, as `npx shepherd-mesh` runs it) at 4, 16, 32 and 48 nodes (issue 14). Per size: time until
 * every node lists every other alive (from the last node's ready line), then over an idle window
 * each node's CPU (% of one core, from /proc), RSS and membership gossip bytes/s received.
 *
 * Target: per-node idle CPU and RSS at 48 nodes ≤ 1.5× those at 4; all-see-all at 48 ≤ 30 s.
 * Baseline (issue 14, before this work; 2 cores, loopback): 4 nodes 4.3 % CPU, 130 MB, 7.6 s;
 * 8 nodes 8.1 %, 133 MB, 14.3 s; 16 nodes never converged within 180 s.
 *
 *   SCALE_SIZES=4,8 npm run bench -- scale     (sizes; default 4,16,32,48)
 *   SCALE_IDLE_MS=20000                          (idle window; default 20 s)
 *   SCALE_SETTLE_MS=15000                        (wait after all-see-all before the window; default 15 s)
 *   SCALE_MEMBERSHIP=swim,flood                  (failure detection, `--membership`; default swim)
 *
 * `swim` (the default since issue 14 step 2): SWIM probes, heartbeats only on change. `flood`:
 * every node's heartbeat to every node each second (what the baseline measured); run both in one
 * go to compare them side by side on the same machine.
 */
import { execFile } from 'node:child_process'
import { readFileSync } from 'node:fs'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { promisify } from 'node:util'
import { startNode, stopNode, getJson, type NodeProcess } from '../test/support/cluster.js'
import { cpuMs } from './process-cpu.js'
import type { BenchTable, Cell } from './table.js'

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..')
const execFileAsync = promisify(execFile)

const BASELINE: Record<number, { cpu: number, rssMb: number, convergeS: number | null }> = {
  4: { cpu: 4.3, rssMb: 130, convergeS: 7.6 },
  8: { cpu: 8.1, rssMb: 133, convergeS: 14.3 },
  // The lead's run of this bench before SWIM went live: 6.4 % per node, no all-see-all in 180 s.
  16: { cpu: 6.4, rssMb: NaN, convergeS: null }
}

function rssMb (pid: number | undefined): number {
  try {
    const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))
    return m != null ? Number(m[1]) / 1024 : NaN
  } catch {
    return NaN
  }
}

const GOSSIP_BYTES = 'shepherd_gossip_bytes_received_total'
/** SWIM probes that got no ack, direct or relayed: each raises (or confirms) a suspicion. */
const FAILED_PROBES = 'shepherd_swim_probes_total{outcome="failed"}'

/**
 * The gossip bytes received and failed probes of a node, from one /metrics read; NaN when the
 * node does not answer (32 nodes on 2 busy cores once took > 10 s to, and the whole run was lost).
 */
async function counters (n: NodeProcess): Promise<{ bytes: number, failed: number }> {
  try {
    const res = await fetch(`${n.api}/metrics`, { signal: AbortSignal.timeout(30_000) })
    const lines = (await res.text()).split('\n')
    const value = (name: string): number => {
      const line = lines.find(l => l.startsWith(name + ' '))
      return line != null ? Number(line.slice(name.length + 1)) : NaN
    }
    return { bytes: value(GOSSIP_BYTES), failed: value(FAILED_PROBES) }
  } catch {
    return { bytes: NaN, failed: NaN }
  }
}

const sleep = async (ms: number): Promise<void> => { await new Promise(resolve => setTimeout(resolve, ms)) }
/** Mean of the finite values (a node that did not answer is left out); NaN when none is. */
const avg = (xs: number[]): number => { const f = xs.filter(Number.isFinite); return f.length === 0 ? NaN : f.reduce((a, b) => a + b, 0) / f.length }
const round1 = (x: number): Cell => Number.isFinite(x) ? Math.round(x * 10) / 10 : null

/**
 * Whether every node lists every other alive at one moment: all nodes are asked at once (a
 * sweep one node after another, as this bench did before session 12, asks for a quiet window as
 * long as the sweep, 48 requests on busy cores, rather than for a moment).
 */
async function allSeeAll (nodes: NodeProcess[]): Promise<boolean> {
  const views = await Promise.all(nodes.map(async n => (await getJson<{ peers: Array<{ id: string, status: string }> }>(`${n.api}/api/peers`).catch(() => null))?.peers))
  return views.every((peers, i) => {
    if (peers == null) return false
    const alive = new Set(peers.filter(p => p.status === 'alive').map(p => p.id))
    return nodes.every(o => o === nodes[i] || alive.has(o.id))
  })
}

export async function run (): Promise<BenchTable> {
  // The nodes run the compiled package, as users do (`npx shepherd-mesh start`): build it first.
  await execFileAsync('npm', ['run', 'build'], { cwd: ROOT })
  const sizes = (process.env.SCALE_SIZES ?? '4,16,32,48').split(',').map(Number).filter(n => Number.isInteger(n) && n > 1)
  const idleMs = Number(process.env.SCALE_IDLE_MS ?? 20_000)
  const settleMs = Number(process.env.SCALE_SETTLE_MS ?? 15_000)
  const modes = (process.env.SCALE_MEMBERSHIP ?? 'swim').split(',').filter(m => m === 'swim' || m === 'flood')
  const rows: Cell[][] = []
  for (const size of sizes) for (const mode of modes) {
    const nodes: NodeProcess[] = []
    try {
      const args = ['--engine', 'none', '--membership', mode]
      const first = await startNode({ name: 'scale-0', args, timeoutMs: 120_000, built: true })
      nodes.push(first)
      const boot = `/ip4/127.0.0.1/tcp/${first.p2pPort}/p2p/${first.id}`
      for (let i = 1; i < size; i++) nodes.push(await startNode({ name: `scale-${i}`, args: [...args, '--bootstrap', boot], timeoutMs: 120_000, built: true }))
      const t0 = performance.now()
      let convergeS: number | null = null
      while (performance.now() - t0 < 180_000) {
        if (await allSeeAll(nodes)) { convergeS = (performance.now() - t0) / 1000; break }
        await sleep(500)
      }
      // Idle: nothing but membership runs, once the start-up work (first resource scans, greeting
      // snapshots, JIT warm-up) of the nodes that started last is over.
      await sleep(settleMs)
      const cpu0 = nodes.map(n => cpuMs(n.child.pid))
      const at0 = await Promise.all(nodes.map(counters))
      const w0 = performance.now()
      await sleep(idleMs)
      const window = performance.now() - w0
      const cpu = nodes.map((n, i) => (cpuMs(n.child.pid) - cpu0[i]) / window * 100)
      const at1 = await Promise.all(nodes.map(counters))
      const bytes = at1.map((c, i) => (c.bytes - at0[i].bytes) / (window / 1000))
      const failed = at1.map((c, i) => (c.failed - at0[i].failed) / (window / 60_000))
      const rss = nodes.map(n => rssMb(n.child.pid))
      const base = BASELINE[size]
      const row: Cell[] = [size, mode, round1(avg(cpu)), round1(base?.cpu ?? NaN), round1(avg(rss)), round1(base?.rssMb ?? NaN), Math.round(avg(bytes)), mode === 'swim' ? round1(avg(failed)) : null, round1(convergeS ?? NaN), base?.convergeS ?? null]
      rows.push(row)
      // Each row as it is measured: a run cut short (48 nodes on a small machine) keeps the others.
      console.error(`scale: ${row.join(' | ')}`)
    } finally {
      await Promise.all(nodes.map(async n => await stopNode(n, 'SIGKILL')))
    }
  }
  return {
    title: 'membership at scale: real nodes on loopback, --engine none',
    columns: ['nodes', 'membership', 'idle CPU %/node', 'baseline', 'RSS MB/node', 'baseline', 'gossip B/s in/node', 'failed probes/node/min', 'all-see-all s', 'baseline'],
    rows,
    notes: [
      `CPU: % of one core per node over the idle window (${idleMs / 1000} s, starting ${settleMs / 1000} s after all-see-all); RSS from /proc; bytes: membership gossip received.`,
      'failed probes: SWIM probes of the idle window that got no ack (each a suspicion, false: no node stopped); from /metrics.',
      'all-see-all: from the last node\'s ready line until every node lists every other alive, all nodes asked at once (/api/peers, every 0.5 s); — = not within 180 s.',
      'Baseline: issue 14\'s measurements before this work (one 2-core machine, loopback; 16 nodes: the lead\'s run before SWIM went live).',
      'Target: 48-node CPU and RSS per node ≤ 1.5× the 4-node ones; all-see-all at 48 ≤ 30 s.'
    ]
  }
}
