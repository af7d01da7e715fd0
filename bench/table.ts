/**
 * What every bench returns, and the one way it is printed.
 */

export type Cell = string | number | null

export interface BenchTable {
  title: string
  columns: string[]
  /** One array per row, in column order. Numbers print as given; null prints as `—`. */
  rows: Cell[][]
  /** Lines printed under the table: method, units, caveats. */
  notes?: string[]
}

/** A bench module as the registry in `bench/index.ts` loads it. */
export interface BenchModule {
  run: () => Promise<BenchTable>
}

function cellText (cell: Cell): string {
  if (cell == null) return '—'
  if (typeof cell === 'number') return Number.isInteger(cell) ? String(cell) : cell.toFixed(1)
  return cell
}

/** Renders a table as aligned plain text (numbers right-aligned). */
export function formatTable (table: BenchTable): string {
  const rows = table.rows.map(r => table.columns.map((_, i) => cellText(r[i] ?? null)))
  const widths = table.columns.map((c, i) => Math.max(c.length, ...rows.map(r => r[i].length)))
  const numeric = table.columns.map((_, i) => table.rows.length > 0 && table.rows.every(r => typeof r[i] === 'number' || r[i] == null))
  const line = (cells: string[]): string => cells.map((c, i) => numeric[i] ? c.padStart(widths[i]) : c.padEnd(widths[i])).join('  ').trimEnd()
  const out = [`## ${table.title}`, '', line(table.columns), widths.map(w => '-'.repeat(w)).join('  '), ...rows.map(line)]
  if (table.notes != null && table.notes.length > 0) out.push('', ...table.notes.map(n => `  ${n}`))
  return out.join('\n')
}
