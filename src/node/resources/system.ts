/**
 * CPU, memory, disk and uptime of this machine. Runs every few seconds, so nothing here spawns a
 * process per call: static CPU facts are read once, CPU usage comes from `os.cpus()` tick
 * deltas, memory from /proc/meminfo (via systeminformation) on Linux, disk from `statfs`.
 */
import { stat, statfs, realpath } from 'node:fs/promises'
import os from 'node:os'
import { dirname, resolve } from 'node:path'
import si from 'systeminformation'
import type { CpuInfo, DiskInfo, MemoryInfo, NodeResources } from './types.js'

export type SystemSnapshot = Pick<NodeResources, 'cpu' | 'memory' | 'disk' | 'uptimeSec' | 'platform' | 'arch'>

export interface CollectSystemOptions {
  /** The node's data dir; the disk figures are for the filesystem holding it. */
  dataDir: string
}

interface StaticCpu { model: string, physicalCores: number, speedGHz: number }

interface CpuTimes { idle: number, total: number }

function cpuTimes (): CpuTimes {
  let idle = 0
  let total = 0
  for (const c of os.cpus()) {
    const t = c.times
    idle += t.idle
    total += t.user + t.nice + t.sys + t.irq + t.idle
  }
  return { idle, total }
}

/** The mount point of the filesystem holding `path`: the highest ancestor on the same device. */
async function mountPointOf (path: string): Promise<string> {
  let dir = resolve(path)
  // The data dir may not exist yet; its nearest existing ancestor is on the same filesystem.
  for (;;) {
    try {
      dir = await realpath(dir)
      break
    } catch {
      const up = dirname(dir)
      if (up === dir) return dir
      dir = up
    }
  }
  const dev = (await stat(dir)).dev
  for (;;) {
    const up = dirname(dir)
    if (up === dir) return dir
    try {
      if ((await stat(up)).dev !== dev) return dir
    } catch {
      return dir
    }
    dir = up
  }
}

/**
 * Collects system figures, remembering what does not change (CPU model, mount point) and the
 * previous CPU sample so that usage reflects the time since the last call.
 */
export class SystemCollector {
  private staticCpu: Promise<StaticCpu> | null = null
  private readonly mounts = new Map<string, Promise<string>>()
  private lastCpu: CpuTimes | null = null

  private cpuStatic (): Promise<StaticCpu> {
    this.staticCpu ??= (async () => {
      const first = os.cpus()[0]
      let physicalCores = os.cpus().length
      let speedGHz = first !== undefined ? first.speed / 1000 : 0
      let model = first?.model.trim() ?? ''
      try {
        const c = await si.cpu() // spawns lscpu on Linux: once per process
        if (c.physicalCores > 0) physicalCores = c.physicalCores
        if (c.speed > 0) speedGHz = c.speed
        if (model === '') model = `${c.manufacturer} ${c.brand}`.trim()
      } catch {}
      return { model: model === '' ? 'unknown' : model, physicalCores, speedGHz }
    })()
    return this.staticCpu
  }

  private usagePercent (): number {
    const now = cpuTimes()
    const prev = this.lastCpu ?? { idle: 0, total: 0 }
    this.lastCpu = now
    const total = now.total - prev.total
    if (total <= 0) return 0
    return Math.min(100, Math.max(0, 100 * (1 - (now.idle - prev.idle) / total)))
  }

  private async memory (): Promise<MemoryInfo> {
    if (process.platform === 'linux') {
      try {
        // Linux: a read of /proc/meminfo. Elsewhere si.mem() spawns tools, so os is used.
        const m = await si.mem()
        if (m.total > 0) {
          const available = Math.min(m.available, m.total)
          return { totalBytes: m.total, usedBytes: m.total - available, availableBytes: available }
        }
      } catch {}
    }
    const total = os.totalmem()
    const free = os.freemem()
    return { totalBytes: total, usedBytes: total - free, availableBytes: free }
  }

  private async disk (dataDir: string): Promise<DiskInfo> {
    let mount = this.mounts.get(dataDir)
    if (mount === undefined) {
      mount = mountPointOf(dataDir)
      this.mounts.set(dataDir, mount)
    }
    const mountPath = await mount
    const s = await statfs(mountPath)
    const totalBytes = s.blocks * s.bsize
    return {
      mount: mountPath,
      totalBytes,
      usedBytes: (s.blocks - s.bfree) * s.bsize,
      availableBytes: s.bavail * s.bsize
    }
  }

  async collect (opts: CollectSystemOptions): Promise<SystemSnapshot> {
    const [cpuStatic, memory, disk] = await Promise.all([this.cpuStatic(), this.memory(), this.disk(opts.dataDir)])
    const load = os.loadavg()
    const cores = os.cpus().length
    const cpu: CpuInfo = {
      model: cpuStatic.model,
      cores,
      physicalCores: cpuStatic.physicalCores,
      usagePercent: Math.round(this.usagePercent() * 10) / 10,
      speedGHz: cpuStatic.speedGHz,
      loadAvg: [load[0], load[1], load[2]]
    }
    return { cpu, memory, disk, uptimeSec: Math.round(os.uptime()), platform: process.platform, arch: process.arch }
  }
}

const shared = new SystemCollector()

/** Collects system figures with a process-wide collector (CPU usage since the previous call). */
export async function collectSystem (opts: CollectSystemOptions): Promise<SystemSnapshot> {
  return await shared.collect(opts)
}
