/**
 * Keeps a current picture of what this node has (CPU, memory, disk, GPUs, llama.cpp builds,
 * models) and says when it changed enough to be worth gossiping.
 */
import { EventEmitter } from 'node:events'
import os from 'node:os'
import { createLogger, type Logger } from '../../logger.js'
import { execRunner, type ExecRunner } from './exec.js'
import { cachedGraphics, detectGpus, type DetectGpusOptions, type GpuDetection } from './gpus.js'
import { findLlamacppBuilds } from './llamacpp.js'
import { ContentHashCache } from './content-hash.js'
import { ModelScanCache, scanModels } from './models.js'
import { SystemCollector, type SystemSnapshot } from './system.js'
import type { GpuInfo, ModelFile, NodeResources } from './types.js'

/** How far a figure must move (since the last `change`) to count as a change. */
export interface ChangeThresholds {
  /** Percentage points of total CPU usage. Default 10. */
  cpuPercent?: number
  /** Fraction of total memory that became used or free. Default 0.02. */
  memoryFraction?: number
  /** Fraction of a GPU's VRAM that became used or free. Default 0.01. */
  vramFraction?: number
  /** Fraction of the disk that became used or free. Default 0.01. */
  diskFraction?: number
}

export interface ResourceMonitorOptions {
  /** The node's data dir (disk figures are for its filesystem). */
  dataDir: string
  /** Dirs scanned for GGUF models. */
  modelsDirs?: string[]
  /** Sidecar where model content hashes are persisted (in the data dir); none: kept in memory. */
  modelHashFile?: string
  /** llama-server binaries or dirs holding one. */
  llamacppPaths?: string[]
  /** Also look for llama-server on PATH. Default true. */
  searchPath?: boolean
  /** GPU poll period. Default 10 s. */
  gpuIntervalMs?: number
  /** CPU/memory/disk/models poll period. Default 5 s. */
  sampleIntervalMs?: number
  /** llama.cpp builds poll period (each poll runs `--version`). Default 5 min. */
  llamacppIntervalMs?: number
  thresholds?: ChangeThresholds
  /**
   * A change of load figures only (CPU, memory, disk, VRAM use) is emitted at most this often;
   * a change of what the node has (models, builds, GPUs) at once. Default 0 (no floor). A
   * function is asked at each change (the mesh stretches the gap as it grows: see
   * `scaledMetricsGapMs`).
   */
  metricsMinGapMs?: number | (() => number)
  /** The clock (tests). Default `Date.now`. */
  now?: () => number
  /** Runs nvidia-smi, rocm-smi and llama-server; tests inject recorded outputs. */
  exec?: ExecRunner
  /** Replaces `si.graphics()` for the no-tool fallback. */
  graphics?: DetectGpusOptions['graphics']
  log?: Logger
}

export interface ResourceSnapshot {
  resources: NodeResources
  models: ModelFile[]
}

export interface ResourceChange {
  /** What moved, e.g. `models`, `gpus`, `vram`, `memory`, `cpu`. */
  reasons: string[]
  snapshot: ResourceSnapshot
}

interface ResourceMonitorEvents {
  change: [ResourceChange]
}

const DEFAULTS = {
  searchPath: true,
  gpuIntervalMs: 10_000,
  sampleIntervalMs: 5_000,
  llamacppIntervalMs: 300_000,
  metricsMinGapMs: 0 as number | (() => number),
  now: Date.now,
  thresholds: { cpuPercent: 10, memoryFraction: 0.02, vramFraction: 0.01, diskFraction: 0.01 } satisfies Required<ChangeThresholds>
}

function emptySystem (): SystemSnapshot {
  return {
    cpu: { model: 'unknown', cores: os.cpus().length, physicalCores: os.cpus().length, usagePercent: 0, speedGHz: 0, loadAvg: [0, 0, 0] },
    memory: { totalBytes: os.totalmem(), usedBytes: 0, availableBytes: os.totalmem() },
    disk: { mount: '', totalBytes: 0, usedBytes: 0, availableBytes: 0 },
    uptimeSec: Math.round(os.uptime()),
    platform: process.platform,
    arch: process.arch
  }
}

/**
 * Mesh-wide, snapshots for moved load figures only are kept to about one per this many ms: each
 * is delivered to every member, so a fixed per-node period would make every node's receive work
 * grow with the mesh (16 idle nodes at 30 s each: ~0.5 snapshots/s into every node).
 */
export const METRICS_GAP_PER_MEMBER_MS = 2_000

/**
 * The least time between this node's load-figure-only snapshots in a mesh of `members` others:
 * `baseMs`, stretched so that the whole mesh sends about one every `METRICS_GAP_PER_MEMBER_MS`
 * (30 s up to 15 peers, 96 s at 48, 33 min at 1,000). Load that matters for routing (active and
 * queued requests) travels in heartbeats and SWIM frames, not in these.
 */
