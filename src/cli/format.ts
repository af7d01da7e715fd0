import type { PeerView } from '../node/index.js'
import { stripControl } from '../p2p/text.js'

const GB = 1024 ** 3

export function bytes (n: number | undefined | null): string {
  if (n == null || !Number.isFinite(n)) return '-'
  if (n >= GB) return `${(n / GB).toFixed(1)}G`
  if (n >= 1024 ** 2) return `${(n / 1024 ** 2).toFixed(0)}M`
  return `${Math.round(n / 1024)}K`
}

export function ago (iso: string | null, now = Date.now()): string {
  if (iso == null) return 'never'
  const s = (now - Date.parse(iso)) / 1000
  if (s < 1) return 'now'
  if (s < 120) return `${Math.round(s)}s ago`
  if (s < 7200) return `${Math.round(s / 60)}m ago`
  return `${Math.round(s / 3600)}h ago`
}

/**
 * Renders rows as an aligned text table. Cells are cleaned of control characters here too: a
 * cell is often a name a peer chose, and a newline or escape in it would forge rows or recolor
 * the terminal, whatever path the value took to get here.
 */
export function table (header: string[], rawRows: string[][]): string {
  const rows = rawRows.map(r => r.map(stripControl))
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map(r => (r[i] ?? '').length)))
  const line = (cells: string[]): string => cells.map((c, i) => c.padEnd(widths[i])).join('  ').trimEnd()
  return [line(header), ...rows.map(line)].join('\n')
}

export function peerRow (p: PeerView, now = Date.now()): string[] {
  const r = p.resources
  const gpus = r == null ? '-' : r.gpus.length === 0 ? 'none' : r.gpus.map(g => `${g.name} ${bytes(g.totalMemoryBytes)}`).join(', ')
  return [
    p.name,
    p.id.slice(-10),
    p.status,
    ago(p.lastSeen, now),
    p.rttMs == null ? '-' : `${p.rttMs.toFixed(1)}ms`,
    r == null ? '-' : `${r.cpu.cores}x ${Math.round(r.cpu.usagePercent)}%`,
    r == null ? '-' : `${bytes(r.memory.totalBytes - r.memory.availableBytes)}/${bytes(r.memory.totalBytes)}`,
    gpus,
    String(p.models.length)
  ]
}

export const PEER_HEADER = ['NAME', 'ID', 'STATUS', 'LAST SEEN', 'RTT', 'CPU', 'MEMORY', 'GPUS', 'MODELS']
