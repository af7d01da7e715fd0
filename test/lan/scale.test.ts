/**
 * Twelve real nodes, one per network namespace on a bridge this test creates, with SWIM
 * membership (`--membership swim`): they find each other by mDNS alone (no --bootstrap), every node sees the
 * other eleven alive, a kill -9 is dead on all eleven others within the 3 s target, and while the
 * mesh idles each node's SWIM work is per-node constant (a probe per interval, not a message per
 * peer per heartbeat as flooded heartbeats were).
 *
 * Times are measured from the root namespace by polling each observer's /api/peers (they
 * overstate the truth by up to one poll plus one request) and asserted only as upper bounds.
 * Speed and CPU at 4-48 nodes are measured by `npm run bench -- scale`, not here.
 */
import { after, before, describe, test } from 'node:test'
import assert from 'node:assert/strict'
import { MeshCluster, promSum } from './mesh-cluster.js'

const NODES = 12
const KILL_DEAD_MS = 3000
/** How long to keep watching past the target, so a miss is measured rather than cut off. */
const GRACE_MS = 7000
/** The live default probe interval (src/config/options.ts `swimProbeIntervalMs`). */
const PROBE_INTERVAL_MS = 500

function report (what: string, ms: number, targetMs?: number): void {
  console.log(`[lan] ${what}: ${Math.round(ms)} ms${targetMs != null ? ` (target ≤ ${targetMs} ms)` : ''}`)
}

describe(`${NODES} nodes on a namespace LAN with SWIM membership, discovery by mDNS only`, { timeout: 300_000 }, () => {
  let cluster: MeshCluster | undefined
  const c = (): MeshCluster => {
    if (cluster == null) throw new Error('the cluster did not start (see the before hook)')
    return cluster
  }
  const all = Array.from({ length: NODES }, (_, i) => i)

  before(async () => {
    const started = performance.now()
    // Twelve processes start at once on a small CI machine: give each time to load its modules.
    cluster = await MeshCluster.start({ nodes: NODES, startTimeoutMs: 120_000, extraArgs: ['--engine', 'none', '--membership', 'swim'] })
    report(`${NODES} nodes spawned → all printed ready`, performance.now() - started)
  })

  after(async () => {
    await cluster?.destroy()
  })

  test('every node sees all eleven others alive with a snapshot, found by mDNS alone', { timeout: 120_000 }, async () => {
    const t0 = Math.max(...c().nodes.map(n => n.readyAt))
    const ms = await c().waitForConverged(all, { t0, timeoutMs: 90_000, intervalMs: 250 })
    report(`last ready → all ${NODES} see all others alive`, ms)
    for (const o of all) {
      const peers = await c().peers(o)
      assert.equal(new Set(peers.filter(p => p.status === 'alive').map(p => p.id)).size, NODES - 1, `node ${o} lists ${NODES - 1} alive peers`)
    }
  })

  test('idle, each node sends SWIM frames at a per-node rate that does not grow with the mesh', { timeout: 60_000 }, async () => {
    const sent = async (i: number): Promise<number> => promSum(await c().metricsText(i), 'shepherd_swim_frames_total', { direction: 'sent' }) ?? NaN
    const before = await Promise.all(all.map(sent))
    const t0 = performance.now()
    await new Promise(resolve => setTimeout(resolve, 10_000))
    const after = await Promise.all(all.map(sent))
    const seconds = (performance.now() - t0) / 1000
    const rates = all.map(i => (after[i] - before[i]) / seconds)
    console.log(`[lan] SWIM frames sent per node per second, idle: ${rates.map(r => r.toFixed(1)).join(' ')}`)
    // A probe per interval, its ack to each probe received, now and then an indirect probe:
    // about 2 × (1000 / interval) frames/s whatever the size. Flooded heartbeats to 11 peers
    // would not show here; the bound is what SWIM's own design allows, with room for suspicion.
    const bound = 4 * (1000 / PROBE_INTERVAL_MS)
    for (const i of all) {
      assert.ok(Number.isFinite(rates[i]) && rates[i] > 0, `node ${i} sends SWIM frames (${rates[i]})`)
      assert.ok(rates[i] <= bound, `node ${i} sent ${rates[i].toFixed(1)} frames/s, bound ${bound}`)
    }
  })

  test(`kill -9 of one node: dead on all ${NODES - 1} others within ${KILL_DEAD_MS} ms, the rest stay alive`, { timeout: 60_000 }, async () => {
    const victim = NODES - 1
    const observers = all.filter(i => i !== victim)
    const t0 = performance.now()
    c().kill(victim, 'SIGKILL')
    const ms = await c().waitForStatus(observers, victim, 'dead', { t0, timeoutMs: KILL_DEAD_MS + GRACE_MS, intervalMs: 100 })
    report(`kill -9 → dead on all ${observers.length} others`, ms, KILL_DEAD_MS)
    assert.ok(ms <= KILL_DEAD_MS, `dead after ${Math.round(ms)} ms, target ${KILL_DEAD_MS} ms`)
    // Nobody else was taken for dead on the way (a false positive would be a flap of an honest node).
    for (const o of observers) {
      const peers = await c().peers(o)
      const others = peers.filter(p => p.id !== c().nodes[victim].peerId && p.id !== c().nodes[o].peerId)
      assert.deepEqual(others.filter(p => p.status !== 'alive').map(p => `${p.name}:${p.status}`), [], `node ${o} sees every other survivor alive`)
    }
  })
})
