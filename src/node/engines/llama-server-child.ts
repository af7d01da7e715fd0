/**
 * One `llama-server` child process of the llama-server engine: spawned tied to this node with a
 * per-child API key, its output kept in a ring of lines, polled until it serves, and stopped
 * (SIGTERM, then SIGKILL). Which children run, restarts and residency stay in the engine
 * (src/node/engines/llama-server.ts).
 */
import { randomBytes } from 'node:crypto'
import type { ChildProcess } from 'node:child_process'
import { createInterface } from 'node:readline'
import { TimeoutError } from '../../errors.js'
import { asRecord } from './llama-server-mapping.js'
import { OpenAIHttpClient } from './openai-http.js'
import { spawnTied, type TiedChild } from './tied-child.js'

/** The last `capacity` lines of a model's children's output. */
export class LineRing {
  private readonly items: string[] = []
  /** Lines ever pushed; marks where one child's output starts. */
  total = 0

  constructor (private readonly capacity: number) {}

  push (line: string): void {
    this.items.push(line)
    this.total++
    if (this.items.length > this.capacity) this.items.shift()
  }

  lines (): string[] {
    return [...this.items]
  }

  /** The lines pushed since `mark` (a past `total`) that are still kept. */
  since (mark: number): string[] {
    return this.items.slice(Math.max(0, this.items.length - (this.total - mark)))
  }
}

export interface ExitInfo {
  code: number | null
  signal: NodeJS.Signals | null
}

export interface RunningProcess {
  child: ChildProcess
  /** Tied to this node (dies with it, kill -9 included); `kill` signals its process group. */
  tied: TiedChild
  pid: number
  port: number
  client: OpenAIHttpClient
  exited: Promise<ExitInfo>
  exit?: ExitInfo
}

/** Waits `ms`, or rejects with the signal's reason once it aborts. */
export const sleep = async (ms: number, signal?: AbortSignal): Promise<void> => {
  await new Promise<void>((resolve, reject) => {
    if (signal?.aborted === true) { reject(signal.reason); return }
    const timer = setTimeout(() => { signal?.removeEventListener('abort', onAbort); resolve() }, ms)
    const onAbort = (): void => { clearTimeout(timer); reject(signal?.reason) }
    signal?.addEventListener('abort', onAbort, { once: true })
  })
}

/** Rejects with the signal's reason if it aborts before `promise` settles. */

/** How to start one child. */
export interface ChildSpec {
  binary: string
  args: string[]
  /** Added to the environment (the API key is added here). */
  env: Record<string, string>
  host: string
  port: number
  /** The model's output ring; lines get `prefix` (e.g. `[embeddings] `). */
  ring: LineRing
  prefix: string
  /** For messages: `llama-server for '<name>'`. */
  name: string
  requestTimeoutMs: number
}

/** Starts a child; `exited` settles when it is gone and its output read to the end. */
export function spawnLlamaServer (spec: ChildSpec): RunningProcess {
  const { ring, prefix } = spec
  ring.push(`${prefix}[shepherd] starting ${spec.binary} ${spec.args.join(' ')}`)
  // A key per child keeps other local processes (and web pages, llama-server allowing any
  // CORS origin) from using it; in the environment, not on the command line, which anyone sees.
  const apiKey = randomBytes(24).toString('hex')
  // Tied to this node: a node killed with -9 takes its children with it.
  const tied = spawnTied(spec.binary, spec.args, { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...spec.env, LLAMA_API_KEY: apiKey } })
  const child = tied.child
  for (const stream of [child.stdout, child.stderr]) {
    if (stream === null) continue
    createInterface({ input: stream, crlfDelay: Infinity }).on('line', line => { ring.push(prefix + line) })
  }
  const proc: RunningProcess = {
    child,
    tied,
    pid: child.pid ?? -1,
    port: spec.port,
    client: new OpenAIHttpClient({
      baseUrl: `http://${spec.host.includes(':') ? `[${spec.host}]` : spec.host}:${spec.port}`,
      apiKey,
      timeoutMs: spec.requestTimeoutMs,
      name: `llama-server for '${spec.name}'`
    }),
    exited: new Promise<ExitInfo>(resolve => {
      const done = (info: ExitInfo): void => {
        if (proc.exit !== undefined) return
        proc.exit = info
        ring.push(`${prefix}[shepherd] exited (${info.signal ?? `code ${String(info.code)}`})`)
        resolve(info)
      }
      // `close`, not `exit`: by then its output is read to the end, last words included.
      child.once('close', (code: number | null, signal: NodeJS.Signals | null) => { done({ code, signal }) })
      // A binary that cannot be run at all emits `error` and never `exit`.
      child.once('error', err => {
        ring.push(`${prefix}[shepherd] ${err.message}`)
        done({ code: null, signal: null })
      })
    })
  }
  return proc
}

/**
 * Polls `/health` until 200, the child exits, the load times out or `stop` aborts; then reads
 * the per-slot context the child reports (`/props`), undefined when it says none.
 */
export async function waitUntilServing (proc: RunningProcess, opts: { name: string, stop: AbortSignal, loadTimeoutMs: number, pollMs: number }): Promise<number | undefined> {
  const deadline = Date.now() + opts.loadTimeoutMs
  const stop = opts.stop
  const exited = proc.exited.then(info => { throw new Error(`llama-server exited (${info.signal ?? `code ${String(info.code)}`}) before it was ready`) })
  exited.catch(() => {})
  while (true) {
    stop.throwIfAborted()
    if (proc.exit !== undefined) await exited
    if (Date.now() > deadline) throw new TimeoutError(`llama-server for '${opts.name}' was not ready within ${opts.loadTimeoutMs} ms`)
    const ok = await fetch(`${proc.client.baseUrl}/health`, { signal: AbortSignal.any([stop, AbortSignal.timeout(1000)]) })
      .then(async res => { await res.body?.cancel(); return res.status === 200 })
      .catch(() => false)
    if (ok) break
    await Promise.race([sleep(opts.pollMs, stop), exited])
  }
  let contextSize: number | undefined
  try {
    const props = asRecord(await proc.client.getJson('/props', { signal: stop, timeoutMs: 5000 }))
    const n = (props.default_generation_settings as { n_ctx?: unknown } | undefined)?.n_ctx
    if (typeof n === 'number' && n > 0) contextSize = n
  } catch (err) {
    if (stop.aborted) throw err
  }
  // Dying after /health said yes is dying before ready: nothing would notice it otherwise.
  if (proc.exit !== undefined) await exited
  return contextSize
}

/** SIGTERM, then SIGKILL after `graceMs`; resolves once the child is gone. */
export async function stopChild (proc: RunningProcess, graceMs: number): Promise<void> {
  if (proc.exit !== undefined) return
  proc.tied.kill('SIGTERM')
  const timer = setTimeout(() => { if (proc.exit === undefined) proc.tied.kill('SIGKILL') }, graceMs)
  try {
    await proc.exited
  } finally {
    clearTimeout(timer)
  }
}
