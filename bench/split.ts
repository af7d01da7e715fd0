/**
 * `npm run bench -- split` (issue 16): what splitting one model over nodes costs, in one run, on
 * a random-weight model the bench writes (real compute and transfers; garbage text):
 * - `whole`: llama-server alone with the model (the baseline every row is compared with);
 * - split over 2 and 3 nodes: llama-server `--rpc` to 1 or 2 rpc-servers, every node an equal
 *   share of the layers with the product's flags (the head keeps its first layers on its own
 *   CPU, `--n-gpu-layers` and `--tensor-split` from split/layers.ts), each worker reached either by a direct TCP
 *   connection or through the mesh's RPC tunnel (two real libp2p hosts per worker link: tcp +
 *   noise + yamux, `/shepherd/rpc-tunnel/1.0.0`, as a head and a worker use it);
 * - with 0, 1 and 5 ms of added RTT on every head–worker link: a delay proxy in front of each
 *   worker holds every request chunk for the RTT (`tc netem` needs sch_netem, which this VM's
 *   kernel lacks; the proxy delays whole chunks, as a link does packets, minus bandwidth limits).
 * Each row: time to first token and tokens/s (llama-server's own decode rate, `timings`) of
 * streamed answers of exactly TOKENS tokens (end of turn banned), one client, ROUNDS answers,
 * the median; tokens/s as a % of whole; and, where a delay proxy sits on the links, how many
 * RPC round trips (request → answer turns, all links together) one generated token costs: the
 * added RTT times that number is what a split pays per token on a real link.
 * Then a round-trip micro-bench, the tunnel's own cost per RPC round trip: an echo server
 * reached (a) directly, (b) through two plain Node.js socket relays (the two extra loopback hops
 * and event-loop passes a tunnel has, without libp2p) and (c) through the tunnel; 64 B and
 * 64 KiB each way, median µs.
 * Knobs: BENCH_SPLIT_SHAPE (default `qwen0.5b`; `27M` or `tiny` for a quick check),
 * BENCH_SPLIT_TOKENS (32), BENCH_SPLIT_ROUNDS (3), BENCH_SPLIT_RTTS (`0,1,5`), BENCH_THREADS (1),
 * BENCH_SPLIT_ECHOES (2000 round trips per echo row).
 * Processes run on 2 shared cores: compare rows of one run, not runs.
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process'
import { rm } from 'node:fs/promises'
import net from 'node:net'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { promisify } from 'node:util'
import { freePort } from '../src/node/engines/ports.js'
import { TINY_MODEL, createTinyModel, type TinyModelOptions } from '../src/node/engines/tiny-model.js'
import { layerRanges } from '../src/node/split/layers.js'
import { createHost } from '../src/p2p/host.js'
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
  '27M': { label: '27M (512 embd, 8 layers)', opts: { nEmbd: 512, nLayer: 8, nHead: 8, nFf: 1536, contextLength: 1024 } },
  // A realistic size: per token the compute (~1 GB of f16 weights read) dwarfs RPC's round
  // trips, as it does for the models people split. The 27M one spends ~2 ms a token, so there a
  // split measures little but round trips.
  'qwen0.5b': { label: 'Qwen2.5-0.5B shape (896 embd, 24 layers, 152k vocab, ~1 GB f16)', opts: { nEmbd: 896, nLayer: 24, nHead: 14, nHeadKv: 2, nFf: 4864, vocabSize: 151_936, tiedEmbeddings: true, contextLength: 1024 } }
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

/**
 * A TCP proxy to `target` that adds `rttMs` to every round trip (order kept), and counts turns: a
 * chunk towards the target after the target last spoke starts a new round trip. The whole delay
 * is put on the way to the target: Node's timers have 1 ms granularity, so half an RTT each way
 * would turn 1 ms into 2; for request/answer traffic only the sum matters.
 */
