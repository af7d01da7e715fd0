/**
 * Chaos on a LAN of 4 network namespaces (mDNS only) while chat completions stream through the
 * mesh: a deployment of the tiny model with 2 replicas, client loops streaming from several
 * nodes, and meanwhile kill -9 of a replica holder, a link that silently goes away, random
 * packet loss on a holder's link, kill -9 of the group leader; then everything heals.
 *
 * First, with no fault (5 s): a node that has the model file on disk but no replica (a copy the
 * test puts there and scans, as any node that once held a replica has) must send requests to the
 * loaded replicas, not load a third copy that the leader then unloads under running requests.
 *
 * Then the chaos. Asserted:
 * - every request ends, before its deadline, either completed (HTTP 200, SSE chunks then
 *   `[DONE]`) or with a proper error: an HTTP error status with the `{"error":{...}}` JSON body,
 *   or an SSE `data: {"error":{...}}` event closing the stream. A request that reaches its
 *   deadline hung; a reset connection, a truncated stream or a malformed body is broken;
 * - the mesh reconverges: every node sees the three others alive, and one leader is agreed;
 * - no acknowledged deployment (201) is lost: each is listed by every node with its replica
 *   count, one of them created while a node was cut off; the 2 replicas are loaded again;
 * - afterwards every node serves a request.
 *
 * Clients only enter through nodes that are up and on the LAN: before a node is disrupted it
 * stops taking new requests and the ones it carries finish. A client cannot tell a dead entry
 * node from a hung one, so that would measure the client's network, not the mesh; everything
 * else (which replica serves, over which link) is the mesh's to get right.
 */
import { copyFile, mkdir, mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, test } from 'node:test'
import assert from 'node:assert/strict'
import { setTimeout as sleep } from 'node:timers/promises'
import { createTinyModel } from '../support/tiny-model.js'
import { MeshCluster } from './mesh-cluster.js'
import { addPacketLoss, clearPacketLoss } from './packet-loss.js'
import { indexOf, TermWatch, waitForOneLeader } from './group-watch.js'

const NODES = 4
const MODEL = 'tiny-chat'
/** Created while a node is cut off; its file lives on node 3 only. */
const MODEL_B = 'tiny-chat-b'
const CLIENTS = 3
const REQUEST_DEADLINE_MS = 20_000
const LOSS_PERCENT = 20
const TOTAL_BUDGET_MS = 90_000
/** How long clients run with no fault at all. */
const STEADY_MS = 5000

type Kind = 'completed' | 'http_error' | 'sse_error' | 'broken' | 'hung'

interface Outcome {
  entry: number
  phase: string
  kind: Kind
  status: number | null
  /** Who served it (`x-shepherd-host`). */
  host: string | null
  detail: string
  /** When it started, ms after the run's t0, and how long it took. */
  at: number
  ms: number
}

function report (what: string, value: string | number): void {
  console.log(`[lan] ${what}: ${typeof value === 'number' ? `${Math.round(value)} ms` : value}`)
}

/** Whether a parsed body is the product's error shape. */
function isErrorBody (body: unknown): boolean {
  const e = (body as { error?: { message?: unknown, code?: unknown, type?: unknown } } | null)?.error
  return e != null && typeof e.message === 'string' && e.message !== '' && typeof e.type === 'string' && (typeof e.code === 'string' || e.code === null)
}

/**
 * One streamed chat completion through node `entry`, classified. Never throws; the deadline
 * aborts it (that is a hang).
 */
