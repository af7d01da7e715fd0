/**
 * Swarm-group leadership and replica placement on a real (namespace) LAN, at 3 and 5 nodes,
 * mDNS discovery only, default election timings:
 * - start: last ready → one leader agreed by all;
 * - replica re-placement: a deployment of the tiny model with 2 replicas, kill -9 of a holder
 *   (not the leader), until every survivor sees 2 replicas loaded again, counted from the kill
 *   and from the moment the leader saw the holder dead;
 * - leader failover: kill -9 of the leader → a new leader (higher term) agreed by all survivors;
 * - partition: the leader and ⌊n/2⌋-1 others cut off on a second bridge (`test/lan/partition.ts`)
 *   → the other side agrees on a leader of its own; heal → one leader agreed by all.
 * Needs root and iproute2 (see test/support/netns.ts) and a built node (`npm run build`).
 */
import { mkdir, mkdtemp, rm } from 'node:fs/promises'
import { cpus, loadavg, tmpdir } from 'node:os'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { MeshCluster } from '../test/lan/mesh-cluster.js'
import { LanPartitioner } from '../test/lan/partition.js'
import { indexOf, TermWatch, waitForOneLeader } from '../test/lan/group-watch.js'
import { createTinyModel } from '../test/support/tiny-model.js'
import type { BenchTable, Cell } from './table.js'

const SIZES = [3, 5]
const MODEL = 'tiny-chat'
const FAILOVER_TARGET_MS = 3000
const HEAL_TARGET_MS = 5000
const REPLACE_TARGET_MS = 5000
/** How long past a target a wait keeps going, so a miss is measured rather than cut off. */
const GRACE_MS = 6000
const INTERVAL_MS = 50

interface Timed { ms: number | null, error?: string }

async function timed (fn: () => Promise<number>): Promise<Timed> {
  try {
    return { ms: await fn() }
  } catch (err) {
    return { ms: null, error: (err as Error).message.split('\n').slice(0, 3).join(' | ') }
  }
}

interface ApiDeployment {
  model: string
  status: { actual: Array<{ nodeId: string, state: string }> }
}

interface SizeResult {
  nodes: number
  elect: Timed
  replaceFromKill: Timed
  replaceFromDetection: Timed
  failover: Timed
  partitionElect: Timed
  heal: Timed
  notes: string[]
}

async function loadedOn (cluster: MeshCluster, observer: number): Promise<string[]> {
  const { deployments } = await cluster.getJson<{ deployments: ApiDeployment[] }>(observer, '/api/deployments', 3000)
  return deployments.find(d => d.model === MODEL)?.status.actual.filter(r => r.state === 'loaded').map(r => r.nodeId) ?? []
}

/** Polls `check` until it holds; ms after `t0`. Throws after `timeoutMs`, quoting `describe()`. */
async function until (t0: number, timeoutMs: number, what: string, check: () => Promise<boolean>, describe: () => string = () => ''): Promise<number> {
  while (performance.now() - t0 < timeoutMs) {
    if (await check().catch(() => false)) return performance.now() - t0
    await sleep(INTERVAL_MS)
  }
  throw new Error(`${what}: not within ${timeoutMs} ms ${describe()}`)
}

