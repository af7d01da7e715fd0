/**
 * Load through one entry node: N concurrent streaming clients (16, then 64) send chat requests
 * to an entry node that hosts nothing (`--engine none`); two other nodes host the same models,
 * so every request is routed over the mesh to one of two replicas:
 * - the tiny GGUF model (embedded engine, 1 thread each), deployed with 2 replicas,
 * - the upstream stand-in (one per host, 20 ms before answering, 5 ms between chunks).
 *
 * Per backend and client count: a warm-up, then two equal rounds. Each round reports
 * throughput (requests/s, completion tokens/s), latency and time to first token, errors by
 * status, how the requests split between the two hosts (`x-shepherd-host`), and each node's RSS
 * and V8 heap afterwards (from /metrics). RSS and heap growth from round 1 to round 2, with the
 * same work done, should be about zero: anything steady is a leak.
 */
import fs from 'node:fs/promises'
import { cpus, loadavg } from 'node:os'
import path from 'node:path'
import { getJson, startNode, stopNode, tempDir, waitFor, type NodeProcess } from '../test/support/cluster.js'
import { createTinyModel } from '../test/support/tiny-model.js'
import { UpstreamStandin } from '../test/support/upstream-standin.js'
import { closedLoop } from './closed-loop.js'
import { KeepAliveClient } from './keep-alive-client.js'
import { round, summarize } from './latency-stats.js'
import { describeTally, MeshWatch } from './mesh-watch.js'
import type { BenchTable, Cell } from './table.js'

const TINY_MODEL = 'tiny-chat'
const STANDIN_MODEL = 'standin-chat'
const CLIENTS = [16, 64]
const WARMUP_MS = 2000
const ROUND_MS = 5000
const MAX_TOKENS = 16
const STANDIN_LATENCY_MS = 20
const STANDIN_CHUNK_MS = 5
/**
 * Heap growth (after a full GC) from round 1 to round 2 above this, on any node, is reported as
 * a possible leak. RSS is reported too, but it moves by several MB either way with the allocator
 * and V8 returning pages or not, so it is not what the verdict rests on.
 */
const HEAP_LEAK_TOLERANCE_MB = 2
const MB = 1024 * 1024
/** Nodes in the order they are started and reported. */
const NODE_NAMES = ['entry', 'B', 'C']
/**
 * Node processes get `gc()` and run it on SIGUSR2, so memory is read after a full collection:
 * without one, heap and RSS follow when V8 last chose to collect, not what is still held.
 */
const GC_ON_SIGNAL = { NODE_OPTIONS: "--expose-gc --import=data:text/javascript,process.on('SIGUSR2',()=>globalThis.gc())" }
const GC_SETTLE_MS = 500
/** A client waits this long after a failed request before its next one. */
const ERROR_BACKOFF_MS = 100

interface Outcome {
  /** 200 with a complete stream, or what went wrong: an HTTP status, `stream` (an error event), `conn`. */
  result: 'ok' | string
  host?: string
  ms: number
  ttft: number
  tokens: number
  /** For a failure: the error body, error event or exception it came with. */
  detail?: string
}

interface Memory { rss: number, heap: number }

/** One gauge's value from a node's Prometheus text. */
function gauge (text: string, name: string): number {
  const line = text.split('\n').find(l => l.startsWith(`${name} `))
  return line === undefined ? NaN : Number(line.slice(name.length + 1))
}

async function memoryOf (node: NodeProcess): Promise<Memory> {
  node.child.kill('SIGUSR2')
  await new Promise(resolve => setTimeout(resolve, GC_SETTLE_MS))
  const res = await fetch(`${node.api}/metrics`, { signal: AbortSignal.timeout(5000) })
  const text = await res.text()
  return { rss: gauge(text, 'process_resident_memory_bytes') / MB, heap: gauge(text, 'nodejs_heap_used_bytes') / MB }
}

async function streamOnce (client: KeepAliveClient, url: string, body: unknown): Promise<Outcome> {
  let answer
  try {
    answer = await client.stream(url, body)
  } catch (err) {
    return { result: 'conn', ms: NaN, ttft: NaN, tokens: 0, detail: (err as Error).message }
  }
  const base = { host: answer.host, ms: answer.ms }
  if (answer.status !== 200) return { ...base, result: String(answer.status), ttft: NaN, tokens: 0, detail: answer.errorBody }
  let ttft = NaN
  let tokens = 0
  let failed: string | undefined
  let done = false
  for (const e of answer.events) {
    if (e.data === '[DONE]') { done = true; continue }
    // Parse only what is needed, so the client stays cheap at 64 streams.
    if (Number.isNaN(ttft) && /"content":"[^"]/.test(e.data)) ttft = e.at
    if (e.data.includes('"usage":{')) tokens = (JSON.parse(e.data) as { usage: { completion_tokens: number } }).usage.completion_tokens
    if (e.data.startsWith('{"error"')) failed = e.data
  }
  if (failed !== undefined || !done) return { ...base, result: 'stream', ttft, tokens, detail: failed ?? 'the stream ended without [DONE]' }
  return { ...base, result: 'ok', ttft, tokens }
}

