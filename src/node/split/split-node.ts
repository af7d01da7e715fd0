/**
 * A node's part in split replicas (issue 16), both roles:
 * - worker: `serve_rpc` (a signed command from the group's leader) starts an rpc-server for a
 *   model and grants its head the tunnel; the tunnel handler asks {@link RpcWorker.authorize};
 * - head: `load_model` with a `split` opens one loopback tunnel listener per worker, works out
 *   the layer ranges from the model's header, and gives llama-server `--rpc`, `--tensor-split`
 *   and `--n-gpu-layers` for that model. The shards are announced in the snapshot.
 * A worker that goes away (dead, left) takes the head's replica with it: the head unloads it,
 * its streams end with an error, and the leader places the replica again.
 */
import { createLogger } from '../../logger.js'
import { SPLIT_CODES, ShepherdError } from '../../errors.js'
import type { Mesh, TunnelListener } from '../../p2p/index.js'
import { readGgufHeader } from '../resources/gguf.js'
import { layerRanges } from './layers.js'
import { RpcWorker, type RpcWorkerOptions } from './rpc-worker.js'
import { RPC_IDLE_DEFAULTS, headNamesWorker, idleGrants } from './rpc-idle.js'

const log = createLogger('node:split')

/** One node's part of a split replica, as snapshots and `/api/models` show it. */
export interface Shard {
  nodeId: string
  /** Inclusive layer range; null for a node that holds only buffers (no whole layer). */
  layers: [number, number] | null
}

/** `load_model`'s split: the workers in order and every node's fraction, the head's first. */
export interface SplitSpec {
  workers: string[]
  fractions: number[]
}

/** What the head needs of its engine: per-model flags (the llama-server engine has them). */
export interface SplitCapableEngine {
  setModelArgs: (model: string, args: string[] | undefined) => void
  unload: (model: string) => Promise<boolean>
}

export function isSplitCapable (engine: unknown): engine is SplitCapableEngine {
  return typeof (engine as SplitCapableEngine | null)?.setModelArgs === 'function'
}

interface HeadState {
  workers: string[]
  listeners: TunnelListener[]
  shards: Shard[]
  engine: SplitCapableEngine
}

export interface SplitNodeDeps extends RpcWorkerOptions {
  mesh: Mesh<any>
  selfId: () => string
  /** A member asked for a tunnel it was not granted: audited. */
  audit: (peer: string, detail: string) => void
  /** Shards changed: publish a snapshot. */
  changed: () => void
  /** Idle rpc-server timings (tests shorten them); default {@link RPC_IDLE_DEFAULTS}. */
  idle?: Partial<typeof RPC_IDLE_DEFAULTS>
}

export class SplitNode {
  readonly worker: RpcWorker
  private readonly heads = new Map<string, HeadState>()
  private sweepTimer?: NodeJS.Timeout
  private rpcBytes = 0

  constructor (private readonly d: SplitNodeDeps) {
    this.worker = new RpcWorker(d)
  }

  async start (): Promise<void> {
    await this.d.mesh.rpcTunnel.serve({
      authorize: (peer, model) => this.worker.authorize(peer, model),
      onRefused: (peer, model, reason) => { this.d.audit(peer, `rpc tunnel for '${model}': ${reason}`) }
    })
    this.sweepTimer = setInterval(() => { this.sweepIdle() }, this.d.idle?.sweepMs ?? RPC_IDLE_DEFAULTS.sweepMs)
    this.sweepTimer.unref()
  }

  /**
   * Stops the rpc-servers whose split has moved on (rpc-idle.ts), and refreshes what the ones
   * left hold in memory (gossiped, so placement counts it against this node's budget).
   */
  sweepIdle (now = Date.now()): string[] {
    const grants = this.worker.list()
    if (grants.length === 0 && this.rpcBytes === 0) return []
    const self = this.d.selfId()
    const peers = new Map(this.d.mesh.peers().map(p => [p.id, p]))
    const uses = grants.map(g => ({
      ...g,
      ...this.d.mesh.rpcTunnel.usage(g.head, g.model),
      headNamesMe: headNamesWorker((peers.get(g.head)?.snapshot as { models?: unknown } | null)?.models, g.model, self)
    }))
    const stale = idleGrants(uses, now, { ...RPC_IDLE_DEFAULTS, ...this.d.idle })
    for (const g of stale) {
      log.info('stopping an idle rpc-server: its split has moved on', { model: g.model, head: g.head })
      this.worker.release(g.model, g.head)
    }
    const bytes = this.worker.memoryBytes()
    // Republish only on a real change (a stop, or more than a MiB either way): a snapshot is gossip.
    if (stale.length > 0 || Math.abs(bytes - this.rpcBytes) > 2 ** 20) { this.rpcBytes = bytes; this.d.changed() }
    return stale.map(g => g.model)
  }

