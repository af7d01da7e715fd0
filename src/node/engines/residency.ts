/**
 * The life of a model's resident copy on a node, for every engine that loads files: load once
 * for concurrent callers, keep-alive and idle unload, pins for deployments, the memory budget
 * with least-recently-used eviction, and unload (aborting the requests on it). An engine keeps
 * only how to start, call and stop a copy (the embedded engine loads and disposes a
 * node-llama-cpp model; the llama-server engine spawns and stops a process) and hands that to
 * a `Residency` as a `ResidentDriver`.
 *
 * Before this module each engine carried its own copy of these rules and they drifted: only the
 * embedded engine marked a deployment's copy as pinned, so with `--engine llama-server` the
 * reconciler never counted its replicas, and memory pressure could evict them.
 */
import { ShepherdError } from '../../errors.js'
import { checkMemoryBudgetOptions, defaultMemoryLimits, victimsFor, type LoadedModelUsage, type MemoryBudgetOptions } from './memory-budget.js'
import { raceSignal } from './race-signal.js'

/** Timers and time, so unit tests drive idle unloads with a fake clock. */
export interface ResidencyClock {
  now: () => number
  setTimeout: (fn: () => void, ms: number) => unknown
  clearTimeout: (handle: unknown) => void
}

/** Real time; idle timers never keep the process alive. */
export const systemClock: ResidencyClock = {
  now: () => Date.now(),
  setTimeout: (fn, ms) => {
    const t = setTimeout(fn, Math.min(ms, 2 ** 31 - 1))
    t.unref()
    return t
  },
  clearTimeout: handle => { clearTimeout(handle as NodeJS.Timeout) }
}

/** `loading`: a load is under way; `loaded`: serving; `unloading`: going away, its requests aborted. */
export type ResidentState = 'loading' | 'loaded' | 'unloading'

/** What a driver's `start` may use. */
export interface StartContext {
  /** Aborted when the copy is unloaded (or the residency closed) before its load ends. */
  signal: AbortSignal
  /**
   * Unloads the least recently used idle, unpinned copy other than this one; false when none is
   * left. For a backend whose own memory check (VRAM included) refuses a load ours let through.
   */
  evictOne: () => Promise<boolean>
}

/** How one copy is started: asked only when no copy is loaded or loading. */
export interface LoadPlan<R> {
  /** Memory the copy will hold, estimated before the load (the file's size, usually). */
  estimateBytes: number
  start: (ctx: StartContext) => Promise<R>
}

/** How an engine stops a copy and sizes it. */
export interface ResidentDriver<R> {
  /** Releases the copy; every request on it has ended by then. */
  stop: (resource: R, key: string) => Promise<void>
  /** Memory the loaded copy holds, in bytes. */
  sizeOf: (resource: R) => number
  /** Told as soon as an unload starts, before requests drain (close slot queues, cancel restarts). */
  abandon?: (resource: R, reason: ShepherdError) => void
}

export interface ResidencyOptions<R> extends MemoryBudgetOptions {
  driver: ResidentDriver<R>
  /** Idle time before an unused, unpinned copy unloads; `Infinity` keeps copies. */
  keepAliveMs: number
  clock?: ResidencyClock
  /** Every change of a copy's state or pin, so gossip snapshots update at once. */
  onChange?: (key: string, state: ResidentState | undefined, pinned: boolean) => void
  /** Logs a copy unloaded for idleness or for room (the engine's logger). */
  log?: (message: string, fields: Record<string, unknown>) => void
  /** The model a key names, for messages clients read (an engine's key may carry more: a role). */
  modelOf?: (key: string) => string
}

/** A request's hold on a loaded copy: while held the copy is neither idle-unloaded nor evicted. */
export interface Lease<R> {
  resource: R
  /** The caller's signal joined with the copy's (aborted when it is unloaded). */
  signal: AbortSignal
  /** Ends the hold (once) with the keep-alive the request asked for; `undefined`: the default. */
  release: (keepAliveMs?: number) => void
}

/** A copy as seen from outside. */
export interface ResidentView<R> {
  state: ResidentState
  /** Set once loaded. */
  resource: R | undefined
  pinned: boolean
  /** Requests holding it. */
  holders: number
}

interface Resident<R> {
  key: string
  state: ResidentState
  resource?: R
  loading?: Promise<R>
  unloading?: Promise<void>
  /** Aborts a load under way. */
  cancel: AbortController
  estimateBytes: number
  requests: Set<AbortController>
  drained: Array<() => void>
  lastUsed: number
  pinned: boolean
  /** The keep-alive a `load` gave the copy, used when a request asks for none. */
  keepAlive?: number
  idleTimer?: unknown
  /** When the last request ended, and the keep-alive it asked for (undefined: the default). */
  idleSince?: number
  idleKeepAlive?: number
}