export function scaledMetricsGapMs (baseMs: number, members: number): number {
  return Math.max(baseMs, Math.max(0, members) * METRICS_GAP_PER_MEMBER_MS)
}

/** Change reasons that are load figures, not what the node has (see `metricsMinGapMs`). */
const LOAD_REASONS = new Set(['cpu', 'memory', 'disk', 'vram'])

function gpuKey (g: GpuInfo): string {
  return `${g.source}:${g.index}:${g.uuid ?? g.name}:${g.totalMemoryBytes}`
}

function moved (a: number, b: number, total: number, fraction: number): boolean {
  return total > 0 && Math.abs(a - b) > total * fraction
}

/**
 * Polls the node's resources on timers and emits `change` when something meaningful moved:
 * models added/removed/replaced, llama.cpp builds, the GPU set, a GPU's VRAM use (>1%),
 * memory, CPU or disk beyond their thresholds. `snapshot()` is always the latest picture.
 */
export class ResourceMonitor extends EventEmitter<ResourceMonitorEvents> {
  private readonly opts: ResourceMonitorOptions & typeof DEFAULTS & { thresholds: Required<ChangeThresholds> }
  private readonly exec: ExecRunner
  private readonly log: Logger
  private readonly system = new SystemCollector()
  private readonly modelCache = new ModelScanCache()
  /** Full-content model fingerprints; a pull records the hash it verified (and its source) here. */
  readonly contentHashes: ContentHashCache
  private readonly timers: NodeJS.Timeout[] = []
  private readonly inFlight = new Map<string, Promise<void>>()
  private readonly graphics: NonNullable<DetectGpusOptions['graphics']>

  private current: ResourceSnapshot
  /** The picture as of the last `change` (or the first refresh): what movement is measured from. */
  private baseline: ResourceSnapshot | null = null
  /** When the last `change` went out (see `metricsMinGapMs`). */
  private lastEmitAt = 0
  private lastGpuDetection: GpuDetection | null = null
  /** When the GPU tools were last looked for (see `collect('gpus')`). */
  private lastGpuToolScanAt = 0
  private running = false

  constructor (options: ResourceMonitorOptions) {
    super()
    this.opts = {
      ...DEFAULTS,
      ...options,
      thresholds: { ...DEFAULTS.thresholds, ...options.thresholds }
    }
    this.exec = options.exec ?? execRunner
    this.log = options.log ?? createLogger('resources:monitor')
    this.graphics = cachedGraphics(options.graphics)
    this.current = { resources: { ...emptySystem(), gpus: [], llamacpp: [] }, models: [] }
    this.contentHashes = new ContentHashCache({
      ...(options.modelHashFile != null ? { file: options.modelHashFile } : {}),
      log: this.log,
      // A big model hashed in the background is listed (and announced) by the scan that follows.
      onHashed: () => { if (this.running) void this.run(['models'], true) }
    })
  }

  /** The latest picture (defaults until the first refresh completes). */
  snapshot (): ResourceSnapshot {
    return structuredClone(this.current)
  }

  /** Why GPU tools that exist reported no GPUs, from the latest poll. */
  gpuReasons (): string[] {
    return [...(this.lastGpuDetection?.reasons ?? [])]
  }

  /** Collects everything once, then polls on timers until `stop()`. */
  async start (): Promise<void> {
    if (this.running) return
    this.running = true
    await this.refresh()
    if (!this.running) return // stopped while the first refresh ran
    const every = (ms: number, job: () => Promise<void>): void => {
      const t = setInterval(() => { void job() }, ms)
      t.unref() // the monitor alone must not keep the process alive
      this.timers.push(t)
    }
    every(this.opts.sampleIntervalMs, async () => { await this.run(['system', 'models'], false) })
    every(this.opts.gpuIntervalMs, async () => { await this.run(['gpus'], false) })
    every(this.opts.llamacppIntervalMs, async () => { await this.run(['llamacpp'], false) })
  }

  /** Stops polling. A timer poll already running finishes but emits nothing. */
  stop (): void {
    this.running = false
    for (const t of this.timers) clearInterval(t)
    this.timers.length = 0
  }

  /** Collects everything now (llama.cpp builds included) and emits `change` if warranted. */
  async refresh (): Promise<void> {
    await this.run(['system', 'gpus', 'models', 'llamacpp'], true)
  }