  /** Resident memory of this node's rpc-servers (bytes), as of the last sweep. */
  rpcServerBytes (): number {
    return this.rpcBytes
  }

  async stop (): Promise<void> {
    clearInterval(this.sweepTimer)
    this.worker.close()
    for (const model of [...this.heads.keys()]) await this.releaseHead(model, false)
  }

  /** `serve_rpc` from the leader: serve `model` for `head` (or stop, when `stop`). */
  async serveRpc (model: string, head: string, stop: boolean): Promise<{ serving: boolean, port?: number }> {
    if (stop) {
      this.worker.release(model, head)
      this.d.changed()
      return { serving: false }
    }
    if (head === this.d.selfId()) throw new ShepherdError('a node cannot be a worker of its own split', { code: SPLIT_CODES.invalidSplit, status: 400 })
    const { port } = await this.worker.serve(model, head)
    this.d.changed()
    return { serving: true, port }
  }

  /**
   * Before the head's engine loads `model` as a split: tunnels to the workers and the flags that
   * point llama-server at them. Replaces an earlier split of the same model.
   */
  async prepareHead (model: string, path: string, spec: SplitSpec, engine: SplitCapableEngine): Promise<Shard[]> {
    if (spec.workers.length === 0 || spec.fractions.length !== spec.workers.length + 1) {
      throw new ShepherdError('a split names its workers and one fraction per node (the head first)', { code: SPLIT_CODES.invalidSplit, status: 400 })
    }
    if (spec.workers.includes(this.d.selfId())) throw new ShepherdError('the head cannot be its own worker', { code: SPLIT_CODES.invalidSplit, status: 400 })
    await this.releaseHead(model, false)
    const header = await readGgufHeader(path)
    const blocks = Number(header.metadata.get(`${header.architecture ?? ''}.block_count`))
    if (!Number.isInteger(blocks) || blocks < 1) throw new ShepherdError(`'${model}' does not say how many layers it has; it cannot be split`, { code: SPLIT_CODES.invalidSplit, status: 400 })
    const plan = layerRanges(blocks, spec.fractions)
    const listeners: TunnelListener[] = []
    try {
      for (const w of spec.workers) listeners.push(await this.d.mesh.rpcTunnel.listen(w, model))
    } catch (err) {
      await Promise.allSettled(listeners.map(async l => { await l.close() }))
      throw err
    }
    const args = [
      '--rpc', listeners.map(l => `127.0.0.1:${l.port}`).join(','),
      '--n-gpu-layers', String(plan.gpuLayers),
      '--tensor-split', plan.tensorSplit.join(',')
    ]
    engine.setModelArgs(model, args)
    const nodes = [this.d.selfId(), ...spec.workers]
    const shards = nodes.map((nodeId, i) => ({ nodeId, layers: plan.ranges[i] }))
    this.heads.set(model, { workers: [...spec.workers], listeners, shards, engine })
    log.info('split head prepared', { model, workers: spec.workers, layers: shards.map(s => s.layers), args })
    this.d.changed()
    return shards
  }

  /** The head side of `model` ends: tunnels closed, flags cleared, the engine's copy unloaded when `unload`. */
  async releaseHead (model: string, unload = true): Promise<void> {
    const h = this.heads.get(model)
    if (h == null) return
    this.heads.delete(model)
    h.engine.setModelArgs(model, undefined)
    if (unload) await h.engine.unload(model).catch(err => { log.warn('unload of a split replica failed', { model, err }) })
    await Promise.allSettled(h.listeners.map(async l => { await l.close() }))
    this.d.changed()
  }

  /** The shards of a split replica this node heads, or undefined. */
  shardsOf (model: string): Shard[] | undefined {
    return this.heads.get(model)?.shards
  }

  /**
   * A peer is gone. As a worker: what it headed is released. As a head: every split that
   * used it as a worker is unloaded now (its streams end with an error instead of hanging on
   * a dead RPC connection), so the leader sees the replica gone and places it again.
   */
  async peerGone (peer: string): Promise<void> {
    this.worker.releaseHead(peer)
    for (const [model, h] of [...this.heads]) {
      if (!h.workers.includes(peer)) continue
      log.warn('a worker of a split replica is gone; unloading it', { model, worker: peer })
      await this.releaseHead(model, true)
    }
  }
}
