/**
 * Parsers for nvidia-smi output: the CSV of `--query-gpu` (what the monitor runs) and the XML of
 * `-q -x` (the fallback). Pure functions over text, tested on recorded outputs.
 */
import type { GpuInfo } from './types.js'

/** The fields the monitor asks for, in order. */
export const NVIDIA_SMI_QUERY_FIELDS = [
  'index', 'name', 'uuid', 'memory.total', 'memory.used', 'utilization.gpu', 'temperature.gpu', 'driver_version'
] as const

/** `nvidia-smi` arguments for the monitor's query (CSV, no header, no units). */
export const NVIDIA_SMI_ARGS: readonly string[] = [
  `--query-gpu=${NVIDIA_SMI_QUERY_FIELDS.join(',')}`,
  '--format=csv,noheader,nounits'
]

/** `nvidia-smi` arguments for the full XML report. */
export const NVIDIA_SMI_XML_ARGS: readonly string[] = ['-q', '-x']

export interface GpuParseResult {
  gpus: GpuInfo[]
  /** Why there are no GPUs, when the tool said so (no driver, NVML mismatch, ...). */
  reason: string | null
}

const MIB = 1024 * 1024

/** Sentences nvidia-smi prints instead of data when it cannot reach a GPU. */
const FAILURE_PATTERNS = [
  /NVIDIA-SMI has failed/i,
  /Failed to initialize NVML/i,
  /No devices were found/i,
  /couldn't communicate with the NVIDIA driver/i,
  /Unable to determine the device handle/i,
  /Driver\/library version mismatch/i
]

/** The line in which nvidia-smi says it cannot reach a GPU, or null. */
export function nvidiaSmiFailureReason (text: string): string | null {
  for (const line of text.split(/\r?\n/)) {
    const t = line.trim()
    if (t !== '' && FAILURE_PATTERNS.some(p => p.test(t))) return t
  }
  return null
}

/** `[N/A]`, `N/A`, `[Not Supported]`, `[Unknown Error]`, ...: values nvidia-smi could not get. */
function isMissing (v: string | undefined): boolean {
  if (v === undefined) return true
  const t = v.trim()
  return t === '' || /^\[.*\]$/.test(t) || /^N\/A$/i.test(t) || /^Not Supported$/i.test(t)
}

function text (v: string | undefined): string | null {
  return isMissing(v) ? null : (v as string).trim()
}

/** A number with an optional unit suffix (`81559 MiB`, `41 %`, `45 C`). */
function num (v: string | undefined): number | null {
  if (isMissing(v)) return null
  const m = /^(-?\d+(?:\.\d+)?)/.exec((v as string).trim())
  return m === null ? null : Number(m[1])
}

/** Bytes from a memory value in MiB (nvidia-smi's unit for memory, with or without the suffix). */
function mibBytes (v: string | undefined): number | null {
  const n = num(v)
  if (n === null) return null
  const unit = /([KMGT]i?B)\s*$/i.exec((v as string).trim())?.[1]?.toUpperCase()
  const scale = unit === 'KIB' || unit === 'KB' ? 1024 : unit === 'GIB' || unit === 'GB' ? 1024 * MIB : unit === 'TIB' || unit === 'TB' ? 1024 * 1024 * MIB : MIB
  return Math.round(n * scale)
}

/** `memory.total [MiB]` → `memory.total`. */
function fieldName (header: string): string {
  return header.trim().replace(/\s*\[[^\]]*\]\s*$/, '').toLowerCase()
}

function looksLikeHeader (cells: string[]): boolean {
  return cells.every(c => /^[a-z][a-z0-9_.]*(\s*\[[^\]]*\])?$/i.test(c.trim())) &&
    cells.some(c => ['index', 'name', 'uuid', 'memory.total', 'memory.used', 'driver_version'].includes(fieldName(c)))
}

function gpuFromFields (get: (field: string) => string | undefined, row: number): GpuInfo | null {
  const name = text(get('name')) ?? text(get('gpu_name'))
  const index = num(get('index'))
  const used = mibBytes(get('memory.used'))
  let total = mibBytes(get('memory.total'))
  if (total === null) {
    // Without memory.total, nvidia-smi's total is reserved + used + free.
    const free = mibBytes(get('memory.free'))
    if (free !== null && used !== null) total = free + used + (mibBytes(get('memory.reserved')) ?? 0)
  }
  if (name === null && index === null && total === null) return null
  const uuid = text(get('uuid')) ?? text(get('gpu_uuid'))
  return {
    index: index ?? row,
    name: name ?? 'NVIDIA GPU',
    vendor: 'nvidia',
    ...(uuid !== null ? { uuid } : {}),
    totalMemoryBytes: total ?? 0,
    usedMemoryBytes: used ?? 0,
    utilizationPercent: num(get('utilization.gpu')),
    temperatureC: num(get('temperature.gpu')),
    driverVersion: text(get('driver_version')),
    source: 'nvidia-smi'
  }
}

/**
 * Parses `nvidia-smi --query-gpu=... --format=csv[,noheader][,nounits]`.
 * With a header line, any subset and order of fields is understood, with or without units;
 * without one, the columns are taken to be {@link NVIDIA_SMI_QUERY_FIELDS}. Failure messages
 * (no driver, NVML mismatch) give no GPUs and a reason.
 */