async function measure (n: number): Promise<SizeResult> {
  const notes: string[] = []
  const all = Array.from({ length: n }, (_, i) => i)
  const watch = new TermWatch()
  const modelsRoot = await mkdtemp(join(tmpdir(), 'shepherd-bench-groups-'))
  const dirs: Record<number, string> = Object.fromEntries(all.map(i => [i, join(modelsRoot, `node-${i}`)]))
  await Promise.all(all.map(async i => { await mkdir(dirs[i], { recursive: true }) }))
  await createTinyModel(join(dirs[0], `${MODEL}.gguf`))
  const cluster = await MeshCluster.start({ nodes: n, modelsDirs: dirs, startTimeoutMs: 45_000, extraArgs: ['--threads', '1'] })
  let partitioner: LanPartitioner | undefined
  const result: SizeResult = { nodes: n, elect: { ms: null }, replaceFromKill: { ms: null }, replaceFromDetection: { ms: null }, failover: { ms: null }, partitionElect: { ms: null }, heal: { ms: null }, notes }
  const fail = (what: string, t: Timed): void => { if (t.error != null) notes.push(`${n} nodes, ${what}: ${t.error}`) }
  try {
    const lastReady = Math.max(...cluster.nodes.map(x => x.readyAt))
    let leader = ''
    result.elect = await timed(async () => {
      const a = await waitForOneLeader(cluster, all, { t0: lastReady, timeoutMs: 20_000, what: 'one leader on start', watch })
      leader = a.leader
      return a.ms
    })
    fail('election on start', result.elect)
    if (leader === '') return result

    // Re-placement after the loss of a replica holder.
    const res = await fetch(`${cluster.nodes[1].apiUrl}/api/deployments`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ model: MODEL, replicas: 2, group: 'default' }),
      signal: AbortSignal.timeout(5000)
    })
    if (res.status !== 201) notes.push(`${n} nodes: POST /api/deployments answered ${res.status}: ${await res.text()}`)
    const leaderIdx = indexOf(cluster, leader)
    const placed = await timed(async () => await until(performance.now(), 30_000, '2 replicas loaded', async () => (await loadedOn(cluster, leaderIdx)).length === 2))
    fail('initial placement', placed)
    if (placed.ms != null) {
      const holders = (await loadedOn(cluster, leaderIdx)).map(id => indexOf(cluster, id))
      // Two replicas are on two nodes, so one of them is not the leader.
      const victim = holders.find(i => i !== leaderIdx) ?? holders[0]
      const survivors = all.filter(i => i !== victim)
      const victimId = cluster.nodes[victim].peerId
      const tKill = performance.now()
      cluster.kill(victim, 'SIGKILL')
      let detectedAt: number | null = null
      const detection = (async () => {
        detectedAt = await until(tKill, 10_000, 'holder dead on the leader', async () => (await cluster.peers(leaderIdx)).some(p => p.id === victimId && p.status === 'dead')).catch(() => null)
      })()
      result.replaceFromKill = await timed(async () => await until(tKill, REPLACE_TARGET_MS + GRACE_MS + 5000, '2 replicas loaded again on every survivor', async () => {
        const views = await Promise.all(survivors.map(async i => await loadedOn(cluster, i)))
        return views.every(v => v.length === 2 && !v.includes(victimId))
      }))
      await detection
      fail('re-placement', result.replaceFromKill)
      if (result.replaceFromKill.ms != null && detectedAt != null) result.replaceFromDetection = { ms: result.replaceFromKill.ms - detectedAt }
      if (detectedAt != null) notes.push(`${n} nodes: the leader saw the killed holder dead ${Math.round(detectedAt)} ms after kill -9`)
      await cluster.startNode(victim)
      await waitForOneLeader(cluster, all, { t0: performance.now(), timeoutMs: 15_000, what: 'the restarted holder rejoins', watch }).catch((err: Error) => { notes.push(`${n} nodes: ${err.message.split('\n')[0]}`) })
    }

    // Leader failover.
    const before = await waitForOneLeader(cluster, all, { t0: performance.now(), timeoutMs: 10_000, what: 'one leader before the failover', watch })
    const oldLeader = indexOf(cluster, before.leader)
    const tKill = performance.now()
    cluster.kill(oldLeader, 'SIGKILL')
    result.failover = await timed(async () => (await waitForOneLeader(cluster, all.filter(i => i !== oldLeader), {
      t0: tKill,
      timeoutMs: FAILOVER_TARGET_MS + GRACE_MS,
      what: 'a new leader agreed by the survivors',
      watch,
      intervalMs: INTERVAL_MS,
      accept: a => a.leader !== before.leader && a.term > before.term
    })).ms)
    fail('failover', result.failover)
    await cluster.startNode(oldLeader)

    // Partition and heal.
    const current = await waitForOneLeader(cluster, all, { t0: performance.now(), timeoutMs: 15_000, what: 'one leader before the partition', watch })
    const cur = indexOf(cluster, current.leader)
    const sideB = [cur, ...all.filter(i => i !== cur).slice(0, Math.floor(n / 2) - 1)]
    const sideA = all.filter(i => !sideB.includes(i))
    partitioner = await LanPartitioner.create(cluster.lan)
    const tSplit = performance.now()
    await partitioner.split(sideB)
    result.partitionElect = await timed(async () => (await waitForOneLeader(cluster, sideA, {
      t0: tSplit, timeoutMs: 15_000, what: 'the side without the leader elects one', watch, accept: a => a.term > current.term
    })).ms)
    fail('partition', result.partitionElect)
    await waitForOneLeader(cluster, sideB, { t0: tSplit, timeoutMs: 15_000, what: 'the leader\'s side sees the others gone', watch })
      .catch((err: Error) => { notes.push(`${n} nodes: ${err.message.split('\n')[0]}`) })
    const tHeal = performance.now()
    await partitioner.heal()
    result.heal = await timed(async () => (await waitForOneLeader(cluster, all, {
      t0: tHeal, timeoutMs: HEAL_TARGET_MS + GRACE_MS, what: 'one leader after the heal', watch
    })).ms)
    fail('heal', result.heal)
    if (watch.violations.length > 0) notes.push(`${n} nodes: terms went down: ${watch.violations.join('; ')}`)
    return result
  } finally {
    await partitioner?.destroy()
    await cluster.destroy()
    await rm(modelsRoot, { recursive: true, force: true }).catch(() => {})
  }
}

