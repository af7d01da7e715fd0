/**
 * The worker side of a split replica (issue 16): one llama.cpp `rpc-server` per model this node
 * agreed to serve, bound to 127.0.0.1 on a port of its own and tied to the node (it dies with
 * it, kill -9 included), plus the grants the tunnel checks: a tunnel for model M is accepted
 * only from the head the leader named in its signed `serve_rpc` command for M.
 */
import { readFileSync } from 'node:fs'
import { access, constants } from 'node:fs/promises'
import { dirname, join } from 'node:path'
import net from 'node:net'
import { createInterface } from 'node:readline'
import { createLogger } from '../../logger.js'
import { SPLIT_CODES, ShepherdError } from '../../errors.js'
import { freePort, isAddressInUse } from '../engines/ports.js'
import { spawnTied, type TiedChild } from '../engines/tied-child.js'
import type { TunnelVerdict } from '../../p2p/index.js'

const log = createLogger('node:rpc-worker')

export const RPC_WORKER_DEFAULTS = Object.freeze({
  /** rpc-server binds at once; this covers a busy machine. */
  readyTimeoutMs: 30_000,
  portAttempts: 3,
  /** Lines of rpc-server output kept per model, for errors. */
  logLines: 50
})

export interface RpcWorkerOptions {
  /** The rpc-server binary; resolved lazily by {@link findRpcServer} when omitted. */
  rpcServerPath?: string
  /** llama-server builds this node found: rpc-server is looked for beside them. */
  llamaServerPaths?: () => string[]
  threads: number
}

interface Grant {
  model: string
  head: string
  port: number
  /** When it began serving this head (ms): a move to a new head restarts the idle clock. */
  startedAt: number
  proc: TiedChild
  lines: string[]
  exited: boolean
  /** Resolves once rpc-server accepts connections. */
  ready: Promise<void>
}

/** The rpc-server beside a llama-server build (the build script puts both in one folder), or undefined. */
export async function findRpcServer (configured: string | undefined, llamaServerPaths: string[]): Promise<string | undefined> {
  const candidates = configured != null && configured !== '' ? [configured] : llamaServerPaths.flatMap(p => [join(dirname(p), 'rpc-server'), join(dirname(p), 'ggml-rpc-server')])
  for (const c of candidates) {
    try {
      await access(c, constants.X_OK)
      return c
    } catch {}
  }
  return undefined
}

async function accepts (port: number): Promise<boolean> {
  return await new Promise(resolve => {
    const s = net.connect({ host: '127.0.0.1', port })
    s.once('connect', () => { s.destroy(); resolve(true) })
    s.once('error', () => { resolve(false) })
  })
}

/** rpc-server processes and the grants that let a head's tunnel reach them. */
export class RpcWorker {
  private readonly grants = new Map<string, Grant>()
  private path?: string

  constructor (private readonly opts: RpcWorkerOptions) {}

  /** Models served for heads now: `{ model, head, port, startedAt }`. */
  list (): Array<{ model: string, head: string, port: number, startedAt: number }> {
    return [...this.grants.values()].filter(g => !g.exited).map(g => ({ model: g.model, head: g.head, port: g.port, startedAt: g.startedAt }))
  }

  /**
   * Resident memory of this node's rpc-servers together (bytes; Linux `/proc`, 0 elsewhere):
   * the tensors they hold for heads, which the node's own model list does not show.
   */
  memoryBytes (): number {
    let sum = 0
    for (const g of this.grants.values()) {
      if (g.exited || g.proc.pid <= 0) continue
      try {
        const m = /^VmRSS:\s+(\d+) kB$/m.exec(readFileSync(`/proc/${g.proc.pid}/status`, 'utf8'))
        if (m != null) sum += Number(m[1]) * 1024
      } catch {}
    }
    return sum
  }

  /** The tunnel's question: may `peer` reach the rpc-server for `model`? */
  authorize (peer: string, model: string): TunnelVerdict {
    const g = this.grants.get(model)
    if (g == null) return { refused: `this node serves no split of '${model}'` }
    if (g.head !== peer) return { refused: `the split of '${model}' here is served for another head` }
    if (g.exited) return { refused: `the rpc-server for '${model}' is not running` }
    return { port: g.port }
  }