export function parseNvidiaSmiCsv (output: string): GpuParseResult {
  const reason = nvidiaSmiFailureReason(output)
  const lines = output.split(/\r?\n/).map(l => l.trim()).filter(l => l !== '')
  if (lines.length === 0) return { gpus: [], reason: reason ?? 'nvidia-smi printed nothing' }

  let fields: string[] = [...NVIDIA_SMI_QUERY_FIELDS]
  let first = 0
  const head = lines[0].split(',')
  if (looksLikeHeader(head)) {
    fields = head.map(fieldName)
    first = 1
  }
  const nameAt = fields.indexOf('name')

  const gpus: GpuInfo[] = []
  for (const line of lines.slice(first)) {
    let cells = line.split(',').map(c => c.trim())
    if (cells.length < fields.length) continue // a message line, not data
    if (cells.length > fields.length) {
      // nvidia-smi does not quote; only a product name can carry commas.
      if (nameAt < 0) continue
      const extra = cells.length - fields.length
      cells = [...cells.slice(0, nameAt), cells.slice(nameAt, nameAt + extra + 1).join(', '), ...cells.slice(nameAt + extra + 1)]
    }
    const gpu = gpuFromFields(f => { const i = fields.indexOf(f); return i < 0 ? undefined : cells[i] }, gpus.length)
    if (gpu !== null) gpus.push(gpu)
  }
  return { gpus, reason: gpus.length === 0 ? (reason ?? 'no GPU rows in nvidia-smi output') : null }
}

interface XmlNode {
  name: string
  attrs: string
  children: XmlNode[]
  text: string
}

const ENTITIES: Record<string, string> = { amp: '&', lt: '<', gt: '>', quot: '"', apos: "'" }

function decodeEntities (s: string): string {
  return s.replace(/&(#x[0-9a-f]+|#\d+|[a-z]+);/gi, (m, e: string) => {
    if (e[0] === '#') {
      const code = e[1] === 'x' || e[1] === 'X' ? parseInt(e.slice(2), 16) : parseInt(e.slice(1), 10)
      return Number.isFinite(code) && code <= 0x10ffff ? String.fromCodePoint(code) : m
    }
    return ENTITIES[e.toLowerCase()] ?? m
  })
}

/** A tolerant reader for the plain element/text XML nvidia-smi writes (no namespaces, no CDATA). */
function parseXml (xml: string): XmlNode {
  const root: XmlNode = { name: '#root', attrs: '', children: [], text: '' }
  const stack: XmlNode[] = [root]
  const body = xml.replace(/<\?[\s\S]*?\?>|<!--[\s\S]*?-->|<!DOCTYPE[^>]*>/g, '')
  const token = /<(\/?)([A-Za-z_][\w.:-]*)([^>]*?)(\/?)>|([^<]+)/g
  let m: RegExpExecArray | null
  while ((m = token.exec(body)) !== null) {
    const top = stack[stack.length - 1]
    if (m[5] !== undefined) {
      top.text += m[5]
    } else if (m[1] === '/') {
      // Close the nearest matching element; a stray close tag is ignored.
      const at = stack.map(n => n.name).lastIndexOf(m[2])
      if (at > 0) stack.length = at
    } else {
      const node: XmlNode = { name: m[2], attrs: m[3], children: [], text: '' }
      top.children.push(node)
      if (m[4] !== '/') stack.push(node)
    }
  }
  return root
}

function child (node: XmlNode | undefined, ...path: string[]): XmlNode | undefined {
  let n = node
  for (const p of path) n = n?.children.find(c => c.name === p)
  return n
}

function childText (node: XmlNode | undefined, ...path: string[]): string | undefined {
  const n = child(node, ...path)
  return n === undefined ? undefined : decodeEntities(n.text).trim()
}

/** Parses the XML of `nvidia-smi -q -x`. */
export function parseNvidiaSmiXml (output: string): GpuParseResult {
  const log = child(parseXml(output), 'nvidia_smi_log')
  if (log === undefined) return { gpus: [], reason: nvidiaSmiFailureReason(output) ?? 'no nvidia_smi_log element in nvidia-smi output' }
  const driverVersion = text(childText(log, 'driver_version'))
  const gpus: GpuInfo[] = []
  for (const g of log.children.filter(c => c.name === 'gpu')) {
    const uuid = text(childText(g, 'uuid'))
    gpus.push({
      // -q lists GPUs in nvidia-smi index order (PCI bus order); minor_number is the /dev node.
      index: gpus.length,
      name: text(childText(g, 'product_name')) ?? 'NVIDIA GPU',
      vendor: 'nvidia',
      ...(uuid !== null ? { uuid } : {}),
      totalMemoryBytes: mibBytes(childText(g, 'fb_memory_usage', 'total')) ?? 0,
      usedMemoryBytes: mibBytes(childText(g, 'fb_memory_usage', 'used')) ?? 0,
      utilizationPercent: num(childText(g, 'utilization', 'gpu_util')),
      temperatureC: num(childText(g, 'temperature', 'gpu_temp')),
      driverVersion,
      source: 'nvidia-smi'
    })
  }
  return { gpus, reason: gpus.length === 0 ? (nvidiaSmiFailureReason(output) ?? 'no GPUs in nvidia-smi report') : null }
}