async function streamChat (url: string, entry: number, phase: string, t0: number): Promise<Outcome> {
  const started = performance.now()
  const ctrl = new AbortController()
  const timer = setTimeout(() => { ctrl.abort() }, REQUEST_DEADLINE_MS)
  const out = (kind: Kind, detail: string, status: number | null = null, host: string | null = null): Outcome =>
    ({ entry, phase, kind, status, host, detail, at: started - t0, ms: performance.now() - started })
  try {
    const res = await fetch(`${url}/v1/chat/completions`, {
      method: 'POST',
      signal: ctrl.signal,
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ model: MODEL, messages: [{ role: 'user', content: 'hello there' }], max_tokens: 8, temperature: 0, stream: true })
    })
    const host = res.headers.get('x-shepherd-host')
    const text = await res.text()
    if (!res.ok) {
      let body: unknown
      try { body = JSON.parse(text) } catch {}
      return isErrorBody(body)
        ? out('http_error', `${(body as { error: { code: string } }).error.code}`, res.status, host)
        : out('broken', `HTTP ${res.status} without an error body: ${text.slice(0, 200)}`, res.status, host)
    }
    if (!(res.headers.get('content-type') ?? '').startsWith('text/event-stream')) return out('broken', `HTTP 200 but content-type ${res.headers.get('content-type')}`, 200, host)
    let chunks = 0
    for (const block of text.split('\n\n')) {
      const data = block.split('\n').filter(l => l.startsWith('data:')).map(l => l.slice(5).trim()).join('\n')
      if (data === '') continue
      if (data === '[DONE]') {
        return chunks > 0 ? out('completed', `${chunks} chunks`, 200, host) : out('broken', '[DONE] without a chunk', 200, host)
      }
      let obj: unknown
      try { obj = JSON.parse(data) } catch { return out('broken', `unparsable SSE data: ${data.slice(0, 200)}`, 200, host) }
      if (isErrorBody(obj)) return out('sse_error', `${(obj as { error: { code: string } }).error.code}`, 200, host)
      chunks++
    }
    return out('broken', `stream ended after ${chunks} chunks without [DONE] or an error event`, 200, host)
  } catch (err) {
    if (ctrl.signal.aborted) return out('hung', `no end within ${REQUEST_DEADLINE_MS} ms`)
    const e = err as Error & { cause?: { code?: string, message?: string } }
    return out('broken', `${e.message}${e.cause != null ? ` (${e.cause.code ?? e.cause.message})` : ''}`)
  } finally {
    clearTimeout(timer)
  }
}

interface ApiDeployment {
  model: string
  replicas: number
  group: string
  status: { desired: number, actual: Array<{ nodeId: string, name: string, state: string }>, pending: string[], lastError: string | null, leader: string | null }
}

/**
 * Client loops streaming chat completions through the entry nodes in `entries`, with what the
 * replicas did alongside (printed when the loaded set changes).
 */
class Load {
  readonly entries: Set<number>
  readonly outcomes: Outcome[] = []
  phase = 'steady'
  private readonly inflight = new Map<number, number>()
  private stopped = false
  private readonly loops: Array<Promise<void>>

  constructor (private readonly cluster: MeshCluster, entries: number[], private readonly t0: number, deployments: (i: number) => Promise<ApiDeployment[]>) {
    this.entries = new Set(entries)
    this.loops = Array.from({ length: CLIENTS }, async (_, k) => { await this.client(k) })
    this.loops.push(this.timeline(deployments))
  }

  private async client (k: number): Promise<void> {
    let n = k
    while (!this.stopped) {
      const pool = [...this.entries]
      if (pool.length === 0) { await sleep(50); continue }
      const entry = pool[n++ % pool.length]
      this.inflight.set(entry, (this.inflight.get(entry) ?? 0) + 1)
      try {
        this.outcomes.push(await streamChat(this.cluster.nodes[entry].apiUrl, entry, this.phase, this.t0))
      } finally {
        this.inflight.set(entry, (this.inflight.get(entry) ?? 1) - 1)
      }
    }
  }

