/**
 * `npm run bench -- split` (issue 16): what splitting one model over nodes costs, in one run, on
 * a random-weight model the bench writes (real compute and transfers; garbage text):
 * - `whole`: llama-server alone with the model (the baseline every row is compared with);
 * - split over 2 and 3 nodes: llama-server `--rpc` to 1 or 2 rpc-servers, layers in equal
 *   shares (`--tensor-split`, nothing kept on the head), each reached either by a direct TCP
 *   connection or through the mesh's RPC tunnel (two real libp2p hosts per worker link: tcp +
 *   noise + yamux, `/shepherd/rpc-tunnel/1.0.0`, as a head and a worker use it);
 * - with 0, 1 and 5 ms of added RTT on every head–worker link: a delay proxy in front of each
 *   worker holds every chunk half the RTT each way (`tc netem` needs sch_netem, which this VM's
 *   kernel lacks; the proxy delays whole chunks, as a link does packets, minus bandwidth limits).
 * Each row: time to first token and tokens/s (llama-server's own decode rate, `timings`) of
 * streamed answers of exactly TOKENS tokens (end of turn banned), one client, ROUNDS answers,
 * the median; and tokens/s as a % of whole.
 * Knobs: BENCH_SPLIT_SHAPE (default `27M`; `tiny` for a quick check), BENCH_SPLIT_TOKENS (32),
 * BENCH_SPLIT_ROUNDS (3), BENCH_SPLIT_RTTS (`0,1,5`), BENCH_THREADS (1).
 * Processes run on 2 shared cores: compare rows of one run, not runs.
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process'
import net from 'node:net'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { promisify } from 'node:util'
import { freePort } from '../src/node/engines/ports.js'
import { createTinyModel, type TinyModelOptions } from '../src/node/engines/tiny-model.js'
import { createHost, type Host } from '../src/p2p/host.js'
import { createIdentity } from '../src/p2p/identity.js'
import { RpcTunnelService, type TunnelListener } from '../src/p2p/rpc-tunnel.js'
import { setLogSink } from '../src/logger.js'
import { tempDir } from '../test/support/cluster.js'
import type { BenchTable, Cell } from './table.js'
import { parseSse } from '../src/node/engines/openai-http.js'

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..')
const MODEL = 'bench-split'
const SHAPES: Record<string, { label: string, opts: TinyModelOptions }> = {
  tiny: { label: 'tiny (64 embd, 2 layers)', opts: { contextLength: 1024 } },
  '27M': { label: '27M (512 embd, 8 layers)', opts: { nEmbd: 512, nLayer: 8, nHead: 8, nFf: 1536, contextLength: 1024 } }
}
const BANNED: Record<string, number> = { 2: -100, 259: -100, 260: -100, ...Object.fromEntries(Array.from({ length: 128 }, (_, b) => [String(3 + 128 + b), -100])) }

function env (name: string, fallback: string): string {
  const v = process.env[name]
  return v === undefined || v === '' ? fallback : v
}

async function waitPort (port: number, child: ChildProcess, what: string, ms = 120_000): Promise<void> {
  const end = Date.now() + ms
  for (;;) {
    if (child.exitCode != null) throw new Error(`${what} exited (${child.exitCode})`)
    const ok = await new Promise<boolean>(resolve => {
      const s = net.connect({ host: '127.0.0.1', port }, () => { s.destroy(); resolve(true) })
      s.once('error', () => { resolve(false) })
    })
    if (ok) return
    if (Date.now() > end) throw new Error(`${what} did not listen in time`)
    await new Promise(resolve => setTimeout(resolve, 100))
  }
}

async function waitHealthy (port: number, child: ChildProcess, log: string[]): Promise<void> {
  const end = Date.now() + 300_000
  for (;;) {
    if (child.exitCode != null) throw new Error(`llama-server exited (${child.exitCode}): ${log.slice(-15).join('')}`)
    const ok = await fetch(`http://127.0.0.1:${port}/health`).then(r => r.ok, () => false)
    if (ok) return
    if (Date.now() > end) throw new Error(`llama-server not ready: ${log.slice(-15).join('')}`)
    await new Promise(resolve => setTimeout(resolve, 200))
  }
}

/** A TCP proxy to `target` that holds each chunk `oneWayMs` in each direction (order kept). */
async function delayProxy (target: number, oneWayMs: number): Promise<{ port: number, close: () => Promise<void> }> {
  const sockets = new Set<net.Socket>()
  const forward = (from: net.Socket, to: net.Socket): void => {
    from.on('data', d => { if (oneWayMs <= 0) to.write(d); else setTimeout(() => { if (!to.destroyed) to.write(d) }, oneWayMs) })
    from.on('end', () => { setTimeout(() => to.end(), oneWayMs) })
    from.on('error', () => { to.destroy() })
  }
  const server = net.createServer(client => {
    const up = net.connect({ host: '127.0.0.1', port: target })
    for (const s of [client, up]) { sockets.add(s); s.setNoDelay(true); s.on('close', () => sockets.delete(s)) }
    forward(client, up)
    forward(up, client)
  })
  await new Promise<void>(resolve => server.listen(0, '127.0.0.1', resolve))
  return { port: (server.address() as net.AddressInfo).port, close: async () => { for (const s of sockets) s.destroy(); await new Promise<void>(resolve => server.close(() => resolve())) } }
}

