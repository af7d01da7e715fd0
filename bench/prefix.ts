/**
 * Prefix-aware routing (issue 12 item 4): multi-turn conversations with a long system prompt
 * through an entry node (`--engine none`) to two replicas of one model (two host nodes, each
 * copy loaded by a warm-up request to its own node). Each conversation sends 4 turns, each turn carrying the whole
 * conversation so far; the time to first token of turns 2-4 shows whether the replica that
 * answers still holds the conversation's prefix in its KV cache.
 *
 * Two entry nodes share the mesh: one routes with prefix-aware routing (the default), the other
 * with `--no-prefix-routing` (least-loaded alone). Each mode gets its own system prompt and
 * conversations, so a replica's cache never helps the other mode; the modes alternate by round.
 *
 * Sizes (environment): PREFIX_BENCH_MODEL (`tiny` | `27M`, default 27M), PREFIX_BENCH_SYSTEM_CHARS
 * (default 4000), PREFIX_BENCH_CONVERSATIONS (concurrent per round, default 4), PREFIX_BENCH_ROUNDS
 * (default 2), PREFIX_BENCH_ENGINE (`embedded` | `llama-server`, default embedded),
 * PREFIX_BENCH_THREADS (default 1).
 */
import path from 'node:path'
import { getJson, startNode, stopNode, tempDir, waitFor, type NodeProcess } from '../test/support/cluster.js'
import { createTinyModel, type TinyModelOptions } from '../test/support/tiny-model.js'
import { summarize, round } from './latency-stats.js'
import type { BenchTable, Cell } from './table.js'
import { parseSse } from '../src/node/engines/openai-http.js'

const MODEL = 'bench-prefix'
const TURNS = 4
const MAX_TOKENS = 8
const SHAPES: Record<string, { label: string, opts: TinyModelOptions }> = {
  tiny: { label: 'tiny (64 embd, 2 layers)', opts: { contextLength: 8192 } },
  '27M': { label: '27M (512 embd, 8 layers)', opts: { nEmbd: 512, nLayer: 8, nHead: 8, nFf: 1536, contextLength: 8192 } }
}
/** The tiny vocabulary's end of turn and its high byte tokens (invalid UTF-8 alone): never sampled. */
const BANNED: Record<string, number> = { 260: -100, ...Object.fromEntries(Array.from({ length: 128 }, (_, b) => [String(3 + 128 + b), -100])) }

function env (name: string, fallback: string): string {
  const v = process.env[name]
  return v === undefined || v === '' ? fallback : v
}

interface Message { role: string, content: string }
interface Turn { mode: Mode, turn: number, ttft: number, host: string, firstHost: string }
type Mode = 'prefix' | 'least-loaded'

/** A system prompt of about `chars` characters, different per seed (so modes share no prefix). */
function systemPrompt (chars: number, seed: string): string {
  const words = ['careful', 'assistant', 'answer', 'briefly', 'cite', 'sources', 'mesh', 'replica', 'cache', 'token', 'prompt', 'context']
  const out: string[] = [`You are assistant ${seed}.`]
  let n = out[0].length
  for (let i = 0; n < chars; i++) {
    const w = words[(i * 7 + seed.length * 3 + i * i) % words.length]
    out.push(w)
    n += w.length + 1
  }
  return out.join(' ')
}

