/**
 * What routing costs: the same requests answered (a) by the engine called in-process, (b) by the
 * API of the node that has the engine, and (c) by another node's API, relayed over the mesh
 * (`/shepherd/openai/1.0.0`). Two backends: the upstream stand-in (an OpenAI-compatible server,
 * 0 ms latency) and the tiny GGUF model (embedded engine, 1 thread, temperature 0).
 *
 * - Non-streaming: closed loop at concurrency 1 and 8; p50/p99 latency and requests/s.
 * - Streaming: time to first token, inter-chunk gap, and, with an upstream that stamps each chunk
 *   with its emission time (bench/clocked-upstream.ts), the delay each chunk took to arrive.
 *
 * Paths are measured in interleaved slices (a, b, c, a, b, c, …) so that load from anything else
 * on the machine falls on all three alike. Targets on loopback, for (c) against (b): at most
 * +2 ms at p50, at least 50% of the requests/s, at most +1 ms per streamed chunk.
 */
import fs from 'node:fs/promises'
import { cpus, loadavg } from 'node:os'
import path from 'node:path'
import { EmbeddedEngine, UpstreamEngine, type ChatCompletionRequest, type Engine } from '../src/node/engines/index.js'
import { getJson, startNode, stopNode, tempDir, waitFor, type NodeProcess } from '../test/support/cluster.js'
import { createTinyModel } from '../test/support/tiny-model.js'
import { ClockedUpstream, CLOCKED_MODEL } from './clocked-upstream.js'
import { closedLoop } from './closed-loop.js'
import { KeepAliveClient, type StreamAnswer } from './keep-alive-client.js'
import { round, summarize } from './latency-stats.js'
import { describeTally, MeshWatch } from './mesh-watch.js'
import { cpuMs } from './process-cpu.js'
import { pin, pinPlan } from './cpu-pinning.js'
import { StandinProcess } from './standin-child.js'
import type { BenchTable, Cell } from './table.js'

const TINY_MODEL = 'tiny-chat'
const STANDIN_MODEL = 'standin-chat'
const CONCURRENCY = [1, 8]
/** Interleaved slices per path and their length. */
const SLICES = 6
const SLICE_MS = 400
const STREAM_SLICE_MS = 500
const WARMUP_MS = 300
const CHUNK_INTERVAL_MS = 10
const STREAM_TOKENS = 24

const TINY_BODY: ChatCompletionRequest = { model: TINY_MODEL, messages: [{ role: 'user', content: 'Hello there' }], temperature: 0, max_tokens: 8, seed: 7 }

const TARGET_P50_MS = 2
const TARGET_RPS_SHARE = 0.5
const TARGET_CHUNK_MS = 1

type PathName = 'a in-process' | 'b host API' | 'c mesh hop'
const PATHS: PathName[] = ['a in-process', 'b host API', 'c mesh hop']

interface Sample { ms: number, ok: boolean, error?: string }
interface StreamSample { ok: boolean, ttft: number, gaps: number[], delays: number[], error?: string }

interface Measured {
  cpu: [Cell, Cell]
  latencies: number[]
  errors: number
  count: number
  elapsedMs: number
}

interface PathRun<T> {
  samples: T[]
  elapsedMs: number
  /** CPU ms the host and the entry node processes used while this path ran. */
  hostCpuMs: number
  entryCpuMs: number
}

/** Runs `request` on every path in interleaved slices; returns each path's pooled samples. */
async function interleaved<T extends { ok: boolean, error?: string }> (concurrency: number, sliceMs: number, pids: { host?: number, entry?: number }, request: Record<PathName, () => Promise<T>>): Promise<Record<PathName, PathRun<T>>> {
  const out = Object.fromEntries(PATHS.map(p => [p, { samples: [] as T[], elapsedMs: 0, hostCpuMs: 0, entryCpuMs: 0 }])) as Record<PathName, PathRun<T>>
  for (const p of PATHS) await closedLoop(concurrency, WARMUP_MS, request[p])
  for (let i = 0; i < SLICES; i++) {
    for (const p of PATHS) {
      const host0 = cpuMs(pids.host)
      const entry0 = cpuMs(pids.entry)
      const { results, elapsedMs } = await closedLoop(concurrency, sliceMs, request[p])
      out[p].samples.push(...results)
      out[p].elapsedMs += elapsedMs
      out[p].hostCpuMs += cpuMs(pids.host) - host0
      out[p].entryCpuMs += cpuMs(pids.entry) - entry0
    }
  }
  for (const p of PATHS) if (!out[p].samples.some(s => s.ok)) throw new Error(`${p}: every request failed, the first with: ${out[p].samples[0]?.error ?? 'nothing'}`)
  return out
}