async function delayProxy (target: number, rttMs: number): Promise<{ port: number, turns: () => number, close: () => Promise<void> }> {
  const sockets = new Set<net.Socket>()
  let turns = 0
  const forward = (from: net.Socket, to: net.Socket, oneWayMs: number, onChunk: () => void): void => {
    from.on('data', d => { onChunk(); if (oneWayMs <= 0) to.write(d); else setTimeout(() => { if (!to.destroyed) to.write(d) }, oneWayMs) })
    from.on('end', () => { setTimeout(() => to.end(), oneWayMs) })
    from.on('error', () => { to.destroy() })
  }
  const server = net.createServer(client => {
    const up = net.connect({ host: '127.0.0.1', port: target })
    for (const s of [client, up]) { sockets.add(s); s.setNoDelay(true); s.on('close', () => sockets.delete(s)) }
    let answered = true
    forward(client, up, rttMs, () => { if (answered) { turns++; answered = false } })
    forward(up, client, 0, () => { answered = true })
  })
  await new Promise<void>(resolve => server.listen(0, '127.0.0.1', resolve))
  return { port: (server.address() as net.AddressInfo).port, turns: () => turns, close: async () => { for (const s of sockets) s.destroy(); await new Promise<void>(resolve => server.close(() => resolve())) } }
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

interface Links { ports: number[], turns: () => number | null, close: () => Promise<void> }

/** rpc-servers for `workers` workers, each reached directly or through a tunnel, with an RTT proxy. */
async function workerLinks (rpcServer: string, workers: number, via: 'direct' | 'tunnel', rttMs: number, threads: number): Promise<Links> {
  const closers: Array<() => Promise<void>> = []
  const ports: number[] = []
  const counters: Array<() => number> = []
  for (let w = 0; w < workers; w++) {
    const port = await freePort()
    const child = spawn(rpcServer, ['--host', '127.0.0.1', '--port', String(port), '--threads', String(threads)], { stdio: 'ignore' })
    closers.push(async () => { child.kill('SIGKILL') })
    await waitPort(port, child, 'rpc-server')
    let target = port
    if (via === 'tunnel') {
      const t = await tunnelTo(port)
      target = t.port
      closers.push(t.close)
    }
    if (rttMs > 0) {
      const proxy = await delayProxy(target, rttMs)
      target = proxy.port
      counters.push(proxy.turns)
      closers.push(proxy.close)
    }
    ports.push(target)
  }
  return {
    ports,
    turns: () => counters.length > 0 ? counters.reduce((s, c) => s + c(), 0) : null,
    close: async () => { for (const c of closers.reverse()) await c().catch(() => {}) }
  }
}

/** A tunnel to loopback `port` as a head and a worker run it: two libp2p hosts (tcp, noise, yamux). */
async function tunnelTo (port: number): Promise<{ port: number, close: () => Promise<void> }> {
  const head = await createHost({ privateKey: await createIdentity(), listen: ['/ip4/127.0.0.1/tcp/0'], mdns: false, mdnsIntervalMs: 1000 })
  const worker = await createHost({ privateKey: await createIdentity(), listen: ['/ip4/127.0.0.1/tcp/0'], mdns: false, mdnsIntervalMs: 1000 })
  const ht = new RpcTunnelService(head)
  const wt = new RpcTunnelService(worker)
  await wt.serve({ authorize: () => ({ port }) })
  await head.dial(worker.getMultiaddrs()[0])
  const l: TunnelListener = await ht.listen(worker.peerId.toString(), MODEL)
  return { port: l.port, close: async () => { await ht.stop(); await wt.stop(); await head.stop(); await worker.stop() } }
}

/** A plain Node.js relay: every connection to it is piped to loopback `target` (no libp2p). */
async function relay (target: number): Promise<{ port: number, close: () => Promise<void> }> {
  const sockets = new Set<net.Socket>()
  const server = net.createServer(client => {
    const up = net.connect({ host: '127.0.0.1', port: target })
    for (const s of [client, up]) { sockets.add(s); s.setNoDelay(true); s.on('close', () => sockets.delete(s)); s.on('error', () => { client.destroy(); up.destroy() }) }
    client.pipe(up)
    up.pipe(client)
  })
  await new Promise<void>(resolve => server.listen(0, '127.0.0.1', resolve))
  return { port: (server.address() as net.AddressInfo).port, close: async () => { for (const s of sockets) s.destroy(); await new Promise<void>(resolve => server.close(() => resolve())) } }
}

/** An echo server on loopback. */
async function echoServer (): Promise<{ port: number, close: () => Promise<void> }> {
  const sockets = new Set<net.Socket>()
  const server = net.createServer(s => { sockets.add(s); s.setNoDelay(true); s.on('close', () => sockets.delete(s)); s.on('error', () => {}); s.pipe(s) })
  await new Promise<void>(resolve => server.listen(0, '127.0.0.1', resolve))
  return { port: (server.address() as net.AddressInfo).port, close: async () => { for (const s of sockets) s.destroy(); await new Promise<void>(resolve => server.close(() => resolve())) } }
}

/** Median µs of `n` round trips of `size` bytes each way over one connection to `port` (after a warm-up). */
async function pingPong (port: number, size: number, n: number): Promise<number> {
  const socket = net.connect({ host: '127.0.0.1', port })
  socket.setNoDelay(true)
  await new Promise<void>((resolve, reject) => { socket.once('connect', resolve); socket.once('error', reject) })
  const payload = Buffer.alloc(size, 7)
  let want = 0
  let wake: (() => void) | undefined
  socket.on('data', d => { want -= d.byteLength; if (want <= 0) wake?.() })
  const once = async (): Promise<number> => {
    const t0 = performance.now()
    want = size
    await new Promise<void>(resolve => { wake = resolve; socket.write(payload) })
    return (performance.now() - t0) * 1000
  }
  try {
    for (let i = 0; i < 50; i++) await once()
    const us: number[] = []
    for (let i = 0; i < n; i++) us.push(await once())
    return median(us)
  } finally {
    socket.destroy()
  }
}

/** What the delay proxy really adds to a 64 B round trip, per RTT asked for. */
async function proxyRtts (rtts: number[], n: number): Promise<string[]> {
  if (rtts.length === 0) return []
  const echo = await echoServer()
  try {
    const direct = await pingPong(echo.port, 64, Math.min(n, 500))
    const parts: string[] = []
    for (const rtt of rtts) {
      const proxy = await delayProxy(echo.port, rtt)
      try {
        // Fewer round trips: each takes at least the RTT.
        parts.push(`${rtt} ms → ${((await pingPong(proxy.port, 64, Math.min(n, Math.ceil(2000 / rtt))) - direct) / 1000).toFixed(2)} ms`)
      } finally {
        await proxy.close()
      }
    }
    return [`delay proxy, RTT asked → measured (64 B round trip, minus direct): ${parts.join(' · ')}`]
  } finally {
    await echo.close()
  }
}

/** The echo micro-bench: one line per payload size, direct vs two JS relays vs the tunnel. */
async function echoRows (n: number): Promise<string[]> {
  const echo = await echoServer()
  const r2 = await relay(echo.port)
  const r1 = await relay(r2.port)
  const t = await tunnelTo(echo.port)
  try {
    const lines: string[] = []
    for (const size of [64, 64 * 1024]) {
      const direct = await pingPong(echo.port, size, n)
      const relayed = await pingPong(r1.port, size, n)
      const tunnelled = await pingPong(t.port, size, n)
      lines.push(`round trip ${size >= 1024 ? `${size / 1024} KiB` : `${size} B`} each way, median µs: direct ${direct.toFixed(0)} · two JS relays ${relayed.toFixed(0)} (+${(relayed - direct).toFixed(0)}) · tunnel ${tunnelled.toFixed(0)} (+${(tunnelled - direct).toFixed(0)}; tunnel − relays ${(tunnelled - relayed).toFixed(0)})`)
    }
    return lines
  } finally {
    await t.close(); await r1.close(); await r2.close(); await echo.close()
  }
}

export async function run (): Promise<BenchTable> {
  setLogSink(() => {})
  const shapeName = env('BENCH_SPLIT_SHAPE', 'qwen0.5b')
  const shape = SHAPES[shapeName]
  if (shape == null) throw new Error(`unknown BENCH_SPLIT_SHAPE ${shapeName} (have ${Object.keys(SHAPES).join(', ')})`)
  const tokens = Number(env('BENCH_SPLIT_TOKENS', '32'))
  const rounds = Number(env('BENCH_SPLIT_ROUNDS', '3'))
  const rtts = env('BENCH_SPLIT_RTTS', '0,1,5').split(',').map(Number)
  const threads = Number(env('BENCH_THREADS', '1'))
  const echoes = Number(env('BENCH_SPLIT_ECHOES', '2000'))
  const script = path.join(ROOT, 'scripts', 'build-llama-server.sh')
  const llamaServer = (await promisify(execFile)('bash', [script], { cwd: ROOT, maxBuffer: 64 * 1024 * 1024 })).stdout.trim().split('\n').at(-1) ?? ''
  const rpcServer = (await promisify(execFile)('bash', [script, '--rpc-server'], { cwd: ROOT })).stdout.trim().split('\n').at(-1) ?? ''
  const dir = await tempDir('shepherd-bench-split-')
  const model = path.join(dir, `${MODEL}.gguf`)
  try {
    return await measure(model, shape, { tokens, rounds, rtts, threads, echoes, llamaServer, rpcServer })
  } finally {
    // The realistic shape is ~1 GB: never leave it behind.
    await rm(dir, { recursive: true, force: true })
  }
}

async function measure (model: string, shape: { label: string, opts: TinyModelOptions }, o: { tokens: number, rounds: number, rtts: number[], threads: number, echoes: number, llamaServer: string, rpcServer: string }): Promise<BenchTable> {
  const { tokens, rounds, rtts, threads, echoes, llamaServer, rpcServer } = o
  await createTinyModel(model, shape.opts)

  const rows: Cell[][] = []
  let wholeTps = 0
  const configs: Array<{ nodes: number, via: 'direct' | 'tunnel' | 'whole', rtt: number }> = [{ nodes: 1, via: 'whole', rtt: 0 }]
  for (const nodes of [2, 3]) for (const rtt of rtts) for (const via of ['direct', 'tunnel'] as const) configs.push({ nodes, via, rtt })
  for (const c of configs) {
    const links: Links = c.via === 'whole' ? { ports: [], turns: () => null, close: async () => {} } : await workerLinks(rpcServer, c.nodes - 1, c.via, c.rtt, threads)
    const port = await freePort()
    const args = ['--model', model, '--alias', MODEL, '--host', '127.0.0.1', '--port', String(port), '--threads', String(threads), '--ctx-size', '1024', '--parallel', '1']
    // The product's flags (split-node.ts): every node an equal share of the layers, the head's
    // first ones on its own CPU, the rest and the output layer spread over the workers.
    if (links.ports.length > 0) {
      const plan = layerRanges(shape.opts.nLayer ?? TINY_MODEL.nLayer, Array.from({ length: c.nodes }, () => 1))
      args.push('--rpc', links.ports.map(p => `127.0.0.1:${p}`).join(','), '--n-gpu-layers', String(plan.gpuLayers), '--tensor-split', plan.tensorSplit.join(','))
    }
    const log: string[] = []
    const child = spawn(llamaServer, args, { stdio: ['ignore', 'pipe', 'pipe'] })
    child.stdout?.on('data', d => log.push(String(d)))
    child.stderr?.on('data', d => { log.push(String(d)); if (log.length > 200) log.shift() })
    try {
      await waitHealthy(port, child, log)
      await answer(port, 4) // warm-up
      const got: Array<{ ttftMs: number, tokPerS: number }> = []
      const turns0 = links.turns()
      for (let i = 0; i < rounds; i++) got.push(await answer(port, tokens))
      const turns1 = links.turns()
      // Per generated token; the prompt's own turns are a handful per answer and included.
      const perToken = turns0 != null && turns1 != null ? Math.round((turns1 - turns0) / (rounds * tokens) * 10) / 10 : null
      const tps = median(got.map(g => g.tokPerS))
      if (c.via === 'whole') wholeTps = tps
      rows.push([c.via === 'whole' ? 'whole (1 node)' : `split over ${c.nodes}`, c.via === 'whole' ? '—' : c.via, c.rtt, Math.round(median(got.map(g => g.ttftMs)) * 10) / 10, Math.round(tps * 10) / 10, wholeTps > 0 ? Math.round(tps / wholeTps * 1000) / 10 : null, perToken])
    } finally {
      child.kill('SIGKILL')
      await links.close()
    }
  }
  return {
    title: `split: one model over nodes, ${shape.label}, ${tokens} tokens, median of ${rounds}`,
    columns: ['serving', 'link', 'added RTT ms', 'TTFT ms', 'tokens/s', '% of whole', 'RPC round trips/token'],
    rows,
    notes: [
      ...await echoRows(echoes),
      'whole: llama-server alone (the baseline); split: llama-server --rpc to 1 or 2 rpc-servers, equal layer shares per node (the head computes its own share), flags as a head sets them.',
      'tunnel: through /shepherd/rpc-tunnel/1.0.0 between two libp2p hosts (in this process) per worker; direct: plain TCP. Compare each tunnel row with the direct row above it.',
      'added RTT: a userspace delay proxy per worker link (all of it on the way to the worker: Node timers have 1 ms granularity); sch_netem is missing on this VM.',
      ...await proxyRtts(rtts.filter(r => r > 0), echoes),
      'Issue 16 targets: split over 2 at 1 ms ≥ 70 % of whole; tunnel ≤ 10 % slower than direct.'
    ]
  }
}