export async function run (): Promise<BenchTable> {
  const load0 = loadavg()[0]
  const standins = await Promise.all([0, 1].map(async () => await UpstreamStandin.start({ latencyMs: STANDIN_LATENCY_MS, chunkDelayMs: STANDIN_CHUNK_MS })))
  const modelDirs = await Promise.all([0, 1].map(async () => await tempDir('shepherd-bench-models-')))
  // The same file on both hosts (same seed, so the same fingerprint): replicas.
  await Promise.all(modelDirs.map(async d => await createTinyModel(path.join(d, `${TINY_MODEL}.gguf`))))
  const nodes: NodeProcess[] = []
  let watch: MeshWatch | undefined
  try {
    const entry = await startNode({ name: 'load-entry', args: ['--engine', 'none'], env: GC_ON_SIGNAL })
    nodes.push(entry)
    const hosts = await Promise.all([0, 1].map(async i => await startNode({
      name: `load-host-${'bc'[i]}`,
      env: GC_ON_SIGNAL,
      args: ['--bootstrap', `/ip4/127.0.0.1/tcp/${entry.p2pPort}`, '--models-dir', modelDirs[i], '--threads', '1', '--keep-alive-ms', '600000', '--upstream', standins[i].url]
    })))
    nodes.push(...hosts)
    const [b, c] = hosts
    await waitFor('the entry node to see two replicas of each model', async () => {
      const { models } = await getJson<{ models: Array<{ name: string, hosts: unknown[] }> }>(`${entry.api}/api/models`)
      return [TINY_MODEL, STANDIN_MODEL].every(name => models.find(m => m.name === name)?.hosts.length === 2)
    }, 20_000)
    const hostName = new Map([[b.id, 'B'], [c.id, 'C']])
    const url = `${entry.api}/v1/chat/completions`
    const backends = [
      { label: `tiny model, ${MAX_TOKENS} tokens`, body: { model: TINY_MODEL, messages: [{ role: 'user', content: 'Tell me a story' }], temperature: 0, seed: 3, max_tokens: MAX_TOKENS, stream: true, stream_options: { include_usage: true } } },
      {
        label: `stand-in ${STANDIN_LATENCY_MS} ms + ${STANDIN_CHUNK_MS} ms/chunk`,
        body: { model: STANDIN_MODEL, messages: [{ role: 'user', content: Array.from({ length: MAX_TOKENS }, (_, i) => `word${i}`).join(' ') }], max_tokens: MAX_TOKENS, stream: true, stream_options: { include_usage: true } }
      }
    ]

    // Two replicas of the tiny model, loaded before anything is measured, the way a user asks for
    // them: a deployment. (Requests alone would load only one copy: a loaded replica is preferred
    // to loading another.) A first load takes seconds, and this bench is about serving.
    const deployed = await fetch(`${entry.api}/api/deployments`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ model: TINY_MODEL, replicas: 2 })
    })
    if (deployed.status !== 201) throw new Error(`deployment of ${TINY_MODEL} refused: ${deployed.status} ${await deployed.text()}`)
    await waitFor('the entry node to see both replicas loaded and in rotation', async () => {
      const { models, breakers } = await getJson<{ models: Array<{ name: string, hosts: Array<{ state: string }> }>, breakers: Record<string, { open: boolean }> }>(`${entry.api}/api/models`)
      const replicas = models.find(m => m.name === TINY_MODEL)?.hosts ?? []
      return replicas.length === 2 && replicas.every(h => h.state === 'loaded') && hosts.every(h => breakers[h.id]?.open !== true)
    }, 30_000)

    const memory = async (): Promise<Memory[]> => await Promise.all(nodes.map(memoryOf))
    let current = backends[0].body.model
    watch = new MeshWatch(entry.api, () => current, hostName)
    const startMemory = await memory()
    const rows: Cell[][] = []
    const notes: string[] = []
    const leaks: string[] = []
    const rssMoves: number[] = []
    /** The first failure of each kind per round, with what it said. */
    const problems: string[] = []
    let roundsRun = 0
    for (const backend of backends) {
      current = backend.body.model
      for (const clients of CLIENTS) {
        const client = new KeepAliveClient(clients)
        const request = async (): Promise<Outcome> => {
          const outcome = await streamOnce(client, url, backend.body)
          // A real client backs off after an error; without it a fast-failing entry is hammered by a
          // tight loop of instant errors, which measures the loop, not the mesh.
          if (outcome.result !== 'ok') await new Promise(resolve => setTimeout(resolve, ERROR_BACKOFF_MS))
          return outcome
        }
        await closedLoop(clients, WARMUP_MS, request)
        const warm = await memory()
        let previous = warm
        for (const roundNo of [1, 2]) {
          watch.take()
          const { results, elapsedMs } = await closedLoop(clients, ROUND_MS, request)
          roundsRun++
          const seen = describeTally(watch.take())
          const mem = await memory()
          const ok = results.filter(r => r.result === 'ok')
          const lat = summarize(ok.map(r => r.ms))
          const ttft = summarize(ok.map(r => r.ttft).filter(Number.isFinite))
          const tokens = ok.reduce((s, r) => s + r.tokens, 0)
          const errors = new Map<string, number>()
          for (const r of results) {
            if (r.result === 'ok') continue
            if (!errors.has(r.result)) problems.push(`${backend.label}, ${clients} clients, round ${roundNo}, first ${r.result}: ${(r.detail ?? '').slice(0, 200)}`)
            errors.set(r.result, (errors.get(r.result) ?? 0) + 1)
          }
          const byHost = new Map<string, number>()
          for (const r of ok) {
            const name = hostName.get(r.host ?? '') ?? '?'
            byHost.set(name, (byHost.get(name) ?? 0) + 1)
          }
          const share = (name: string): string => `${Math.round(100 * (byHost.get(name) ?? 0) / Math.max(1, ok.length))}%`
          const growth = mem.map((m, i) => m.rss - previous[i].rss)
          if (roundNo === 2) {
            const grew = mem.map((m, i) => m.heap - previous[i].heap > HEAP_LEAK_TOLERANCE_MB ? `${NODE_NAMES[i]} heap +${(m.heap - previous[i].heap).toFixed(1)} MB` : '').filter(x => x !== '')
            if (grew.length > 0) leaks.push(`${backend.label}, ${clients} clients: ${grew.join(', ')}`)
            rssMoves.push(...growth.map(Math.abs))
          }
          rows.push([
            backend.label,
            clients,
            roundNo,
            ok.length,
            round(ok.length / (elapsedMs / 1000), 0),
            round(tokens / (elapsedMs / 1000), 0),
            round(lat.p50, 0),
            round(lat.p99, 0),
            round(ttft.p99, 0),
            errors.size === 0 ? '0' : [...errors].map(([k, n]) => `${k}×${n}`).join(' '),
            `${share('B')} / ${share('C')}${byHost.has('?') ? ` / ?${share('?')}` : ''}`,
            mem.map(m => m.rss.toFixed(0)).join(' / '),
            growth.map(g => `${g >= 0 ? '+' : ''}${g.toFixed(1)}`).join(' / '),
            mem.map(m => m.heap.toFixed(0)).join(' / '),
            seen
          ])
          previous = mem
        }
        client.close()
      }
    }
    const endMemory = await memory()
    notes.push(
      `Loopback: one entry node (--engine none) routing to hosts B and C (each: the tiny model, --threads 1, a replica of a 2-replica deployment; and its own upstream stand-in); closed loop, ${ROUND_MS / 1000} s per round after a ${WARMUP_MS / 1000} s warm-up;`,
      `every request streams (${MAX_TOKENS} completion tokens, usage included). Latency = until the last byte; TTFT = until the first content chunk. ms throughout.`,
      `errors: by HTTP status, \`stream\` (an error event or no [DONE]), \`conn\` (connection failed); a client waits ${ERROR_BACKOFF_MS} ms after one.`,
      'RSS / heap are entry / B / C in MB after the round and a forced full GC (from /metrics); Δ RSS is against the round before (round 1: against the end of the warm-up).',
      'mesh: what the entry saw during the round: peer transitions, and replicas missing from its routing table, with their breaker open, or not loaded (polled every 250 ms).',
      `RSS at start → end: ${startMemory.map((m, i) => `${NODE_NAMES[i]} ${m.rss.toFixed(0)} → ${endMemory[i].rss.toFixed(0)} MB`).join(', ')} (start: models loaded, before the first warm-up).`,
      leaks.length === 0
        ? `No leak seen: from round 1 to round 2 the heap after a full GC grew by at most ${HEAP_LEAK_TOLERANCE_MB} MB on every node, in all ${roundsRun / 2} pairs of rounds; RSS moved by at most ${Math.max(...rssMoves).toFixed(1)} MB either way.`
        : `Heap after a full GC grew by more than ${HEAP_LEAK_TOLERANCE_MB} MB from round 1 to round 2: ${leaks.join('; ')}.`,
      ...problems,
      `Machine: ${cpus().length} cores shared by the client, three nodes and the stand-ins, and with other work (load average ${load0.toFixed(1)} at start, ${loadavg()[0].toFixed(1)} at end): throughput is bounded by CPU here, not by the mesh design.`
    )
    return {
      title: 'Load through one entry node to two replicas (streaming)',
      columns: ['backend', 'clients', 'round', 'ok', 'req/s', 'tok/s', 'p50 ms', 'p99 ms', 'TTFT p99', 'errors', 'B / C', 'RSS MB', 'Δ RSS MB', 'heap MB', 'mesh'],
      rows,
      notes
    }
  } finally {
    watch?.close()
    await Promise.all(nodes.map(async n => await stopNode(n, 'SIGKILL')))
    await Promise.all(standins.map(async s => await s.close()))
    await Promise.all([...modelDirs, ...nodes.map(n => n.dataDir)].map(async d => await fs.rm(d, { recursive: true, force: true })))
  }
}