/** Failed requests of a row, grouped by what they failed with, for the notes. */
function errorSummary (label: string, p: PathName, samples: Array<{ ok: boolean, error?: string }>): string | undefined {
  const counts = new Map<string, number>()
  for (const s of samples) {
    if (s.ok) continue
    const key = (s.error ?? 'unknown').slice(0, 160)
    counts.set(key, (counts.get(key) ?? 0) + 1)
  }
  if (counts.size === 0) return undefined
  return `errors, ${label}, ${p}: ${[...counts].map(([e, n]) => `${n}× ${e}`).join('; ')}`
}

/** Chunk timings of one streamed answer: gaps between content chunks and, for clocked chunks, emission-to-arrival delays. */
function chunkTimings (events: Array<{ at: number, content: string | undefined }>, startedAt: number, clocked: boolean): { ttft: number, gaps: number[], delays: number[] } {
  const content = events.filter(e => e.content !== undefined && e.content !== '')
  const gaps = content.slice(1).map((e, i) => e.at - content[i].at)
  const delays = clocked ? content.map(e => startedAt + e.at - Number(e.content)) : []
  return { ttft: content[0]?.at ?? NaN, gaps, delays }
}

function fromHttp (answer: StreamAnswer, clocked: boolean): StreamSample {
  if (answer.status !== 200) return { ok: false, ttft: NaN, gaps: [], delays: [], error: `${answer.status} ${answer.errorBody ?? ''}` }
  const events = answer.events.filter(e => e.data !== '[DONE]').map(e => {
    const chunk = JSON.parse(e.data) as { choices?: Array<{ delta?: { content?: string } }>, error?: unknown }
    return { at: e.at, content: chunk.choices?.[0]?.delta?.content, error: chunk.error }
  })
  const failed = events.find(e => e.error !== undefined)
  if (failed !== undefined) return { ok: false, ttft: NaN, gaps: [], delays: [], error: JSON.stringify(failed.error) }
  return { ok: true, ...chunkTimings(events, answer.startedAt, clocked) }
}

async function fromEngine (engine: Engine, body: ChatCompletionRequest, clocked: boolean): Promise<StreamSample> {
  const t0 = performance.now()
  const events: Array<{ at: number, content: string | undefined }> = []
  try {
    for await (const chunk of engine.chatStream(body)) events.push({ at: performance.now() - t0, content: chunk.choices[0]?.delta.content ?? undefined })
  } catch (err) {
    return { ok: false, ttft: NaN, gaps: [], delays: [], error: String(err) }
  }
  return { ok: true, ...chunkTimings(events, t0, clocked) }
}

