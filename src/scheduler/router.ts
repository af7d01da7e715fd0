import { ModelNotFoundError, NoHealthyHostError, ShepherdError } from '../errors.js'
import { createLogger } from '../logger.js'
import type { InferenceReply, InferenceRequestFrame } from '../p2p/index.js'
import type { MeshNode } from '../node/index.js'
import { orderHosts, stateRank, type BalanceStrategy } from './balancer.js'
import { CircuitBreaker } from './circuit-breaker.js'
import { buildModelRegistry, pinnedHosts, type MeshModel, type ModelHost } from './model-registry.js'

export interface RouterOptions {
  /** A strategy, or a getter when it can change at run time. */
  strategy: BalanceStrategy | (() => BalanceStrategy)
  breakerFailures: number
  breakerCooldownMs: number
  /** Time allowed to open a stream to a peer. */
  connectTimeoutMs?: number
  /** Time allowed until a peer's first response frame (a model load may be part of it). */
  firstByteTimeoutMs?: number
}

/** Where a request went, for the `x-shepherd-host` header and the metrics. */
export interface RouteResult {
  reply: InferenceReply
  host: ModelHost
  attempts: number
}

/** Whether a failure before the first byte is worth a second replica. */
function retriable (err: unknown): boolean {
  if (!(err instanceof ShepherdError)) return true
  // A stale registry (the host no longer has it) is worth another replica; a client that left is not.
  if (err.code === 'model_not_found') return true
  if (err.code === 'client_closed') return false
  return err.status >= 500 || err.status === 429
}

/** Whether a failure says something about the host's health (for the circuit breaker). */
function hostFault (err: unknown): boolean {
  return !(err instanceof ShepherdError) || err.status >= 500
}

/**
 * Sends each request to the best host of its model: this node when it serves the model and has
 * room, else a replica picked by the balancing strategy among alive peers whose breaker is
 * closed. A failure before the first byte is retried once on another replica.
 */
export class Router {
  readonly breaker: CircuitBreaker
  private readonly inflight = new Map<string, number>()
  private counter = 0
  private readonly log = createLogger('scheduler:router')
  readonly stats = { local: 0, remote: 0, retries: 0, failures: 0 }

  constructor (private readonly node: MeshNode, private readonly opts: RouterOptions) {
    this.breaker = new CircuitBreaker(opts.breakerFailures, opts.breakerCooldownMs)
  }

  private cached?: { at: number, models: Map<string, MeshModel> }
  /** The fingerprint last chosen per model name: a later file that only ties it does not take over. */
  private readonly chosen = new Map<string, string>()

  /**
   * Every model in the mesh with its replicas and conflicts. Rebuilt at most every 100 ms: it
   * changes with snapshots and heartbeats (1 s), and rebuilding per request cost ~6% of the CPU of
   * a relayed request. This node's own in-flight counts are applied per request, not cached.
   */
  models (): Map<string, MeshModel> {
    const now = performance.now()
    if (this.cached == null || now - this.cached.at > 100) {
      const models = buildModelRegistry(this.node.self(), this.node.peers(), {
        deployed: name => this.node.deployments.get(name)?.fingerprint,
        incumbent: name => this.chosen.get(name)
      })
      for (const name of this.chosen.keys()) if (!models.has(name)) this.chosen.delete(name)
      for (const m of models.values()) if (m.fingerprint != null) this.chosen.set(m.name, m.fingerprint)
      this.cached = { at: now, models }
    }
    return this.cached.models
  }

