import { ModelNotFoundError, NoHealthyHostError, ShepherdError } from '../errors.js'
import { createLogger } from '../logger.js'
import type { InferenceCall, InferenceReply } from '../node/index.js'
import { orderHosts, stateRank, type BalanceStrategy } from './balancer.js'
import { CircuitBreaker } from './circuit-breaker.js'
import { buildModelRegistry, pinnedHosts, type MeshModel, type ModelHost } from './model-registry.js'
import { PrefixAffinity, prefixKeys, preferPrefixHost } from './prefix-affinity.js'
import type { RouterPorts } from './router-ports.js'

export interface RouterOptions {
  /** A strategy, or a getter when it can change at run time. */
  strategy: BalanceStrategy | (() => BalanceStrategy)
  breakerFailures: number
  breakerCooldownMs: number
  /** Time allowed to open a stream to a peer. */
  connectTimeoutMs?: number
  /** Time allowed until a peer's first response frame (a model load may be part of it). */
  firstByteTimeoutMs?: number
  /** Prefix-aware routing on (read per request); off: the strategy alone decides. */
  prefixRouting?: () => boolean
  /** Extra requests the prefix's replica may carry over the first candidate (read per request). */
  prefixLoadSlack?: () => number
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
  /** Which replica served each conversation prefix (prefix-aware routing). */
  readonly prefixes: PrefixAffinity
  private readonly inflight = new Map<string, number>()
  private counter = 0
  private readonly log = createLogger('scheduler:router')
  readonly stats = { local: 0, remote: 0, retries: 0, failures: 0, prefixRouted: 0 }

  constructor (private readonly ports: RouterPorts, private readonly opts: RouterOptions) {
    this.breaker = new CircuitBreaker(opts.breakerFailures, opts.breakerCooldownMs)
    this.prefixes = new PrefixAffinity(ports.now ?? Date.now)
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
      const view = this.ports.view
      const models = buildModelRegistry(view.self(), view.peers(), {
        deployed: name => view.deployedFingerprint(name),
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
    const remote = hosts.filter(h => !h.local && !this.breaker.isOpen(h.peerId))
    const strategy = typeof this.opts.strategy === 'function' ? this.opts.strategy() : this.opts.strategy
    const ordered = orderHosts(remote, strategy, { inflight: id => this.inflight.get(id) ?? 0, counter: this.counter++ })
    // Local first while it has room and its copy is as ready as the best replica's: a local file
    // on disk must not be loaded while a loaded replica is one hop away (that would add a copy).
    if (local == null) return ordered
    const readier = ordered.length > 0 && stateRank(ordered[0]) < stateRank(local)
    return this.localHasRoom() && !readier ? [local, ...ordered] : [...ordered, local]
  }

  private localHasRoom (): boolean {
    const c = this.ports.local.capacity()
    return c.active < c.maxConcurrent
  }

  /**
   * The hosts for `call`: {@link candidates}, with the replica that served the call's longest
   * known prefix first while it is healthy and not overloaded.
   */
  private hostsFor (call: InferenceCall, keys: string[], fingerprint?: string): ModelHost[] {
    const hosts = this.candidates(call.model, fingerprint)
    if (keys.length === 0) return hosts
    const hit = this.prefixes.lookup(keys)
    const ordered = preferPrefixHost(hosts, hit?.host, {
      load: h => h.load + (this.inflight.get(h.peerId) ?? 0),
      slack: this.opts.prefixLoadSlack?.() ?? 4,
      localHasRoom: this.localHasRoom(),
      stateRank
    })
    if (hit != null && ordered[0]?.peerId === hit.host) this.stats.prefixRouted++
    return ordered
  }

  /**
   * The mesh's name for `model`: itself when known, else the one known name equal to it ignoring
   * case (`qwen/X` for `Qwen/x`); an ambiguous or unknown name is returned as given (and then
   * refused as unknown), so a lookup never picks one of two files by chance.
   */
  canonicalName (model: string): string {
    const models = this.models()
    if (models.has(model)) return model
    const lower = model.toLowerCase()
    let found: string | undefined
    for (const name of models.keys()) {
      if (name.toLowerCase() !== lower) continue
      if (found !== undefined) return model
      found = name
    }
    return found ?? model
  }

  /** Runs `call` on the best host; `opts.fingerprint` pins the file (see `candidates`). */
  async route (call: InferenceCall, signal: AbortSignal, opts: { fingerprint?: string } = {}): Promise<RouteResult> {
    const canonical = this.canonicalName(call.model)
    if (canonical !== call.model) call = withModel(call, canonical)
    const keys = this.opts.prefixRouting?.() === true ? prefixKeys(call) : []
    const hosts = this.hostsFor(call, keys, opts.fingerprint)
    if (hosts.length === 0) throw new NoHealthyHostError(call.model)
    let lastErr: unknown
    let attempts = 0
    for (const host of hosts) {
      if (attempts >= 2) break
      if (!host.local && !this.breaker.allow(host.peerId)) continue
      attempts++
      if (attempts === 2) this.stats.retries++
      this.log.debug('routing request', { requestId: call.requestId, model: call.model, host: host.peerId, attempt: attempts })
      try {
        const reply = await this.attempt(host, call, signal)
        if (keys.length > 0) this.prefixes.record(keys, host.peerId)
        return { reply, host, attempts }
      } catch (err) {
        lastErr = err
        if (signal.aborted) throw err
        if (!host.local && hostFault(err)) this.breaker.failure(host.peerId)
        this.log.debug('attempt failed', { requestId: call.requestId, model: call.model, host: host.peerId, err })
        if (!retriable(err)) break
      }
    }
    this.stats.failures++
    if (lastErr instanceof ShepherdError) throw lastErr
    throw new NoHealthyHostError(call.model)
  }

  private async attempt (host: ModelHost, call: InferenceCall, signal: AbortSignal): Promise<InferenceReply> {
    if (host.local) {
      this.stats.local++
      return await this.ports.local.run(call, signal)
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
      const reply = await this.ports.remote.call(id, call, {
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

/** `call` addressed to `model`: the name the host's engine knows (see `Router.canonicalName`). */
function withModel (call: InferenceCall, model: string): InferenceCall {
  switch (call.op) {
    case 'chat': return { ...call, model, body: { ...call.body, model } }
    case 'completion': return { ...call, model, body: { ...call.body, model } }
    case 'embeddings': return { ...call, model, body: { ...call.body, model } }
    case 'passthrough': return { ...call, model }
  }
}