export async function run (): Promise<BenchTable> {
  const notes: string[] = []
  const load0 = loadavg()[0]
  const standin = await StandinProcess.start()
  const clocked = await ClockedUpstream.start({ intervalMs: CHUNK_INTERVAL_MS })
  const modelsDir = await tempDir('shepherd-bench-models-')
  await createTinyModel(path.join(modelsDir, `${TINY_MODEL}.gguf`))
  const nodes: NodeProcess[] = []
  const engines: Engine[] = []
  const client = new KeepAliveClient(Math.max(...CONCURRENCY))
  let watch: MeshWatch | undefined
  try {
    const host = await startNode({
      name: 'bench-host',
      args: ['--models-dir', modelsDir, '--threads', '1', '--keep-alive-ms', '600000', '--upstream', standin.url, '--upstream', clocked.url]
    })
    nodes.push(host)
    const entry = await startNode({ name: 'bench-entry', args: ['--engine', 'none', '--bootstrap', `/ip4/127.0.0.1/tcp/${host.p2pPort}`] })
    nodes.push(entry)
    await waitFor('the entry node to see the host\'s models', async () => {
      const { models } = await getJson<{ models: Array<{ name: string, hosts: unknown[] }> }>(`${entry.api}/api/models`)
      return [TINY_MODEL, STANDIN_MODEL, CLOCKED_MODEL].every(name => models.some(m => m.name === name && m.hosts.length === 1))
    }, 20_000)

    const upstream = new UpstreamEngine({ id: 'bench-standin', baseUrl: standin.url })
    const clockedEngine = new UpstreamEngine({ id: 'bench-clocked', baseUrl: clocked.url })
    const embedded = new EmbeddedEngine({ modelsDirs: [modelsDir], threads: 1, keepAliveMs: Infinity })
    engines.push(upstream, clockedEngine, embedded)
    await Promise.all([upstream.load(STANDIN_MODEL), clockedEngine.load(CLOCKED_MODEL), embedded.load(TINY_MODEL)])

    const rows: Cell[][] = []
    const verdicts: boolean[] = []
    /** Failed requests and mesh trouble (peer transitions, host out of rotation), for the notes. */
    const problems: string[] = []
    let model = STANDIN_MODEL
    // Polled once a second: the entry is the node being measured.
    watch = new MeshWatch(entry.api, () => model, new Map([[host.id, 'host']]), 1000)
    const watched = (what: string): void => {
      const seen = describeTally(watch!.take())
      if (seen !== '—') problems.push(`mesh, ${what}: ${seen}`)
    }
    const pids = { host: host.child.pid, entry: entry.child.pid }
    const plan = pinPlan()
    if (plan !== undefined) {
      pin(pids.host, plan.host)
      pin(standin.pid, plan.host)
      pin(pids.entry, plan.rest)
      pin(process.pid, plan.rest)
    }
    /** CPU ms per request of the host and entry node processes on a path; null for the in-process path. */
    const cpuPerRequest = (p: PathName, run: PathRun<unknown>, n: number): [Cell, Cell] =>
      p === 'a in-process' ? [null, null] : [round(run.hostCpuMs / n, 2), p === 'c mesh hop' ? round(run.entryCpuMs / n, 2) : null]
    const hostUrl = `${host.api}/v1/chat/completions`
    const entryUrl = `${entry.api}/v1/chat/completions`
    // The host loads the tiny model before anything is timed: a first load takes seconds (enough,
    // on a busy machine, for its heartbeats to lapse), and what is measured here is routing.
    const loaded = await client.post(hostUrl, TINY_BODY)
    if (loaded.status !== 200) throw new Error(`the host could not serve the tiny model: ${loaded.status} ${loaded.body}`)
    await waitFor('the entry node to see the tiny model loaded, its host alive and in rotation', async () => {
      const { models, breakers } = await getJson<{ models: Array<{ name: string, hosts: Array<{ state: string }> }>, breakers: Record<string, { open: boolean }> }>(`${entry.api}/api/models`)
      return models.find(m => m.name === TINY_MODEL)?.hosts[0]?.state === 'loaded' && breakers[host.id]?.open !== true
    }, 20_000)

    // ---- non-streaming ------------------------------------------------------------------
    const backends: Array<{ label: string, engine: Engine, body: ChatCompletionRequest }> = [
      { label: 'upstream stand-in 0 ms', engine: upstream, body: { model: STANDIN_MODEL, messages: [{ role: 'user', content: 'one two three four five six' }], max_tokens: 8 } },
      { label: 'tiny model, 8 tokens', engine: embedded, body: TINY_BODY }
    ]
    for (const b of backends) {
      model = b.body.model
      watch.take()
      for (const concurrency of CONCURRENCY) {
        /** `fn` resolves to an error text, or undefined when the request succeeded. */
        const timed = async (fn: () => Promise<string | undefined>): Promise<Sample> => {
          const t0 = performance.now()
          const error = await fn().catch((err: Error) => err.message)
          return { ms: performance.now() - t0, ok: error === undefined, ...(error !== undefined ? { error } : {}) }
        }
        const post = async (url: string): Promise<string | undefined> => {
          const answer = await client.post(url, b.body)
          return answer.status === 200 ? undefined : `${answer.status} ${answer.body}`
        }
        const res = await interleaved<Sample>(concurrency, SLICE_MS, pids, {
          'a in-process': async () => await timed(async () => { await b.engine.chat(b.body); return undefined }),
          'b host API': async () => await timed(async () => await post(hostUrl)),
          'c mesh hop': async () => await timed(async () => await post(entryUrl))
        })
        watched(`${b.label} c=${concurrency}`)
        const m = Object.fromEntries(PATHS.map(p => {
          const { samples, elapsedMs } = res[p]
          const ok = samples.filter(s => s.ok)
          return [p, { latencies: ok.map(s => s.ms), errors: samples.length - ok.length, count: ok.length, elapsedMs, cpu: cpuPerRequest(p, res[p], samples.length) }]
        })) as Record<PathName, Measured>
        for (const p of PATHS) {
          const s = summarize(m[p].latencies)
          const rps = m[p].count / (m[p].elapsedMs / 1000)
          let delta: Cell = null
          let target: Cell = null
          let verdict: Cell = null
          if (p === 'c mesh hop') {
            const base = summarize(m['b host API'].latencies)
            const baseRps = m['b host API'].count / (m['b host API'].elapsedMs / 1000)
            const dP50 = s.p50 - base.p50
            const share = rps / baseRps
            delta = `${dP50 >= 0 ? '+' : ''}${dP50.toFixed(2)} ms p50, ${(share * 100).toFixed(0)}% req/s`
            target = `≤ +${TARGET_P50_MS} ms p50, ≥ ${TARGET_RPS_SHARE * 100}% req/s`
            const met = dP50 <= TARGET_P50_MS && share >= TARGET_RPS_SHARE
            verdicts.push(met)
            verdict = met ? 'met' : `MISSED (${[dP50 > TARGET_P50_MS ? 'p50' : '', share < TARGET_RPS_SHARE ? 'req/s' : ''].filter(x => x !== '').join(', ')})`
          }
          rows.push([b.label, p, `c=${concurrency}`, m[p].count, m[p].errors, round(s.p50, 2), round(s.p99, 2), round(rps, 0), ...m[p].cpu, null, null, null, delta, target, verdict])
          const errors = errorSummary(`${b.label} c=${concurrency}`, p, res[p].samples)
          if (errors !== undefined) problems.push(errors)
        }
      }
    }

    // ---- streaming ----------------------------------------------------------------------
    const streams: Array<{ label: string, engine: Engine, body: ChatCompletionRequest, clocked: boolean }> = [
      { label: `clocked upstream ${CHUNK_INTERVAL_MS} ms/chunk`, engine: clockedEngine, body: { model: CLOCKED_MODEL, messages: [{ role: 'user', content: 'x' }], max_tokens: STREAM_TOKENS, stream: true }, clocked: true },
      { label: `tiny model, ${STREAM_TOKENS} tokens`, engine: embedded, body: { model: TINY_MODEL, messages: [{ role: 'user', content: 'Tell me a story' }], temperature: 0, max_tokens: STREAM_TOKENS, seed: 3, stream: true }, clocked: false }
    ]
    const streamOver = async (url: string, body: unknown, isClocked: boolean): Promise<StreamSample> => {
      try {
        return fromHttp(await client.stream(url, body), isClocked)
      } catch (err) {
        return { ok: false, ttft: NaN, gaps: [], delays: [], error: String(err) }
      }
    }
    for (const s of streams) {
      model = s.body.model
      watch.take()
      const res = await interleaved<StreamSample>(1, STREAM_SLICE_MS, pids, {
        'a in-process': async () => await fromEngine(s.engine, s.body, s.clocked),
        'b host API': async () => await streamOver(hostUrl, s.body, s.clocked),
        'c mesh hop': async () => await streamOver(entryUrl, s.body, s.clocked)
      })
      watched(`${s.label} stream`)
      const stat = (p: PathName): { ttft: ReturnType<typeof summarize>, gaps: ReturnType<typeof summarize>, delays: ReturnType<typeof summarize>, n: number, errors: number } => {
        const ok = res[p].samples.filter(x => x.ok)
        return {
          ttft: summarize(ok.map(x => x.ttft)),
          gaps: summarize(ok.flatMap(x => x.gaps)),
          delays: summarize(ok.flatMap(x => x.delays)),
          n: ok.length,
          errors: res[p].samples.length - ok.length
        }
      }
      const base = stat('b host API')
      for (const p of PATHS) {
        const st = stat(p)
        let delta: Cell = null
        let target: Cell = null
        let verdict: Cell = null
        if (p === 'c mesh hop') {
          // With clocked chunks, the added delay is measured directly; otherwise the added gap.
          const added = s.clocked ? st.delays.p50 - base.delays.p50 : st.gaps.p50 - base.gaps.p50
          const dTtft = st.ttft.p50 - base.ttft.p50
          delta = `${added >= 0 ? '+' : ''}${added.toFixed(2)} ms/chunk (${s.clocked ? 'delay' : 'gap'}), ${dTtft >= 0 ? '+' : ''}${dTtft.toFixed(2)} ms TTFT`
          target = `≤ +${TARGET_CHUNK_MS} ms/chunk`
          const met = added <= TARGET_CHUNK_MS
          verdicts.push(met)
          verdict = met ? 'met' : 'MISSED'
        }
        rows.push([s.label, p, 'stream c=1', st.n, st.errors, round(st.ttft.p50, 2), round(st.ttft.p99, 2), null, ...cpuPerRequest(p, res[p], res[p].samples.length), round(st.gaps.p50, 2), s.clocked ? round(st.delays.p50, 2) : null, s.clocked ? round(st.delays.p99, 2) : null, delta, target, verdict])
        const errors = errorSummary(`${s.label} stream`, p, res[p].samples)
        if (errors !== undefined) problems.push(errors)
      }
    }

    notes.push(
      'Loopback, one host node (engines: embedded tiny model with --threads 1, upstream stand-in, clocked upstream) and one entry node (--engine none);',
      'the upstream stand-in runs in a process of its own (the host\'s side); the bench process runs the client, the in-process engines and the clocked upstream.',
      'Keep-alive HTTP agent; paths measured in interleaved slices.',
      `Non-streaming rows: p50/p99 = request latency (ms). Streaming rows: p50/p99 = time to first content chunk (ms); gap = between content chunks;`,
      'host CPU / entry CPU: ms of CPU the host / entry node process used per request on that path (from /proc; steadier than latency on a busy machine).',
      `delay = a clocked chunk's emission-to-arrival time (only for the clocked upstream, which writes a chunk every ${CHUNK_INTERVAL_MS} ms stamped with its send time).`,
      `Targets apply to (c) against (b). ${verdicts.filter(v => v).length}/${verdicts.length} met. At c=8 the ${cpus().length} cores are saturated, so p50 ≈ 8 / req/s (Little's law):`,
      'there the p50 target is a throughput target in disguise, and CPU per request decides both.',
      ...(problems.length > 0 ? problems : ['No request failed, and the entry saw no peer transition and no host out of rotation.']),
      plan !== undefined
        ? `CPU: the host node pinned to core ${plan.host}, the entry node and the bench process to core(s) ${plan.rest} (taskset), as on a LAN where the entry is another machine; BENCH_PIN=0 runs unpinned.`
        : 'CPU: nothing pinned (BENCH_PIN=0, one core, or no taskset): the entry node and the client take CPU from the host\'s engine, which the hop is then charged for.',
      `Machine: ${cpus().length} cores, shared with other work (load average ${load0.toFixed(1)} at start, ${loadavg()[0].toFixed(1)} at end); absolute numbers move with it, the interleaved comparison less so.`
    )
    return {
      title: 'Routing overhead: in-process engine vs host API vs mesh hop',
      columns: ['backend', 'path', 'load', 'ok', 'err', 'p50 ms', 'p99 ms', 'req/s', 'host CPU', 'entry CPU', 'gap p50', 'delay p50', 'delay p99', 'added by the hop (c − b)', 'target', 'result'],
      rows,
      notes
    }
  } finally {
    watch?.close()
    client.close()
    await Promise.all(engines.map(async e => await e.close().catch(() => {})))
    await Promise.all(nodes.map(async n => await stopNode(n, 'SIGKILL')))
    await Promise.all([standin.close(), clocked.close()])
    await Promise.all([modelsDir, ...nodes.map(n => n.dataDir)].map(async d => await fs.rm(d, { recursive: true, force: true })))
  }
}