const closedError = (): ShepherdError => new ShepherdError('The engine is closed', { code: 'engine_closed', status: 503 })
const unloadedError = (model: string): ShepherdError => new ShepherdError(`The model '${model}' was unloaded`, { code: 'model_unloaded', status: 503 })

/**
 * Whether a load's keep-alive pins the copy: negative or infinite is a deployment's replica
 * (never idle-unloaded, never evicted, counted by the reconciler); a finite non-negative one
 * unpins it, which is how a replica is retired without cutting its requests (0: unload once idle).
 */
export function pinsCopy (keepAliveMs: number): boolean {
  return keepAliveMs < 0 || keepAliveMs === Infinity
}

/**
 * The delay before an idle copy unloads, or `undefined` for never. Pure.
 * `idleFor`: how long it has been idle already (a changed default counts from the idle start).
 */
export function idleDelay (pinned: boolean, keepAliveMs: number, idleFor: number): number | undefined {
  if (pinned || keepAliveMs === Infinity || keepAliveMs < 0 || Number.isNaN(keepAliveMs)) return undefined
  return Math.max(0, keepAliveMs - Math.max(0, idleFor))
}

/**
 * The copies of one engine, keyed by the engine's name for them.
 *
 * @example
 * ```ts
 * const residency = new Residency({ driver: { stop: async m => { await m.dispose() }, sizeOf: m => m.size }, keepAliveMs: 300_000 })
 * const lease = await residency.use('qwen', () => ({ estimateBytes: 4e8, start: async () => await loadIt() }))
 * try { await generate(lease.resource, lease.signal) } finally { lease.release() }
 * ```
 */
export class Residency<R> {
  private readonly residents = new Map<string, Resident<R>>()
  private readonly driver: ResidentDriver<R>
  private readonly clock: ResidencyClock
  private readonly memory: MemoryBudgetOptions
  private defaultKeepAlive: number
  private closed = false

  constructor (private readonly opts: ResidencyOptions<R>) {
    checkMemoryBudgetOptions(opts)
    this.driver = opts.driver
    this.clock = opts.clock ?? systemClock
    this.defaultKeepAlive = opts.keepAliveMs
    this.memory = { maxLoadedBytes: opts.maxLoadedBytes, memoryReserveBytes: opts.memoryReserveBytes, availableMemoryBytes: opts.availableMemoryBytes }
  }

  /** The default keep-alive now. */
  get keepAliveMs (): number { return this.defaultKeepAlive }

  get isClosed (): boolean { return this.closed }

  /** A copy's state, or undefined when none is resident. */
  private modelOf (key: string): string {
    return this.opts.modelOf?.(key) ?? key
  }

  get (key: string): ResidentView<R> | undefined {
    const r = this.residents.get(key)
    if (r === undefined) return undefined
    return { state: r.state, resource: r.resource, pinned: r.pinned, holders: r.requests.size }
  }

  /** Every resident copy's key. */
  keys (): string[] {
    return [...this.residents.keys()]
  }

  /**
   * Takes a lease on a loaded copy, starting a load (`plan()`, asked only then) when none is
   * loaded or loading, joining one under way, and waiting out an unload under way. A load's
   * failure is every waiter's failure.
   */
  async use (key: string, plan: () => LoadPlan<R>, signal?: AbortSignal): Promise<Lease<R>> {
    while (true) {
      if (this.closed) throw closedError()
      signal?.throwIfAborted()
      const r = this.residents.get(key)
      if (r?.state === 'loaded') return this.lease(r, signal)
      if (r?.state === 'unloading') {
        await raceSignal((r.unloading ?? Promise.resolve()).catch(() => {}), signal)
        continue
      }
      await raceSignal(r?.loading ?? this.startLoad(key, plan()), signal)
    }
  }

  /**
   * Loads (or joins) a copy and sets its pin from `keepAliveMs` (see `pinsCopy`); `undefined`
   * leaves the pin as it is. Resolves with the copy once loaded.
   */
  async load (key: string, plan: () => LoadPlan<R>, options: { keepAliveMs?: number, signal?: AbortSignal } = {}): Promise<ResidentView<R>> {
    const lease = await this.use(key, plan, options.signal)
    const r = this.residents.get(key) as Resident<R>
    if (options.keepAliveMs !== undefined) {
      this.setPinned(r, pinsCopy(options.keepAliveMs))
      // Sticky for the copy: a replica retired (0) while requests run goes when the last one
      // ends, whatever keep-alive those requests asked for.
      r.keepAlive = r.pinned ? undefined : options.keepAliveMs
    }
    lease.release(r.pinned ? Infinity : options.keepAliveMs)
    return { state: r.state, resource: lease.resource, pinned: r.pinned, holders: r.requests.size }
  }

