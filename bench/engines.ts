/**
 * `npm run bench -- engines` (issue 12): how fast each way of serving one model is, in one run,
 * on random-weight models the bench writes (real compute, memory and batching; garbage text):
 * - `27M`: llama, embd 512, 8 layers, ff 1536, the tiny 600-token vocabulary;
 * - `qwen0.5b`: the Qwen2.5-0.5B shape (embd 896, 24 layers, 14 heads, 2 KV heads, ff 4864,
 *   151,936-token vocabulary, tied embeddings), ~1 GB of f16.
 * For each model, streaming chat answers of exactly its TOKENS tokens (64; 32 for the Qwen shape;
 * end-of-turn and the byte tokens banned), closed loop at 1 and then 8 clients, through:
 * - llama-server direct (`--parallel 8`), the baseline every other row is compared with;
 * - a node with `--engine embedded`, one with `--engine llama-server`, one with the default
 *   engine (`auto`: the row says which it picked);
 * - a mesh hop: an entry node without the model relaying to a host node with the default engine
 *   (compare with the default-engine row).
 * Knobs: BENCH_ENGINES_SHAPES (default `27M,qwen0.5b`; `tiny` for a quick check),
 * BENCH_ENGINES_ROUND_MS (default per model: 10000, 8000 for the Qwen shape), BENCH_ENGINES_TOKENS
 * (default per model: 64, 32 for the Qwen shape), BENCH_THREADS
 * (default 1: on 2 cores, 1 thread per busy process is often faster), BENCH_ENGINES_PATHS
 * (default all: direct,embedded,llama-server,default,hop).
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process'
import http from 'node:http'
import { cpus, loadavg } from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { promisify } from 'node:util'
import { freePort } from '../src/node/engines/ports.js'
import { createTinyModel, type TinyModelOptions } from '../src/node/engines/tiny-model.js'
import { getJson, startNode, stopNode, tempDir, waitFor, type NodeProcess } from '../test/support/cluster.js'
import { closedLoop } from './closed-loop.js'
import { round, summarize } from './latency-stats.js'
import type { BenchTable, Cell } from './table.js'

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..')
const MODEL = 'bench-engines'
/**
 * The models, each with its own answer length and round time (BENCH_ENGINES_TOKENS and
 * BENCH_ENGINES_ROUND_MS override them for all): the Qwen shape decodes ~10× slower than the 27M
 * one on a CPU, so shorter answers and rounds keep the whole bench near 10 minutes on 2 cores.
 */
const SHAPES: Record<string, { label: string, opts: TinyModelOptions, tokens: number, roundMs: number }> = {
  tiny: { label: 'tiny (64 embd, 2 layers)', opts: { contextLength: 2048 }, tokens: 64, roundMs: 10_000 },
  '27M': { label: '27M (512 embd, 8 layers)', opts: { nEmbd: 512, nLayer: 8, nHead: 8, nFf: 1536, contextLength: 2048 }, tokens: 64, roundMs: 10_000 },
  'qwen0.5b': { label: 'Qwen2.5-0.5B shape', opts: { nEmbd: 896, nLayer: 24, nHead: 14, nHeadKv: 2, nFf: 4864, vocabSize: 151_936, tiedEmbeddings: true, contextLength: 2048 }, tokens: 32, roundMs: 8_000 }
}
const PATHS = ['direct', 'embedded', 'llama-server', 'default', 'hop'] as const
type PathName = typeof PATHS[number]
const CLIENTS = [1, 8] as const
const SLOTS = 8
/** Per-slot context: the prompt and answer fit many times over. */
const SLOT_CONTEXT = 2048
/** The tiny vocabulary's end of turn (`<|im_end|>`) and its high byte tokens, which make invalid UTF-8. */
const BANNED: Record<string, number> = { 260: -100, ...Object.fromEntries(Array.from({ length: 128 }, (_, b) => [String(3 + 128 + b), -100])) }

function env (name: string, fallback: string): string {
  const v = process.env[name]
  return v === undefined || v === '' ? fallback : v
}