/** One streamed turn: time to the first content chunk, the host, and the answer's text. */
async function ask (api: string, messages: Message[]): Promise<{ ttft: number, host: string, text: string }> {
  const t0 = performance.now()
  const res = await fetch(`${api}/v1/chat/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ model: MODEL, messages, stream: true, max_tokens: MAX_TOKENS, temperature: 0, seed: 1, logit_bias: BANNED }),
    signal: AbortSignal.timeout(300_000)
  })
  if (res.status !== 200) throw new Error(`turn answered ${res.status}: ${await res.text()}`)
  const host = res.headers.get('x-shepherd-host') ?? ''
  let ttft = NaN
  let text = ''
  for await (const event of parseSse(res.body as unknown as AsyncIterable<Uint8Array>)) {
    if (event.data === '[DONE]') continue
    const chunk = JSON.parse(event.data) as { choices?: Array<{ delta?: { content?: string } }>, error?: { message: string } }
    if (chunk.error != null) throw new Error(`stream error: ${chunk.error.message}`)
    const piece = chunk.choices?.[0]?.delta?.content
    if (typeof piece === 'string' && piece !== '') {
      if (Number.isNaN(ttft)) ttft = performance.now() - t0
      text += piece
    }
  }
  return { ttft, host, text }
}

/** One conversation of {@link TURNS} turns; each turn carries the whole conversation so far. */
async function conversation (api: string, mode: Mode, system: string, id: string): Promise<Turn[]> {
  const messages: Message[] = [{ role: 'system', content: system }]
  const turns: Turn[] = []
  let firstHost = ''
  for (let turn = 1; turn <= TURNS; turn++) {
    messages.push({ role: 'user', content: `Conversation ${id}, question ${turn}: what comes next?` })
    const r = await ask(api, messages)
    if (turn === 1) firstHost = r.host
    turns.push({ mode, turn, ttft: r.ttft, host: r.host, firstHost })
    messages.push({ role: 'assistant', content: r.text === '' ? '…' : r.text })
  }
  return turns
}

export async function run (): Promise<BenchTable> {
  const shapeName = env('PREFIX_BENCH_MODEL', '27M')
  const shape = SHAPES[shapeName]
  if (shape == null) throw new Error(`PREFIX_BENCH_MODEL must be one of ${Object.keys(SHAPES).join(', ')}`)
  const systemChars = Number(env('PREFIX_BENCH_SYSTEM_CHARS', '4000'))
  const conversations = Number(env('PREFIX_BENCH_CONVERSATIONS', '4'))
  const rounds = Number(env('PREFIX_BENCH_ROUNDS', '2'))
  const engine = env('PREFIX_BENCH_ENGINE', 'embedded')
  const threads = env('PREFIX_BENCH_THREADS', '1')
  const dirs = await Promise.all([0, 1].map(async () => await tempDir('shepherd-bench-prefix-')))
  // The same file on both hosts (same seed: the same fingerprint), so they are replicas.
  await Promise.all(dirs.map(async d => await createTinyModel(path.join(d, `${MODEL}.gguf`), shape.opts)))
  const nodes: NodeProcess[] = []
  try {
    // Each node is listed as soon as it runs, so a failed start stops the ones before it.
    const started = async (opts: Parameters<typeof startNode>[0]): Promise<NodeProcess> => { const n = await startNode(opts); nodes.push(n); return n }
    const on = await started({ name: 'prefix-entry-on', args: ['--engine', 'none', '--prefix-routing'] })
    const boot = ['--bootstrap', `/ip4/127.0.0.1/tcp/${on.p2pPort}`]
    const off = await started({ name: 'prefix-entry-off', args: [...boot, '--engine', 'none', '--no-prefix-routing'] })
    await Promise.all([0, 1].map(async i => await started({
      name: `prefix-host-${'bc'[i]}`,
      args: [...boot, '--engine', engine, '--models-dir', dirs[i], '--threads', threads, '--context-size', '8192', '--keep-alive-ms', '600000'],
      timeoutMs: 60_000
    })))
    await waitFor('both entries to see two replicas', async () => {
      for (const e of [on, off]) {
        const { models } = await getJson<{ models: Array<{ name: string, hosts: unknown[] }> }>(`${e.api}/api/models`)
        if (models.find(m => m.name === MODEL)?.hosts.length !== 2) return false
      }
      return true
    }, 30_000)
    // Both copies loaded before anything is measured: one request to each host's own API (a
    // node serves its own clients from its own copy), and a long keep-alive keeps them.
    await Promise.all(nodes.slice(2).map(async h => { await ask(h.api, [{ role: 'user', content: 'warm up' }]) }))
    await waitFor('both replicas loaded', async () => {
      const { models } = await getJson<{ models: Array<{ name: string, hosts: Array<{ state: string }> }> }>(`${off.api}/api/models`)
      const replicas = models.find(m => m.name === MODEL)?.hosts ?? []
      return replicas.length === 2 && replicas.every(h => h.state === 'loaded')
    }, 120_000)

    const all: Turn[] = []
    try {
      await measure()
    } catch (err) {
      // What the nodes said is what explains a failed turn.
      const said = nodes.map(n => `${n.name}: ${n.stderr.join('').split('\n').filter(l => l !== '').slice(-5).join('\n  ')}`).join('\n')
      throw new Error(`${(err as Error).message}\n${said}`)
    }
    async function measure (): Promise<void> {
      for (let r = 0; r < rounds; r++) {
        // Alternate which mode goes first, so neither always meets a busier machine.
        const order: Array<[Mode, NodeProcess]> = r % 2 === 0 ? [['prefix', on], ['least-loaded', off]] : [['least-loaded', off], ['prefix', on]]
        for (const [mode, entry] of order) {
          const system = systemPrompt(systemChars, `${mode}-${r}`)
          const results = await Promise.all(Array.from({ length: conversations }, async (_, i) => await conversation(entry.api, mode, system, `${r}.${i}`)))
          all.push(...results.flat())
        }
      }
    }

    const rows: Cell[][] = []
    const stats = (mode: Mode, turns: number[]): { p50: number | null, mean: number | null, same: number | null, n: number } => {
      const picked = all.filter(t => t.mode === mode && turns.includes(t.turn) && Number.isFinite(t.ttft))
      const s = summarize(picked.map(t => t.ttft))
      const later = picked.filter(t => t.turn > 1)
      return { p50: round(s.p50), mean: round(picked.reduce((a, t) => a + t.ttft, 0) / Math.max(1, picked.length)), same: later.length === 0 ? null : round(100 * later.filter(t => t.host === t.firstHost).length / later.length), n: picked.length }
    }
    for (const [label, turns] of [['turn 1', [1]], ['turns 2-4', [2, 3, 4]], ['turn 4', [4]]] as const) {
      const p = stats('prefix', [...turns])
      const l = stats('least-loaded', [...turns])
      rows.push([label, p.p50, l.p50, p.mean, l.mean, p.p50 != null && l.p50 != null && p.p50 > 0 ? round(l.p50 / p.p50, 2) : null, p.same, l.same, p.n])
    }
    return {
      title: `Prefix-aware routing: TTFT of a ${TURNS}-turn conversation, 2 replicas (${shape.label}, ${engine})`,
      columns: ['turns', 'prefix p50 ms', 'least-loaded p50 ms', 'prefix mean ms', 'least-loaded mean ms', 'least-loaded/prefix p50', 'prefix same host %', 'least-loaded same host %', 'samples/mode'],
      rows,
      notes: [
        `Loopback: two entry nodes (--engine none; one --prefix-routing, one --no-prefix-routing) and two hosts with the same model file (--engine ${engine}, --threads ${threads}, each copy loaded by a warm-up request before the rounds).`,
        `${rounds} round(s); per round and mode, ${conversations} concurrent conversations of ${TURNS} streamed turns (system prompt ~${systemChars} chars, ${MAX_TOKENS} tokens per answer, temperature 0); each mode has its own system prompt.`,
        'TTFT: request sent to first content chunk at the client. "same host %": turns 2-4 answered by the replica of the conversation\'s turn 1.'
      ]
    }
  } finally {
    await Promise.all(nodes.map(async n => await stopNode(n, 'SIGKILL')))
  }
}