  private async timeline (deployments: (i: number) => Promise<ApiDeployment[]>): Promise<void> {
    let last = ''
    while (!this.stopped) {
      const observer = [...this.entries][0]
      const d = observer == null ? undefined : await deployments(observer).then(l => l.find(x => x.model === MODEL)).catch(() => undefined)
      if (d != null) {
        const now = d.status.actual.map(r => `${r.name}:${r.state}`).sort().join(' ')
        if (now !== last) report(`replicas of ${MODEL} at +${Math.round(performance.now() - this.t0)} ms (seen by lan-${observer})`, now === '' ? 'none' : now)
        last = now
      }
      await sleep(100)
    }
  }

  /** Takes node `i` out of the client pool and waits for the requests it carries to end. */
  async withdraw (i: number): Promise<void> {
    this.entries.delete(i)
    const start = performance.now()
    while ((this.inflight.get(i) ?? 0) > 0) {
      if (performance.now() - start > REQUEST_DEADLINE_MS + 2000) throw new Error(`requests through node ${i} did not end`)
      await sleep(20)
    }
  }

  restore (i: number): void {
    this.entries.add(i)
  }

  async stop (): Promise<void> {
    this.stopped = true
    await Promise.all(this.loops)
  }

  /** Prints a line per phase: how requests ended, which errors, the slowest. */
  summarize (): void {
    for (const p of [...new Set(this.outcomes.map(o => o.phase))]) {
      const of = this.outcomes.filter(o => o.phase === p)
      const kinds = (['completed', 'http_error', 'sse_error', 'broken', 'hung'] as Kind[]).map(k => `${k} ${of.filter(o => o.kind === k).length}`).join(', ')
      const codes = [...new Set(of.filter(o => o.kind.endsWith('error')).map(o => `${o.status} ${o.detail}`))].join('; ')
      const slowest = of.reduce((a, b) => b.ms > a.ms ? b : a)
      const host = slowest.host == null ? 'none' : `lan-${this.cluster.nodes.findIndex(n => n.peerId === slowest.host)}`
      report(`requests during '${p}'`, `${of.length}: ${kinds}${codes !== '' ? ` (errors: ${codes})` : ''}; slowest ${Math.round(slowest.ms)} ms (started +${Math.round(slowest.at)} ms via lan-${slowest.entry}, served by ${host})`)
    }
    const remote = this.outcomes.filter(o => o.host != null && o.host !== this.cluster.nodes[o.entry].peerId).length
    report('requests served by another node than the entry', `${remote} of ${this.outcomes.length}`)
  }

  of (kind: Kind): Outcome[] {
    return this.outcomes.filter(o => o.kind === kind)
  }
}

/** `load_model`/`unload_model` commands node `i` executed (its audit log). */
async function executed (cluster: MeshCluster, i: number): Promise<{ load: number, unload: number }> {
  const { commands } = await cluster.getJson<{ commands: Array<{ verdict: string, type?: string }> }>(i, '/api/commands?limit=1000', 3000)
  const done = commands.filter(e => e.verdict === 'completed')
  return { load: done.filter(e => e.type === 'load_model').length, unload: done.filter(e => e.type === 'unload_model').length }
}