interface Round { tokensPerS: number, ttft: number[], errors: number, firstError?: string }

/**
 * POSTs JSON and reads the SSE answer, timing each event. A new connection per request, for
 * every path alike: llama-server closes a kept-alive connection after a few requests, and a
 * client reusing it races that close ("socket hang up"); on loopback a connection costs well
 * under a millisecond.
 */
async function stream (url: string, body: unknown): Promise<{ status: number, events: Array<{ at: number, data: string }>, errorBody?: string }> {
  const payload = Buffer.from(JSON.stringify(body))
  const t0 = performance.now()
  const res = await new Promise<http.IncomingMessage>((resolve, reject) => {
    const req = http.request(url, { method: 'POST', agent: false, headers: { 'content-type': 'application/json', 'content-length': payload.byteLength } }, resolve)
    req.once('error', reject)
    req.end(payload)
  })
  const status = res.statusCode ?? 0
  res.setEncoding('utf8')
  if (status !== 200) {
    let text = ''
    for await (const piece of res) text += piece as string
    return { status, events: [], errorBody: text }
  }
  const events: Array<{ at: number, data: string }> = []
  let pending = ''
  for await (const piece of res) {
    const at = performance.now() - t0
    pending += piece as string
    let end: number
    while ((end = pending.indexOf('\n\n')) >= 0) {
      for (const line of pending.slice(0, end).split('\n')) if (line.startsWith('data: ')) events.push({ at, data: line.slice(6) })
      pending = pending.slice(end + 2)
    }
  }
  return { status, events }
}

/** One streamed answer: time to its first content, its completion tokens, or what went wrong. */
async function once (url: string, body: unknown): Promise<{ ok: boolean, ttft: number, tokens: number, detail?: string }> {
  let answer
  try {
    answer = await stream(url, body)
  } catch (err) {
    return { ok: false, ttft: NaN, tokens: 0, detail: (err as Error).message }
  }
  if (answer.status !== 200) return { ok: false, ttft: NaN, tokens: 0, detail: `${answer.status} ${answer.errorBody ?? ''}`.slice(0, 300) }
  let ttft = NaN
  let tokens = 0
  let pieces = 0
  let done = false
  for (const e of answer.events) {
    if (e.data === '[DONE]') { done = true; continue }
    if (/"content":"[^"]/.test(e.data)) {
      pieces++
      if (Number.isNaN(ttft)) ttft = e.at
    }
    if (e.data.includes('"usage":{')) tokens = (JSON.parse(e.data) as { usage: { completion_tokens: number } }).usage.completion_tokens
    if (e.data.startsWith('{"error"')) return { ok: false, ttft, tokens, detail: e.data.slice(0, 300) }
  }
  if (!done) return { ok: false, ttft, tokens, detail: 'no [DONE]' }
  return { ok: true, ttft, tokens: tokens > 0 ? tokens : pieces }
}

async function measure (url: string, clients: number, roundMs: number, tokens: number): Promise<Round> {
  {
    let seq = 0
    const body = (): unknown => ({
      model: MODEL,
      messages: [{ role: 'user', content: 'Tell me a long story about the sea and the ships on it.' }],
      max_tokens: tokens,
      temperature: 0.8,
      seed: ++seq,
      logit_bias: BANNED,
      stream: true,
      stream_options: { include_usage: true }
    })
    const { results, elapsedMs } = await closedLoop(clients, roundMs, async () => await once(url, body()))
    const ok = results.filter(r => r.ok)
    const bad = results.find(r => !r.ok)
    return {
      tokensPerS: ok.reduce((s, r) => s + r.tokens, 0) / (elapsedMs / 1000),
      ttft: ok.map(r => r.ttft).filter(Number.isFinite),
      errors: results.length - ok.length,
      ...(bad?.detail !== undefined ? { firstError: bad.detail } : {})
    }
  }
}