/** Streams one answer; time to first token and tokens/s after it. */
async function answer (port: number, tokens: number): Promise<{ ttftMs: number, tokPerS: number }> {
  const t0 = performance.now()
  const res = await fetch(`http://127.0.0.1:${port}/v1/chat/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ model: MODEL, stream: true, max_tokens: tokens, seed: 1, logit_bias: BANNED, messages: [{ role: 'user', content: 'Tell me about the mesh.' }] })
  })
  if (res.status !== 200) throw new Error(`chat: ${res.status} ${await res.text()}`)
  let first = 0
  let last = 0
  let n = 0
  let serverTps: number | undefined
  for await (const event of parseSse(res.body as unknown as AsyncIterable<Uint8Array>)) {
    if (event.data === '[DONE]') continue
    const json = JSON.parse(event.data)
    // llama-server's own decode rate, when it reports one: chunks of a fast model arrive in bursts.
    if (typeof json.timings?.predicted_per_second === 'number') serverTps = json.timings.predicted_per_second
    if (json.choices?.[0]?.delta?.content == null) continue
    const at = performance.now() - t0
    if (n === 0) first = at
    last = at
    n++
  }
  return { ttftMs: first, tokPerS: serverTps ?? (n > 1 ? (n - 1) / ((last - first) / 1000) : 0) }
}

function median (xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b)
  return s[Math.floor(s.length / 2)]
}

interface Links { ports: number[], close: () => Promise<void> }

/** rpc-servers for `workers` workers, each reached directly or through a tunnel, with an RTT proxy. */
async function workerLinks (rpcServer: string, workers: number, via: 'direct' | 'tunnel', rttMs: number, threads: number): Promise<Links> {
  const closers: Array<() => Promise<void>> = []
  const ports: number[] = []
  for (let w = 0; w < workers; w++) {
    const port = await freePort()
    const child = spawn(rpcServer, ['--host', '127.0.0.1', '--port', String(port), '--threads', String(threads)], { stdio: 'ignore' })
    closers.push(async () => { child.kill('SIGKILL') })
    await waitPort(port, child, 'rpc-server')
    let target = port
    if (via === 'tunnel') {
      const head = await createHost({ privateKey: await createIdentity(), listen: ['/ip4/127.0.0.1/tcp/0'], mdns: false, mdnsIntervalMs: 1000 })
      const worker = await createHost({ privateKey: await createIdentity(), listen: ['/ip4/127.0.0.1/tcp/0'], mdns: false, mdnsIntervalMs: 1000 })
      const ht = new RpcTunnelService(head)
      const wt = new RpcTunnelService(worker)
      await wt.serve({ authorize: () => ({ port }) })
      await head.dial(worker.getMultiaddrs()[0])
      const l: TunnelListener = await ht.listen(worker.peerId.toString(), MODEL)
      target = l.port
      closers.push(async () => { await ht.stop(); await wt.stop(); await head.stop(); await worker.stop() })
    }
    if (rttMs > 0) {
      const proxy = await delayProxy(target, rttMs / 2)
      target = proxy.port
      closers.push(proxy.close)
    }
    ports.push(target)
  }
  return { ports, close: async () => { for (const c of closers.reverse()) await c().catch(() => {}) } }
}

export async function run (): Promise<BenchTable> {
  setLogSink(() => {})
  const shapeName = env('BENCH_SPLIT_SHAPE', '27M')
  const shape = SHAPES[shapeName]
  if (shape == null) throw new Error(`unknown BENCH_SPLIT_SHAPE ${shapeName} (have ${Object.keys(SHAPES).join(', ')})`)
  const tokens = Number(env('BENCH_SPLIT_TOKENS', '32'))
  const rounds = Number(env('BENCH_SPLIT_ROUNDS', '3'))
  const rtts = env('BENCH_SPLIT_RTTS', '0,1,5').split(',').map(Number)
  const threads = Number(env('BENCH_THREADS', '1'))
  const script = path.join(ROOT, 'scripts', 'build-llama-server.sh')
  const llamaServer = (await promisify(execFile)('bash', [script], { cwd: ROOT, maxBuffer: 64 * 1024 * 1024 })).stdout.trim().split('\n').at(-1) ?? ''
  const rpcServer = (await promisify(execFile)('bash', [script, '--rpc-server'], { cwd: ROOT })).stdout.trim().split('\n').at(-1) ?? ''
  const dir = await tempDir('shepherd-bench-split-')
  const model = path.join(dir, `${MODEL}.gguf`)
  await createTinyModel(model, shape.opts)

  const rows: Cell[][] = []
  let wholeTps = 0
  const configs: Array<{ nodes: number, via: 'direct' | 'tunnel' | 'whole', rtt: number }> = [{ nodes: 1, via: 'whole', rtt: 0 }]
  for (const nodes of [2, 3]) for (const rtt of rtts) for (const via of ['direct', 'tunnel'] as const) configs.push({ nodes, via, rtt })
  for (const c of configs) {
    const links = c.via === 'whole' ? { ports: [], close: async () => {} } : await workerLinks(rpcServer, c.nodes - 1, c.via, c.rtt, threads)
    const port = await freePort()
    const args = ['--model', model, '--alias', MODEL, '--host', '127.0.0.1', '--port', String(port), '--threads', String(threads), '--ctx-size', '1024', '--parallel', '1']
    // The head's own layers stay on its CPU; the workers take equal shares of the rest.
    if (links.ports.length > 0) args.push('--rpc', links.ports.map(p => `127.0.0.1:${p}`).join(','), '--n-gpu-layers', '999', '--tensor-split', links.ports.map(() => '1').join(','))
    const log: string[] = []
    const child = spawn(llamaServer, args, { stdio: ['ignore', 'pipe', 'pipe'] })
    child.stdout?.on('data', d => log.push(String(d)))
    child.stderr?.on('data', d => { log.push(String(d)); if (log.length > 200) log.shift() })
    try {
      await waitHealthy(port, child, log)
      await answer(port, 4) // warm-up
      const got: Array<{ ttftMs: number, tokPerS: number }> = []
      for (let i = 0; i < rounds; i++) got.push(await answer(port, tokens))
      const tps = median(got.map(g => g.tokPerS))
      if (c.via === 'whole') wholeTps = tps
      rows.push([c.via === 'whole' ? 'whole (1 node)' : `split over ${c.nodes}`, c.via === 'whole' ? '—' : c.via, c.rtt, Math.round(median(got.map(g => g.ttftMs)) * 10) / 10, Math.round(tps * 10) / 10, wholeTps > 0 ? Math.round(tps / wholeTps * 1000) / 10 : null])
    } finally {
      child.kill('SIGKILL')
      await links.close()
    }
  }
  return {
    title: `split: one model over nodes, ${shape.label}, ${tokens} tokens, median of ${rounds}`,
    columns: ['serving', 'link', 'added RTT ms', 'TTFT ms', 'tokens/s', '% of whole'],
    rows,
    notes: [
      'whole: llama-server alone (the baseline); split: llama-server --rpc to 1 or 2 rpc-servers, equal layer shares.',
      'tunnel: through /shepherd/rpc-tunnel/1.0.0 between two libp2p hosts (in this process) per worker; direct: plain TCP. Compare each tunnel row with the direct row above it.',
      'added RTT: a userspace delay proxy per worker link (half each way); sch_netem is missing on this VM.',
      'Issue 16 targets: split over 2 at 1 ms ≥ 70 % of whole; tunnel ≤ 10 % slower than direct.'
    ]
  }
}