describe('chaos on a LAN of 4 namespaces while chat completions stream through the mesh', { timeout: 240_000 }, () => {
  let cluster: MeshCluster | undefined
  let modelsRoot = ''
  const watch = new TermWatch()
  const all = Array.from({ length: NODES }, (_, i) => i)
  /** Deployments answered 201: none may be lost. */
  const acknowledged: Array<{ model: string, replicas: number }> = []
  const t0 = performance.now()

  const c = (): MeshCluster => {
    if (cluster == null) throw new Error('the cluster did not start (see the before hook)')
    return cluster
  }
  const post = async (i: number, body: unknown): Promise<{ status: number, body: any }> => {
    const res = await fetch(`${c().nodes[i].apiUrl}/api/deployments`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body), signal: AbortSignal.timeout(5000) })
    return { status: res.status, body: await res.json() }
  }
  const deployments = async (i: number): Promise<ApiDeployment[]> => (await c().getJson<{ deployments: ApiDeployment[] }>(i, '/api/deployments', 3000)).deployments
  const loaded = (d: ApiDeployment | undefined): string[] => d?.status.actual.filter(r => r.state === 'loaded').map(r => r.nodeId) ?? []
  const waitLoaded = async (model: string, count: number, observers: number[], timeoutMs: number, what: string): Promise<number> => {
    const start = performance.now()
    let last = ''
    while (performance.now() - start < timeoutMs) {
      const views = await Promise.all(observers.map(async i => await deployments(i).catch((err: Error) => err)))
      if (views.every(v => !(v instanceof Error) && loaded(v.find(d => d.model === model)).length === count)) return performance.now() - start
      last = views.map((v, k) => `node ${observers[k]}: ${v instanceof Error ? v.message : JSON.stringify(v.find(d => d.model === model)?.status ?? 'absent')}`).join('\n')
      await sleep(100)
    }
    throw new Error(`${what}: not within ${timeoutMs} ms\n${last}`)
  }
  const holders = async (observer: number): Promise<number[]> => loaded((await deployments(observer)).find(x => x.model === MODEL)).map(id => indexOf(c(), id))

  before(async () => {
    modelsRoot = await mkdtemp(join(tmpdir(), 'shepherd-chaos-models-'))
    const dirs: Record<number, string> = Object.fromEntries(all.map(i => [i, join(modelsRoot, `node-${i}`)]))
    await Promise.all(all.map(async i => { await mkdir(dirs[i], { recursive: true }) }))
    await createTinyModel(join(dirs[0], `${MODEL}.gguf`))
    await createTinyModel(join(dirs[3], `${MODEL_B}.gguf`), { seed: 2 })
    cluster = await MeshCluster.start({ nodes: NODES, modelsDirs: dirs, extraArgs: ['--threads', '1'] })
  })

  after(async () => {
    await cluster?.destroy()
    if (modelsRoot !== '') await rm(modelsRoot, { recursive: true, force: true })
  })

  test('steady state: a node with a spare copy of the file but no replica sends requests to the replicas; nothing churns', { timeout: 60_000 }, async () => {
    const lead = await waitForOneLeader(c(), all, { t0: Math.max(...c().nodes.map(n => n.readyAt)), timeoutMs: 15_000, what: 'one leader on start', watch })
    report('start: one leader agreed by all 4', lead.ms)
    // Node 0 holds the only file; ask another node, not necessarily the leader: the deployment is gossiped.
    await waitForModel(c(), 1, MODEL, 10_000)
    const created = await post(1, { model: MODEL, replicas: 2, group: 'default' })
    assert.equal(created.status, 201, JSON.stringify(created.body))
    acknowledged.push({ model: MODEL, replicas: 2 })
    report('deployment → 2 replicas loaded, as all 4 see it', await waitLoaded(MODEL, 2, all, 25_000, '2 replicas loaded'))

    // What any mesh soon looks like (after a re-placement, or an operator's copy): a node with the
    // file on disk that the leader did not pick. It must not grow a third replica on its own.
    const placed = (await holders(0)).sort()
    // Two nodes have no replica and at most one of them is node 0: the spare is the other one.
    const spare = all.find(i => !placed.includes(i) && i !== 0) as number
    await copyFile(join(c().nodes[0].modelsDir as string, `${MODEL}.gguf`), join(c().nodes[spare].modelsDir as string, `${MODEL}.gguf`))
    const scan = await fetch(`${c().nodes[spare].apiUrl}/api/commands`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ target: 'self', type: 'scan_models' }), signal: AbortSignal.timeout(10_000) })
    assert.equal(scan.status, 200, `scan_models on lan-${spare}: ${await scan.text()}`)
    report('steady', `replicas on ${placed.map(i => `lan-${i}`).join(' and ')}; lan-${spare} has the file on disk only`)

    const before = await Promise.all(all.map(async i => await executed(c(), i)))
    const load = new Load(c(), all, t0, deployments)
    await sleep(STEADY_MS)
    await load.stop()
    load.summarize()
    const after = await Promise.all(all.map(async i => await executed(c(), i)))
    const loads = all.reduce((s, i) => s + after[i].load - before[i].load, 0)
    const unloads = all.reduce((s, i) => s + after[i].unload - before[i].unload, 0)
    report(`steady ${STEADY_MS} ms: load_model / unload_model commands executed`, `${loads} / ${unloads}`)
    const spareId = c().nodes[spare].peerId
    const bad = [...load.of('hung'), ...load.of('broken')]
    assert.deepEqual(bad.map(o => `via lan-${o.entry}: ${o.kind} ${o.detail}`), [], 'every request completed or got a proper error')
    const unloaded = load.outcomes.filter(o => o.detail === 'model_unloaded')
    assert.deepEqual(unloaded.map(o => `via lan-${o.entry} at +${Math.round(o.at)} ms: ${o.kind} ${o.status ?? ''} ${o.detail}`), [], 'with no fault, no request is cut short by an unload')
    const servedBySpare = load.outcomes.filter(o => o.host === spareId)
    assert.equal(servedBySpare.length, 0, `lan-${spare} (file on disk, no replica) served ${servedBySpare.length} requests itself instead of sending them to a loaded replica`)
    assert.equal(unloads, 0, 'with no fault, the leader unloads no replica')
    assert.deepEqual((await holders(0)).sort(), placed, 'the replicas are where the leader placed them')
    for (const i of all) assert.ok(load.outcomes.some(o => o.entry === i && o.kind === 'completed'), `a request through lan-${i} completed`)
  })

  test('chaos: every request completes or fails properly, the mesh reconverges, no deployment is lost', { timeout: 100_000 }, async () => {
    const tChaos = performance.now()
    const load = new Load(c(), all, t0, deployments)
    try {
      await sleep(1000)

      // 1. kill -9 of a replica holder (preferably not node 0, the file's origin), then its restart.
      load.phase = 'kill -9 holder'
      const h = (await holders(0)).find(i => i !== 0) ?? (await holders(0))[0]
      await load.withdraw(h)
      c().kill(h, 'SIGKILL')
      report(`chaos: kill -9 of replica holder lan-${h}`, performance.now() - tChaos)
      await sleep(4000)
      await c().startNode(h)
      load.restore(h)

      // 2. A holder's link silently goes away for longer than the dead timeout; a deployment is created meanwhile.
      load.phase = 'link down'
      const cut = (await holders(3)).find(i => i !== h && i !== 3) ?? all.find(i => i !== h && i !== 3) as number
      await load.withdraw(cut)
      await c().lan.linkDown(cut)
      report(`chaos: link down on lan-${cut}`, performance.now() - tChaos)
      await sleep(2000)
      const createdB = await post(3, { model: MODEL_B, replicas: 1, group: 'default' })
      assert.equal(createdB.status, 201, `a deployment while lan-${cut} is cut off: ${JSON.stringify(createdB.body)}`)
      acknowledged.push({ model: MODEL_B, replicas: 1 })
      await sleep(4500)
      await c().lan.linkUp(cut)
      load.restore(cut)

      // 3. Random loss on a holder's link while requests flow through it.
      load.phase = `${LOSS_PERCENT}% loss`
      const lossy = (await holders(3))[0] ?? 1
      await load.withdraw(lossy)
      const mechanism = await addPacketLoss(c().lan, lossy, LOSS_PERCENT)
      report(`chaos: ${LOSS_PERCENT}% packet loss on lan-${lossy} (${mechanism})`, performance.now() - tChaos)
      await sleep(7000)
      await clearPacketLoss(c().lan, lossy)
      load.restore(lossy)

      // 4. kill -9 of the leader.
      load.phase = 'kill -9 leader'
      const observer = [...load.entries][0]
      const g = await c().getJson<{ leader: string | null }>(observer, '/api/groups/default')
      assert.ok(g.leader != null, `lan-${observer} knows a leader`)
      const leader = indexOf(c(), g.leader)
      await load.withdraw(leader)
      c().kill(leader, 'SIGKILL')
      report(`chaos: kill -9 of leader lan-${leader}`, performance.now() - tChaos)
      await sleep(3000)

      // 5. Heal: every node back.
      load.phase = 'heal'
      await c().startNode(leader)
      load.restore(leader)
      const tHeal = performance.now()
      report('chaos: everything healed', tHeal - tChaos)
      report('heal → every node sees all others alive', await c().waitForConverged(all, { t0: tHeal, timeoutMs: 15_000 }))
      const one = await waitForOneLeader(c(), all, { t0: tHeal, timeoutMs: 10_000, what: 'one leader after the chaos', watch })
      report(`heal → one leader (lan-${indexOf(c(), one.leader)}, term ${one.term}) agreed by all 4`, one.ms)
      report('heal → 2 replicas loaded again, as all 4 see it', await waitLoaded(MODEL, 2, all, 20_000, `2 replicas of ${MODEL} after the chaos`))
      await sleep(1500)
    } finally {
      await load.stop()
    }

    // No acknowledged deployment lost: every node lists each one with its replica count.
    for (const i of all) {
      const list = await deployments(i)
      for (const ack of acknowledged) {
        const d = list.find(x => x.model === ack.model)
        assert.ok(d != null, `node ${i} lists the acknowledged deployment ${ack.model}: ${JSON.stringify(list.map(x => x.model))}`)
        assert.equal(d.replicas, ack.replicas, `node ${i}: ${ack.model} keeps its replica count`)
      }
    }
    report(`heal → ${MODEL_B} (created during the cut) has its replica loaded`, await waitLoaded(MODEL_B, 1, all, 20_000, `1 replica of ${MODEL_B}`))

    // Every request ended, properly.
    load.summarize()
    const bad = [...load.of('hung'), ...load.of('broken')]
    assert.deepEqual(bad.map(o => `node ${o.entry} during '${o.phase}' after ${Math.round(o.ms)} ms: ${o.kind}: ${o.detail}`), [], 'every request completed or got a proper error')
    assert.ok(load.of('completed').length >= load.outcomes.length / 2, `most requests complete: ${load.of('completed').length} of ${load.outcomes.length}`)
    assert.deepEqual(watch.violations, [], 'terms only grow')

    // Afterwards every node serves (3 tries each: one unlucky request is not the point here).
    for (const i of all) {
      const tries: Outcome[] = []
      while (tries.length < 3 && tries.at(-1)?.kind !== 'completed') tries.push(await streamChat(c().nodes[i].apiUrl, i, 'after', t0))
      assert.equal(tries.at(-1)?.kind, 'completed', `node ${i} serves after the chaos: ${tries.map(o => `${o.kind} ${o.status ?? ''} ${o.detail}`).join('; ')}`)
    }
    const total = performance.now() - tChaos
    report('chaos run, first fault → all checks done', total)
    assert.ok(total < TOTAL_BUDGET_MS, `the chaos run took ${Math.round(total)} ms, budget ${TOTAL_BUDGET_MS} ms`)
  })
})

/** Waits until node `i` knows `model` (from its own disk or a peer's snapshot). */
async function waitForModel (cluster: MeshCluster, i: number, model: string, timeoutMs: number): Promise<void> {
  const start = performance.now()
  while (performance.now() - start < timeoutMs) {
    const body = await cluster.getJson<{ data: Array<{ id: string }> }>(i, '/v1/models').catch(() => ({ data: [] }))
    if (body.data.some(m => m.id === model)) return
    await sleep(100)
  }
  throw new Error(`node ${i} does not know ${model} after ${timeoutMs} ms`)
}