/** llama-server itself, as a user would run it: the baseline. */
async function startDirect (binary: string, modelPath: string, threads: number): Promise<{ url: string, stop: () => Promise<void> }> {
  const port = await freePort('127.0.0.1')
  const child: ChildProcess = spawn(binary, [
    '--model', modelPath, '--alias', MODEL, '--host', '127.0.0.1', '--port', String(port), '--threads', String(threads),
    '--ctx-size', String(SLOT_CONTEXT * SLOTS), '--parallel', String(SLOTS), '--jinja'
  ], { stdio: ['ignore', 'ignore', 'pipe'] })
  let stderr = ''
  child.stderr?.on('data', d => { stderr = (stderr + String(d)).slice(-4000) })
  const base = `http://127.0.0.1:${port}`
  await waitFor('llama-server direct to be ready', async () => {
    if (child.exitCode !== null) throw new Error(`llama-server exited: ${stderr}`)
    return await fetch(`${base}/health`).then(r => r.status === 200, () => false)
  }, 300_000, 100)
  return {
    url: `${base}/v1/chat/completions`,
    stop: async () => {
      if (child.exitCode !== null) return
      await new Promise(resolve => { child.once('exit', resolve); child.kill('SIGTERM') })
    }
  }
}

/** Waits until `n` lists the model: a node fingerprints (sha256) a file before it offers it, ~1 GB for the Qwen shape. */
async function seesModel (n: NodeProcess): Promise<void> {
  await waitFor(`${n.name} to list the model`, async () => {
    const { models } = await getJson<{ models: Array<{ name: string }> }>(`${n.api}/api/models`)
    return models.some(m => m.name === MODEL)
  }, 180_000, 200)
}

/** The engine a node says it runs on its ready line (`engine llama-server (auto: …)`). */
function engineOf (n: NodeProcess): string {
  const m = /engine (\S+)/.exec(n.stderr.join(''))
  return m?.[1] ?? '?'
}

async function startPath (name: PathName, binary: string, dir: string, modelPath: string, threads: number): Promise<{ url: string, label: string, stop: () => Promise<void> }> {
  if (name === 'direct') {
    const d = await startDirect(binary, modelPath, threads)
    return { ...d, label: `llama-server direct (--parallel ${SLOTS})` }
  }
  const hostArgs = (engine: string): string[] => ['--engine', engine, '--llamacpp', path.dirname(binary), '--threads', String(threads), '--models-dir', dir, '--keep-alive-ms', '3600000', '--parallel', String(SLOTS)]
  const nodes: NodeProcess[] = []
  const stop = async (): Promise<void> => { await Promise.all(nodes.map(async n => await stopNode(n, 'SIGTERM'))) }
  try {
    if (name === 'hop') {
      const entry = await startNode({ name: 'eng-entry', timeoutMs: 120_000, args: ['--engine', 'none'] })
      nodes.push(entry)
      const host = await startNode({ name: 'eng-host', timeoutMs: 120_000, args: [...hostArgs('auto'), '--bootstrap', `/ip4/127.0.0.1/tcp/${entry.p2pPort}`] })
      nodes.push(host)
      await seesModel(entry)
      return { url: `${entry.api}/v1/chat/completions`, label: `mesh hop to ${engineOf(host)} host`, stop }
    }
    const n = await startNode({ name: `eng-${name}`, timeoutMs: 120_000, args: hostArgs(name === 'default' ? 'auto' : name) })
    nodes.push(n)
    await seesModel(n)
    const label = name === 'default' ? `node, default engine (${engineOf(n)})` : `node, --engine ${name}`
    return { url: `${n.api}/v1/chat/completions`, label, stop }
  } catch (err) {
    await stop()
    throw err
  }
}