  /** Pins or unpins a loaded copy (see `pinsCopy`); false when it is not loaded. */
  pin (key: string, pinned: boolean): boolean {
    const r = this.residents.get(key)
    if (r?.state !== 'loaded') return false
    this.setPinned(r, pinned)
    if (r.requests.size === 0) this.armIdle(r)
    return true
  }

  /**
   * Changes the default keep-alive at run time. Idle copies waiting out the default are
   * re-timed from when they went idle: a shorter keep-alive unloads those idle longer at once.
   */
  setKeepAlive (ms: number): void {
    this.defaultKeepAlive = ms
    for (const r of this.residents.values()) {
      if (r.state === 'loaded' && r.requests.size === 0 && r.idleKeepAlive === undefined) this.armIdle(r)
    }
  }

  /**
   * Unloads a copy: a load under way is cancelled, requests on it are aborted with `reason`
   * (default `model_unloaded`) and the copy is stopped once they end. Resolves false when none
   * was resident.
   */
  async unload (key: string, reason?: ShepherdError): Promise<boolean> {
    const r = this.residents.get(key)
    if (r === undefined) return false
    if (r.state === 'unloading') {
      await r.unloading?.catch(() => {})
      return true
    }
    if (r.state === 'loading') {
      r.cancel.abort(reason ?? unloadedError(this.modelOf(key)))
      const loaded = await r.loading?.catch(() => undefined)
      if (loaded === undefined) return true
      return await this.unload(key, reason)
    }
    await this.unloadLoaded(r, reason ?? unloadedError(this.modelOf(key)))
    return true
  }

  /** Restarts the idle wait of a copy nobody holds, from now (after an engine restarted it, say). */
  touch (key: string): void {
    const r = this.residents.get(key)
    if (r?.state !== 'loaded' || r.requests.size > 0) return
    r.idleSince = this.clock.now()
    this.armIdle(r)
  }

  /** Unloads every copy; nothing loads afterwards. */
  async close (): Promise<void> {
    if (this.closed) return
    this.closed = true
    await Promise.allSettled(this.keys().map(async key => await this.unload(key, closedError())))
  }

  /**
   * Unloads the least recently used copy that is loaded, idle and unpinned, other than
   * `except`; false when there is none.
   */
  async evictOne (except?: string): Promise<boolean> {
    const victim = [...this.residents.values()]
      .filter(r => r.key !== except && r.state === 'loaded' && this.evictable(r))
      .sort((a, b) => a.lastUsed - b.lastUsed)[0]
    if (victim === undefined) return false
    this.opts.log?.('unloading least recently used model to make room', { model: victim.key, for: except })
    await this.unloadLoaded(victim, unloadedError(this.modelOf(victim.key)))
    return true
  }

  // ---- internals -----------------------------------------------------------------------

  private lease (r: Resident<R>, signal: AbortSignal | undefined): Lease<R> {
    const controller = new AbortController()
    r.requests.add(controller)
    this.clearIdle(r)
    r.lastUsed = this.clock.now()
    let released = false
    return {
      resource: r.resource as R,
      signal: signal === undefined ? controller.signal : AbortSignal.any([signal, controller.signal]),
      release: keepAliveMs => {
        if (released) return
        released = true
        r.requests.delete(controller)
        r.lastUsed = this.clock.now()
        if (r.requests.size > 0) return
        for (const resolve of r.drained.splice(0)) resolve()
        if (r.state !== 'loaded' || this.residents.get(r.key) !== r) return
        r.idleSince = this.clock.now()
        r.idleKeepAlive = keepAliveMs ?? r.keepAlive
        this.armIdle(r)
      }
    }
  }

  private clearIdle (r: Resident<R>): void {
    if (r.idleTimer !== undefined) this.clock.clearTimeout(r.idleTimer)
    r.idleTimer = undefined
  }

  private armIdle (r: Resident<R>): void {
    this.clearIdle(r)
    const keepAlive = r.idleKeepAlive ?? this.defaultKeepAlive
    const delay = idleDelay(r.pinned, keepAlive, this.clock.now() - (r.idleSince ?? this.clock.now()))
    if (delay === undefined) return
    r.idleTimer = this.clock.setTimeout(() => {
      r.idleTimer = undefined
      if (r.requests.size > 0 || r.pinned || r.state !== 'loaded' || this.residents.get(r.key) !== r) return
      this.opts.log?.('idle model unloaded', { model: r.key, keepAliveMs: keepAlive })
      this.unloadLoaded(r, unloadedError(this.modelOf(r.key))).catch(err => { this.opts.log?.('unloading an idle model failed', { model: r.key, err }) })
    }, delay)
  }