const ms = (t: Timed): Cell => t.ms == null ? 'timeout' : Math.round(t.ms)
const met = (t: Timed, target: number): Cell => t.ms == null ? 'no' : t.ms <= target ? 'yes' : 'no'

export async function run (): Promise<BenchTable> {
  const load = loadavg().map(x => x.toFixed(1)).join(' ')
  const results: SizeResult[] = []
  for (const n of SIZES) results.push(await measure(n))
  const rows: Cell[][] = []
  for (const r of results) {
    rows.push(
      ['last ready → one leader agreed by all (ms)', r.nodes, ms(r.elect), null, null],
      ['kill -9 leader → new leader agreed by all survivors (ms)', r.nodes, ms(r.failover), `≤ ${FAILOVER_TARGET_MS}`, met(r.failover, FAILOVER_TARGET_MS)],
      ['partition → leaderless side agrees on its own leader (ms)', r.nodes, ms(r.partitionElect), null, null],
      ['partition heal → one leader agreed by all (ms)', r.nodes, ms(r.heal), `≤ ${HEAL_TARGET_MS}`, met(r.heal, HEAL_TARGET_MS)],
      ['kill -9 holder → 2 replicas loaded again (ms)', r.nodes, ms(r.replaceFromKill), null, null],
      ['holder seen dead by leader → 2 replicas loaded again (ms)', r.nodes, ms(r.replaceFromDetection), `≤ ${REPLACE_TARGET_MS}`, met(r.replaceFromDetection, REPLACE_TARGET_MS)]
    )
  }
  return {
    title: 'Swarm groups on a namespace LAN (mDNS discovery, default election timings: settle 500 ms, backoff 300 ms/rank, grace 1.5 s)',
    columns: ['Metric', 'Nodes', 'Value', 'Target', 'Met'],
    rows,
    notes: [
      `Times are polled from the root namespace every ${INTERVAL_MS} ms (GET /api/groups/default, /api/deployments, /api/peers), so they`,
      'overstate the truth by up to one interval plus one request. "Agreed by all" waits for the slowest node and for each',
      'node to list exactly its side as alive members.',
      'Re-placement: deployment of the tiny model (test/support/tiny-model.ts), 2 replicas, file on node 0 only; the killed',
      'holder is not the leader; done when every survivor shows 2 loaded replicas, none on the killed node.',
      'Partition: the leader and ⌊n/2⌋-1 others are moved to a second bridge (3 nodes: 1|2; 5 nodes: 2|3); the side without',
      'the leader elects one after it sees the others dead; after the heal the higher term wins.',
      `Machine: ${cpus().length} CPUs, load average ${load} at start (every node and the poller share these CPUs).`,
      ...results.flatMap(r => r.notes)
    ]
  }
}