export async function run (): Promise<BenchTable> {
  const shapes = env('BENCH_ENGINES_SHAPES', '27M,qwen0.5b').split(',').map(s => s.trim())
  for (const s of shapes) if (SHAPES[s] === undefined) throw new Error(`unknown shape ${s} (have ${Object.keys(SHAPES).join(', ')})`)
  const paths = env('BENCH_ENGINES_PATHS', PATHS.join(',')).split(',').map(s => s.trim()) as PathName[]
  const roundOverride = env('BENCH_ENGINES_ROUND_MS', '')
  const tokensOverride = env('BENCH_ENGINES_TOKENS', '')
  const threads = Number(env('BENCH_THREADS', '1'))
  const load0 = loadavg()[0]
  const built = await promisify(execFile)('bash', [path.join(ROOT, 'scripts', 'build-llama-server.sh')], { cwd: ROOT, maxBuffer: 256 * 1024 * 1024 })
  const binary = built.stdout.trim().split('\n').at(-1) ?? ''
  const rows: Cell[][] = []
  const notes: string[] = []
  const sizes: string[] = []
  for (const shape of shapes) {
    const roundMs = roundOverride !== '' ? Number(roundOverride) : SHAPES[shape].roundMs
    const tokens = tokensOverride !== '' ? Number(tokensOverride) : SHAPES[shape].tokens
    sizes.push(`${shape}: ${tokens} tokens per answer, ${roundMs} ms per client count`)
    const dir = await tempDir('shepherd-bench-engines-')
    const modelPath = path.join(dir, `${MODEL}.gguf`)
    const t0 = performance.now()
    await createTinyModel(modelPath, SHAPES[shape].opts)
    notes.push(`${shape}: model written in ${((performance.now() - t0) / 1000).toFixed(1)} s`)
    let direct: Record<number, Round> | undefined
    const measured: Partial<Record<PathName, Record<number, Round>>> = {}
    for (const p of paths) {
      const started = await startPath(p, binary, dir, modelPath, threads)
      try {
        // Loads the model (on a node: on first use) and warms it.
        const warm = await measure(started.url, 1, 1, tokens)
        if (warm.errors > 0) throw new Error(`${started.label}: warm-up failed: ${warm.firstError ?? ''}`)
        const byClients: Record<number, Round> = {}
        for (const c of CLIENTS) byClients[c] = await measure(started.url, c, roundMs, tokens)
        if (p === 'direct') direct = byClients
        measured[p] = byClients
        const ratio = (c: number): Cell => direct === undefined || p === 'direct' ? null : round(100 * byClients[c].tokensPerS / direct[c].tokensPerS, 0)
        const at8 = summarize(byClients[8].ttft)
        const direct8 = direct === undefined ? NaN : summarize(direct[8].ttft).p50
        rows.push([
          shape, started.label,
          round(byClients[1].tokensPerS), ratio(1),
          round(byClients[8].tokensPerS), ratio(8),
          round(summarize(byClients[1].ttft).p50, 0),
          round(at8.p50, 0), round(at8.p99, 0),
          p === 'direct' ? null : round(at8.p50 / direct8, 2),
          byClients[1].errors + byClients[8].errors
        ])
        for (const c of CLIENTS) if (byClients[c].firstError !== undefined) notes.push(`${shape} ${started.label} @${c}: ${byClients[c].firstError ?? ''}`)
      } finally {
        await started.stop()
      }
    }
    const host = measured.default
    const hop = measured.hop
    if (host !== undefined && hop !== undefined) {
      // The hop's target is the host's own speed, not llama-server's.
      notes.push(`${shape}: mesh hop / default-engine row: ${CLIENTS.map(c => `${Math.round(100 * hop[c].tokensPerS / host[c].tokensPerS)} % @${c}`).join(', ')} (target >= 90 %)`)
    }
  }
  return {
    title: `engines: streaming chat, threads ${threads}`,
    columns: ['model', 'path', 'tok/s @1', '% direct', 'tok/s @8', '% direct', 'TTFT p50 @1 ms', 'TTFT p50 @8 ms', 'TTFT p99 @8 ms', 'p50 @8 × direct', 'errors'],
    rows,
    notes: [
      `closed loop per client count after a warm-up request (${sizes.join('; ')}); baseline: llama-server direct with --parallel ${SLOTS}`,
      'targets (issue 12): default engine >= 90 % of direct at 1 and 8 clients, TTFT p50 @8 <= 1.5x direct; mesh hop >= 90 % of the default-engine row',
      `machine: ${cpus().length} cores, load average ${load0.toFixed(2)} at start; unpinned, so the hop row shares cores with the entry node`,
      ...notes
    ]
  }
}