  /**
   * The hosts to try, best first: those with the file the mesh chose for the name, or with the
   * file the client pinned (`fingerprint`: a sha256 or a unique prefix of at least 12 hex digits).
   */
  candidates (model: string, fingerprint?: string): ModelHost[] {
    const entry = this.models().get(model)
    if (entry == null) throw new ModelNotFoundError(model)
    if (fingerprint == null && entry.fingerprint == null) {
      const files = [...new Set(entry.conflicts.map(h => h.fingerprint.slice(0, 12)))].join(', ')
      throw new ShepherdError(`Members serve different files named '${model}' (${files}) and none is deployed; pin one with the x-shepherd-model-fingerprint header`, { code: 'model_ambiguous', status: 409, param: 'model' })
    }
    const hosts = fingerprint != null ? pinnedHosts(entry, fingerprint) : entry.hosts
    const local = hosts.find(h => h.local)
    const admission = this.node.hub.admission
    const remote = hosts.filter(h => !h.local && !this.breaker.isOpen(h.peerId))
    const strategy = typeof this.opts.strategy === 'function' ? this.opts.strategy() : this.opts.strategy
    const ordered = orderHosts(remote, strategy, { inflight: id => this.inflight.get(id) ?? 0, counter: this.counter++ })
    // Local first while it has room and its copy is as ready as the best replica's: a local file
    // on disk must not be loaded while a loaded replica is one hop away (that would add a copy).
    if (local == null) return ordered
    const readier = ordered.length > 0 && stateRank(ordered[0]) < stateRank(local)
    return admission.active < admission.maxConcurrent && !readier ? [local, ...ordered] : [...ordered, local]
  }

  /** Runs `req` on the best host; `opts.fingerprint` pins the file (see `candidates`). */
  async route (req: InferenceRequestFrame, signal: AbortSignal, opts: { fingerprint?: string } = {}): Promise<RouteResult> {
    const hosts = this.candidates(req.model, opts.fingerprint)
    if (hosts.length === 0) throw new NoHealthyHostError(req.model)
    let lastErr: unknown
    let attempts = 0
    for (const host of hosts) {
      if (attempts >= 2) break
      if (!host.local && !this.breaker.allow(host.peerId)) continue
      attempts++
      if (attempts === 2) this.stats.retries++
      try {
        const reply = await this.attempt(host, req, signal)
        return { reply, host, attempts }
      } catch (err) {
        lastErr = err
        if (signal.aborted) throw err
        if (!host.local && hostFault(err)) this.breaker.failure(host.peerId)
        this.log.debug('attempt failed', { model: req.model, host: host.peerId, err })
        if (!retriable(err)) break
      }
    }
    this.stats.failures++
    if (lastErr instanceof ShepherdError) throw lastErr
    throw new NoHealthyHostError(req.model)
  }

  private async attempt (host: ModelHost, req: InferenceRequestFrame, signal: AbortSignal): Promise<InferenceReply> {
    if (host.local) {
      this.stats.local++
      return await this.node.hub.run(req, signal)
    }
    this.stats.remote++
    const id = host.peerId
    this.inflight.set(id, (this.inflight.get(id) ?? 0) + 1)
    let settled = false
    const done = (ok: boolean): void => {
      if (settled) return
      settled = true
      this.inflight.set(id, Math.max(0, (this.inflight.get(id) ?? 1) - 1))
      if (ok) this.breaker.success(id)
    }
    try {
      const reply = await this.node.mesh.inference.request(id, req, {
        signal,
        connectTimeoutMs: this.opts.connectTimeoutMs ?? 3000,
        firstByteTimeoutMs: this.opts.firstByteTimeoutMs ?? 120_000
      })
      if (reply.kind === 'result') {
        done(true)
        return reply
      }
      // The host answered: it is healthy even if the stream later breaks (that is reported to the client).
      this.breaker.success(id)
      const breaker = this.breaker
      const wrap = async function * <T> (source: AsyncIterable<T>): AsyncGenerator<T> {
        try {
          yield * source
          done(true)
        } catch (err) {
          if (!signal.aborted && hostFault(err)) breaker.failure(id)
          throw err
        } finally {
          done(false)
        }
      }
      if (reply.kind === 'stream') return { kind: 'stream', chunks: wrap(reply.chunks) }
      return { ...reply, body: wrap(reply.body) }
    } catch (err) {
      done(false)
      throw err
    }
  }
}
