/**
 * Parser for `rocm-smi ... --json`. rocm-smi prints one object per card (`card0`, `card1`, ...)
 * plus `system`; which keys a card has depends on the flags, the ROCm version and the card, so
 * every field is optional here.
 */
import type { GpuInfo } from './types.js'
import type { GpuParseResult } from './nvidia.js'

/** `rocm-smi` arguments for the monitor's query. */
export const ROCM_SMI_ARGS: readonly string[] = [
  '--showproductname', '--showuse', '--showmeminfo', 'vram', '--showtemp', '--showdriverversion', '--json'
]

type Card = Record<string, unknown>

/** Looks a key up case-insensitively: rocm-smi has printed both `Card Series` and `Card series`. */
function field (card: Card, ...names: string[]): string | null {
  for (const name of names) {
    const lower = name.toLowerCase()
    for (const [k, v] of Object.entries(card)) {
      if (k.toLowerCase() === lower && (typeof v === 'string' || typeof v === 'number')) {
        const s = String(v).trim()
        if (s !== '' && !/^N\/A$/i.test(s)) return s
      }
    }
  }
  return null
}

function number (s: string | null): number | null {
  if (s === null) return null
  const m = /-?\d+(?:\.\d+)?/.exec(s)
  return m === null ? null : Number(m[0])
}

function temperature (card: Card): number | null {
  const t = number(field(card, 'Temperature (Sensor edge) (C)', 'Temperature (Sensor junction) (C)'))
  if (t !== null) return t
  // Older releases and APUs name the sensors differently; take the first temperature given.
  for (const [k, v] of Object.entries(card)) {
    if (/^Temperature\b/i.test(k) && typeof v === 'string') {
      const n = number(v)
      if (n !== null) return n
    }
  }
  return null
}

/**
 * Parses rocm-smi JSON. Cards without VRAM figures (e.g. `--showmemuse` only) get 0 bytes, and
 * unreported utilization/temperature are null. Text that is not rocm-smi JSON gives no GPUs and
 * the text's first line as the reason.
 */
export function parseRocmSmiJson (output: string): GpuParseResult {
  // rocm-smi sometimes prints warnings before the JSON document.
  const start = output.indexOf('{')
  let doc: unknown
  try {
    doc = start < 0 ? undefined : JSON.parse(output.slice(start))
  } catch {
    doc = undefined
  }
  if (doc === null || typeof doc !== 'object' || Array.isArray(doc)) {
    const first = output.split(/\r?\n/).map(l => l.trim()).find(l => l !== '')
    return { gpus: [], reason: first ?? 'rocm-smi printed nothing' }
  }
  return fromCards(doc as Record<string, unknown>)
}

function fromCards (root: Record<string, unknown>): GpuParseResult {
  const system = (typeof root.system === 'object' && root.system !== null ? root.system : {}) as Card
  const driverVersion = field(system, 'Driver version')

  const cards = Object.entries(root)
    .map(([k, v]) => ({ m: /^card(\d+)$/i.exec(k), v }))
    .filter((e): e is { m: RegExpExecArray, v: Card } => e.m !== null && typeof e.v === 'object' && e.v !== null)
    .sort((a, b) => Number(a.m[1]) - Number(b.m[1]))

  const gpus: GpuInfo[] = cards.map(({ m, v: card }) => {
    const uuid = field(card, 'Unique ID')
    return {
      index: Number(m[1]),
      name: field(card, 'Card Series', 'Device Name', 'Card Model', 'Card SKU') ?? 'AMD GPU',
      vendor: 'amd',
      ...(uuid !== null ? { uuid } : {}),
      totalMemoryBytes: number(field(card, 'VRAM Total Memory (B)')) ?? 0,
      usedMemoryBytes: number(field(card, 'VRAM Total Used Memory (B)')) ?? 0,
      utilizationPercent: number(field(card, 'GPU use (%)')),
      temperatureC: temperature(card),
      driverVersion: field(card, 'Driver version') ?? driverVersion,
      source: 'rocm-smi'
    }
  })
  return { gpus, reason: gpus.length === 0 ? 'no cards in rocm-smi output' : null }
}

/** Splits one CSV line, honouring double quotes. */
function splitCsv (line: string): string[] {
  const cells: string[] = []
  let cur = ''
  let quoted = false
  for (let i = 0; i < line.length; i++) {
    const ch = line[i]
    if (quoted) {
      if (ch === '"' && line[i + 1] === '"') { cur += '"'; i++ } else if (ch === '"') quoted = false
      else cur += ch
    } else if (ch === '"') quoted = true
    else if (ch === ',') { cells.push(cur); cur = '' } else cur += ch
  }
  cells.push(cur)
  return cells
}

/** Parses `rocm-smi ... --csv`: a header line, then one `cardN,...` line per GPU. */
export function parseRocmSmiCsv (output: string): GpuParseResult {
  const lines = output.split(/\r?\n/).filter(l => l.trim() !== '')
  const at = lines.findIndex(l => /^"?device"?,/i.test(l))
  if (at < 0) return { gpus: [], reason: lines[0]?.trim() ?? 'rocm-smi printed nothing' }
  const header = splitCsv(lines[at]).map(h => h.trim())
  const root: Record<string, unknown> = {}
  for (const line of lines.slice(at + 1)) {
    const cells = splitCsv(line)
    if (!/^card\d+$/i.test(cells[0]?.trim() ?? '')) continue
    root[cells[0].trim()] = Object.fromEntries(header.slice(1).map((h, i) => [h, cells[i + 1] ?? '']))
  }
  return fromCards(root)
}
