/**
 * GPU discovery: nvidia-smi, then rocm-smi, and systeminformation's controller list only when
 * neither tool exists (it knows no VRAM use, and on Linux it spawns lspci).
 */
import si from 'systeminformation'
import { createLogger, type Logger } from '../../logger.js'
import { execRunner, type ExecResult, type ExecRunner } from './exec.js'
import {
  NVIDIA_SMI_ARGS, NVIDIA_SMI_XML_ARGS, nvidiaSmiFailureReason, parseNvidiaSmiCsv, parseNvidiaSmiXml, type GpuParseResult
} from './nvidia.js'
import { ROCM_SMI_ARGS, parseRocmSmiJson } from './rocm.js'
import type { GpuInfo, GpuVendor } from './types.js'

export interface DetectGpusOptions {
  exec?: ExecRunner
  /** Per-tool time limit. Default 3 s. */
  timeoutMs?: number
  /** Source of the fallback controller list; defaults to `si.graphics()`. */
  graphics?: () => Promise<Pick<si.Systeminformation.GraphicsData, 'controllers'>>
  nvidiaSmi?: string
  rocmSmi?: string
  log?: Logger
}

export interface GpuDetection {
  gpus: GpuInfo[]
  /** Why a tool that exists reported no GPUs (no driver, NVML mismatch, timeout, ...). */
  reasons: string[]
  /** Which tools were found on this machine. */
  tools: { nvidiaSmi: boolean, rocmSmi: boolean }
}

const defaultLog = createLogger('resources:gpus')
const MB = 1024 * 1024

function absent (r: ExecResult): boolean {
  return r.errorCode === 'ENOENT' || r.errorCode === 'EACCES'
}

function failure (tool: string, r: ExecResult): string {
  if (r.errorCode === 'ETIMEDOUT') return `${tool} timed out`
  const text = `${r.stdout}\n${r.stderr}`.split(/\r?\n/).map(l => l.trim()).find(l => l !== '')
  return `${tool} failed${r.exitCode !== null ? ` (exit ${r.exitCode})` : r.errorCode !== undefined ? ` (${r.errorCode})` : ''}${text !== undefined ? `: ${text}` : ''}`
}

async function queryNvidia (exec: ExecRunner, bin: string, timeoutMs: number): Promise<GpuParseResult | null> {
  const r = await exec(bin, NVIDIA_SMI_ARGS, { timeoutMs })
  if (absent(r)) return null
  const text = `${r.stdout}\n${r.stderr}`
  const csv = parseNvidiaSmiCsv(text)
  if (csv.gpus.length > 0) return csv
  if (r.errorCode === 'ETIMEDOUT') return { gpus: [], reason: failure('nvidia-smi', r) }
  // A recognized failure (no driver, NVML mismatch): the XML report would say the same.
  const known = nvidiaSmiFailureReason(text)
  if (known !== null) return { gpus: [], reason: known }
  // Very old drivers reject some query fields; the XML report has what we need.
  const x = await exec(bin, NVIDIA_SMI_XML_ARGS, { timeoutMs })
  const xml = parseNvidiaSmiXml(x.stdout)
  return xml.gpus.length > 0 ? xml : { gpus: [], reason: csv.reason ?? failure('nvidia-smi', r) }
}

async function queryRocm (exec: ExecRunner, bin: string, timeoutMs: number): Promise<GpuParseResult | null> {
  const r = await exec(bin, ROCM_SMI_ARGS, { timeoutMs })
  if (absent(r)) return null
  const parsed = parseRocmSmiJson(r.stdout)
  return parsed.gpus.length > 0 ? parsed : { gpus: [], reason: r.exitCode === 0 ? parsed.reason : failure('rocm-smi', r) }
}

/** Vendor from a controller's vendor or model string. */
export function vendorOf (text: string): GpuVendor {
  const t = text.toLowerCase()
  if (/nvidia/.test(t)) return 'nvidia'
  if (/\bamd\b|advanced micro devices|\bati\b|radeon/.test(t)) return 'amd'
  if (/intel/.test(t)) return 'intel'
  if (/apple/.test(t)) return 'apple'
  return 'other'
}

/** GpuInfo from systeminformation controllers (VRAM in MB there). */
export function gpusFromControllers (controllers: si.Systeminformation.GraphicsControllerData[]): GpuInfo[] {
  return controllers.map((c, index) => {
    const name = (c.model ?? c.name ?? '').trim() || 'GPU'
    const totalMb = c.memoryTotal ?? c.vram ?? 0
    return {
      index,
      name,
      vendor: vendorOf(`${c.vendor ?? ''} ${name}`),
      totalMemoryBytes: Math.max(0, Math.round(totalMb * MB)),
      usedMemoryBytes: Math.max(0, Math.round((c.memoryUsed ?? 0) * MB)),
      utilizationPercent: c.utilizationGpu ?? null,
      temperatureC: c.temperatureGpu ?? null,
      driverVersion: c.driverVersion ?? null,
      source: 'systeminformation'
    }
  })
}

type GraphicsSource = NonNullable<DetectGpusOptions['graphics']>

/**
 * Memoizes a controller-list source for `ttlMs` (default 10 min): the list is static and
 * `si.graphics()` spawns tools on Linux, so a monitor polling every few seconds should not call
 * it each time. A failed call is not remembered.
 */
export function cachedGraphics (source: GraphicsSource = async () => await si.graphics(), ttlMs = 600_000): GraphicsSource {
  let cached: { at: number, value: Promise<Awaited<ReturnType<GraphicsSource>>> } | null = null
  return async () => {
    if (cached === null || Date.now() - cached.at > ttlMs) {
      const value = source()
      cached = { at: Date.now(), value }
      value.catch(() => { cached = null })
    }
    return await cached.value
  }
}

/**
 * Lists this machine's GPUs. A missing tool is not an error; a tool that exists but reports no
 * GPU gives its reason in `reasons`. The systeminformation fallback runs only when neither
 * nvidia-smi nor rocm-smi exists.
 */
export async function detectGpus (opts: DetectGpusOptions = {}): Promise<GpuDetection> {
  const exec = opts.exec ?? execRunner
  const timeoutMs = opts.timeoutMs ?? 3000
  const log = opts.log ?? defaultLog
  const [nvidia, rocm] = await Promise.all([
    queryNvidia(exec, opts.nvidiaSmi ?? 'nvidia-smi', timeoutMs),
    queryRocm(exec, opts.rocmSmi ?? 'rocm-smi', timeoutMs)
  ])
  const gpus: GpuInfo[] = []
  const reasons: string[] = []
  for (const r of [nvidia, rocm]) {
    if (r === null) continue
    gpus.push(...r.gpus)
    if (r.gpus.length === 0 && r.reason !== null) reasons.push(r.reason)
  }
  if (nvidia === null && rocm === null) {
    try {
      const graphics = opts.graphics ?? (async () => await si.graphics())
      gpus.push(...gpusFromControllers((await graphics()).controllers))
    } catch (err) {
      log.debug('systeminformation graphics failed', { err: err as Error })
    }
  }
  if (reasons.length > 0) log.debug('GPU tools reported no GPUs', { reasons })
  return { gpus, reasons, tools: { nvidiaSmi: nvidia !== null, rocmSmi: rocm !== null } }
}