  /**
   * Serves `model` for `head` (the leader's signed command): starts an rpc-server for it, or
   * moves an existing one to the new head (the old head's tunnels are refused from then on).
   * Resolves once it accepts connections.
   */
  async serve (model: string, head: string): Promise<{ port: number }> {
    const existing = this.grants.get(model)
    if (existing != null && !existing.exited) {
      if (existing.head !== head) existing.startedAt = Date.now()
      existing.head = head
      await existing.ready
      return { port: existing.port }
    }
    const path = await this.binary()
    for (let attempt = 1; ; attempt++) {
      const port = await freePort('127.0.0.1')
      const g = this.start(path, model, head, port)
      this.grants.set(model, g)
      try {
        await g.ready
        log.info('rpc-server started', { model, head, port, pid: g.proc.pid })
        return { port }
      } catch (err) {
        g.proc.kill('SIGKILL')
        if (this.grants.get(model) === g) this.grants.delete(model)
        if (attempt < RPC_WORKER_DEFAULTS.portAttempts && isAddressInUse(g.lines.join('\n'))) continue
        throw new ShepherdError(`rpc-server for '${model}' failed to start: ${(err as Error).message}\n${g.lines.slice(-10).join('\n')}`, { code: SPLIT_CODES.rpcServerFailed, status: 500 })
      }
    }
  }

  /** Stops serving `model` (or only when it is served for `head`, when given). */
  release (model: string, head?: string): boolean {
    const g = this.grants.get(model)
    if (g == null || (head != null && g.head !== head)) return false
    this.grants.delete(model)
    g.proc.kill('SIGKILL')
    log.info('rpc-server stopped', { model, head: g.head })
    return true
  }

  /** A head is gone (dead or left): what this node served for it goes too. */
  releaseHead (head: string): void {
    for (const g of [...this.grants.values()]) if (g.head === head) this.release(g.model, head)
  }

  close (): void {
    for (const model of [...this.grants.keys()]) this.release(model)
  }

  private async binary (): Promise<string> {
    this.path ??= await findRpcServer(this.opts.rpcServerPath, this.opts.llamaServerPaths?.() ?? [])
    if (this.path == null) throw new ShepherdError('No llama.cpp rpc-server binary was found (build it with scripts/build-llama-server.sh, or set engine.rpc_server)', { code: SPLIT_CODES.rpcServerMissing, status: 503 })
    return this.path
  }

  private start (path: string, model: string, head: string, port: number): Grant {
    // 127.0.0.1 only: rpc-server has no authentication, the tunnel is its only way in.
    const proc = spawnTied(path, ['--host', '127.0.0.1', '--port', String(port), '--threads', String(Math.max(1, this.opts.threads))], { stdio: ['ignore', 'pipe', 'pipe'] })
    const lines: string[] = []
    for (const stream of [proc.child.stdout, proc.child.stderr]) {
      if (stream == null) continue
      createInterface({ input: stream, crlfDelay: Infinity }).on('line', line => {
        lines.push(line)
        if (lines.length > RPC_WORKER_DEFAULTS.logLines) lines.shift()
      })
    }
    const g: Grant = { model, head, port, startedAt: Date.now(), proc, lines, exited: false, ready: Promise.resolve() }
    proc.child.once('exit', (code, signal) => {
      g.exited = true
      log.warn('rpc-server exited', { model, code, signal })
      if (this.grants.get(model) === g) this.grants.delete(model)
    })
    proc.child.once('error', () => { g.exited = true })
    g.ready = (async () => {
      const deadline = Date.now() + RPC_WORKER_DEFAULTS.readyTimeoutMs
      while (!(await accepts(port))) {
        if (g.exited) throw new Error('rpc-server exited before it listened')
        if (Date.now() > deadline) throw new Error('rpc-server did not listen in time')
        await new Promise(resolve => setTimeout(resolve, 50))
      }
    })()
    return g
  }
}