  private setPinned (r: Resident<R>, pinned: boolean): void {
    if (r.pinned === pinned) return
    r.pinned = pinned
    // Peers see pinning in the snapshot: it is what makes a loaded copy count as a replica.
    this.emit(r)
  }

  private emit (r: Resident<R>, gone = false): void {
    this.opts.onChange?.(r.key, gone ? undefined : r.state, !gone && r.pinned)
  }

  /** Idle and not pinned: a pinned copy is a deployment's replica, unloading it would only have it placed again. */
  private evictable (r: Resident<R>): boolean {
    return r.requests.size === 0 && !r.pinned
  }

  private startLoad (key: string, plan: LoadPlan<R>): Promise<R> {
    const r: Resident<R> = {
      key,
      state: 'loading',
      cancel: new AbortController(),
      estimateBytes: plan.estimateBytes,
      requests: new Set(),
      drained: [],
      lastUsed: this.clock.now(),
      pinned: false
    }
    const ctx: StartContext = { signal: r.cancel.signal, evictOne: async () => await this.evictOne(key) }
    r.loading = (async () => {
      let resource: R
      try {
        await this.makeRoomFor(r)
        r.cancel.signal.throwIfAborted()
        resource = await plan.start(ctx)
      } catch (err) {
        if (this.residents.get(key) === r) {
          this.residents.delete(key)
          this.emit(r, true)
        }
        throw err
      }
      // Unloaded or closed while loading: the copy goes at once.
      if (this.closed || r.cancel.signal.aborted) {
        if (this.residents.get(key) === r) this.residents.delete(key)
        await this.driver.stop(resource, key).catch(() => {})
        this.emit(r, true)
        throw this.closed ? closedError() : r.cancel.signal.reason
      }
      r.resource = resource
      r.state = 'loaded'
      r.lastUsed = this.clock.now()
      r.idleSince = this.clock.now()
      this.emit(r)
      // A copy loaded and never used still idles out.
      this.armIdle(r)
      return resource
    })()
    r.loading.catch(() => {})
    // Set before the load's first await resumes, so every later caller joins this load.
    this.residents.set(key, r)
    this.emit(r)
    return r.loading
  }

  /**
   * Unloads least recently used idle copies until `r` fits the memory limits (see `victimsFor`).
   * Copies loading elsewhere count at their estimate and give no room.
   */
  private async makeRoomFor (r: Resident<R>): Promise<void> {
    const usage: LoadedModelUsage[] = []
    for (const other of this.residents.values()) {
      // An unloading copy is already giving its memory back.
      if (other === r || other.state === 'unloading') continue
      if (other.state === 'loaded') {
        usage.push({ name: other.key, sizeBytes: this.driver.sizeOf(other.resource as R), lastUsed: other.lastUsed, busy: !this.evictable(other) })
      } else {
        usage.push({ name: other.key, sizeBytes: other.estimateBytes, lastUsed: Infinity, busy: true })
      }
    }
    for (const key of victimsFor(usage, r.estimateBytes, defaultMemoryLimits(this.memory))) {
      const victim = this.residents.get(key)
      // A request may have taken it while an earlier one was unloading: unloading it now would cut that request.
      if (victim?.state !== 'loaded' || !this.evictable(victim)) continue
      this.opts.log?.('unloading least recently used model to make room', { model: key, for: r.key })
      await this.unloadLoaded(victim, unloadedError(this.modelOf(key)))
    }
  }

  private async unloadLoaded (r: Resident<R>, reason: ShepherdError): Promise<void> {
    if (r.state === 'unloading') {
      await r.unloading
      return
    }
    if (r.state !== 'loaded' || this.residents.get(r.key) !== r) return
    this.clearIdle(r)
    r.state = 'unloading'
    const resource = r.resource as R
    this.driver.abandon?.(resource, reason)
    for (const controller of r.requests) controller.abort(reason)
    r.unloading = (async () => {
      if (r.requests.size > 0) await new Promise<void>(resolve => { r.drained.push(resolve) })
      await this.driver.stop(resource, r.key)
    })()
    this.emit(r)
    try {
      await r.unloading
    } finally {
      if (this.residents.get(r.key) === r) this.residents.delete(r.key)
      this.emit(r, true)
    }
  }
}