  /**
   * Runs the named collectors, then checks for change. A timer tick (`force` false) joins a
   * collector already running instead of starting another, and stays quiet once stopped.
   */
  private async run (parts: Array<'system' | 'gpus' | 'models' | 'llamacpp'>, force: boolean): Promise<void> {
    await Promise.all(parts.map(async part => {
      const pending = this.inFlight.get(part)
      if (pending !== undefined) {
        await pending
        if (!force) return
      }
      const p = this.collect(part, force).finally(() => { this.inFlight.delete(part) })
      this.inFlight.set(part, p)
      await p
    }))
    if (!force && !this.running) return
    this.checkChange()
  }

  private async collect (part: 'system' | 'gpus' | 'models' | 'llamacpp', force: boolean): Promise<void> {
    try {
      switch (part) {
        case 'system': {
          const s = await this.system.collect({ dataDir: this.opts.dataDir })
          this.current = { ...this.current, resources: { ...this.current.resources, ...s } }
          break
        }
        case 'gpus': {
          // With neither nvidia-smi nor rocm-smi there is no VRAM use to follow: looking for the
          // two tools again (a failed spawn per PATH entry each) is done only as often as for
          // llama.cpp builds (a driver installed later is still found), not every poll.
          const last = this.lastGpuDetection
          const now = this.opts.now()
          if (!force && last != null && !last.tools.nvidiaSmi && !last.tools.rocmSmi && now - this.lastGpuToolScanAt < this.opts.llamacppIntervalMs) break
          this.lastGpuToolScanAt = now
          const d = await detectGpus({ exec: this.exec, graphics: this.graphics, log: this.log })
          this.lastGpuDetection = d
          this.current = { ...this.current, resources: { ...this.current.resources, gpus: d.gpus } }
          break
        }
        case 'models': {
          const models = await scanModels(this.opts.modelsDirs ?? [], { cache: this.modelCache, hashes: this.contentHashes, log: this.log })
          this.current = { ...this.current, models }
          break
        }
        case 'llamacpp': {
          const builds = await findLlamacppBuilds(this.opts.llamacppPaths ?? [], { searchPath: this.opts.searchPath, exec: this.exec, log: this.log })
          this.current = { ...this.current, resources: { ...this.current.resources, llamacpp: builds } }
          break
        }
      }
    } catch (err) {
      this.log.warn('resource poll failed', { part, err: err as Error })
    }
  }

  /** Compares the current picture with the baseline; emits and re-baselines on change. */
  private checkChange (): void {
    const reasons = this.baseline === null ? ['initial'] : this.diff(this.baseline, this.current)
    if (reasons.length === 0) return
    // Every change is a snapshot to every member: on a busy machine the load figures move on most
    // samples, which would make each node's cost grow with the mesh. They wait for the floor
    // (the baseline stays, so the change is still seen then); what the node has goes out at once.
    const now = this.opts.now()
    const gap = typeof this.opts.metricsMinGapMs === 'function' ? this.opts.metricsMinGapMs() : this.opts.metricsMinGapMs
    if (this.baseline !== null && reasons.every(r => LOAD_REASONS.has(r)) && now - this.lastEmitAt < gap) return
    this.lastEmitAt = now
    this.baseline = this.snapshot()
    this.emit('change', { reasons, snapshot: this.snapshot() })
  }

  private diff (a: ResourceSnapshot, b: ResourceSnapshot): string[] {
    const t = this.opts.thresholds
    const reasons: string[] = []
    const modelKey = (m: ModelFile): string => `${m.path}\0${m.fingerprint}`
    const am = a.models.map(modelKey).sort().join('\n')
    const bm = b.models.map(modelKey).sort().join('\n')
    if (am !== bm) reasons.push('models')

    const buildKey = (x: NodeResources['llamacpp'][number]): string => `${x.path}\0${x.version}\0${x.backend}`
    if (a.resources.llamacpp.map(buildKey).join('\n') !== b.resources.llamacpp.map(buildKey).join('\n')) reasons.push('llamacpp')

    const ag = a.resources.gpus
    const bg = b.resources.gpus
    if (ag.map(gpuKey).join('\n') !== bg.map(gpuKey).join('\n')) {
      reasons.push('gpus')
    } else if (ag.some((g, i) => moved(g.usedMemoryBytes, bg[i].usedMemoryBytes, g.totalMemoryBytes, t.vramFraction))) {
      reasons.push('vram')
    }

    const amem = a.resources.memory
    const bmem = b.resources.memory
    if (moved(amem.availableBytes, bmem.availableBytes, bmem.totalBytes, t.memoryFraction)) reasons.push('memory')
    if (Math.abs(a.resources.cpu.usagePercent - b.resources.cpu.usagePercent) > t.cpuPercent) reasons.push('cpu')
    const ad = a.resources.disk
    const bd = b.resources.disk
    if (ad.mount !== bd.mount || moved(ad.availableBytes, bd.availableBytes, bd.totalBytes, t.diskFraction)) reasons.push('disk')
    return reasons
  }
}
