/**
 * Percentiles and summaries of latency samples, for the benches.
 */

/** The `p`-th percentile (0..100) of `values`, nearest-rank; NaN for no values. */
export function percentile (values: readonly number[], p: number): number {
  if (values.length === 0) return NaN
  const sorted = [...values].sort((a, b) => a - b)
  const rank = Math.ceil((p / 100) * sorted.length)
  return sorted[Math.min(sorted.length - 1, Math.max(0, rank - 1))]
}

export interface Summary {
  n: number
  p50: number
  p99: number
  mean: number
}

export function summarize (values: readonly number[]): Summary {
  const mean = values.length === 0 ? NaN : values.reduce((s, v) => s + v, 0) / values.length
  return { n: values.length, p50: percentile(values, 50), p99: percentile(values, 99), mean }
}

/** A number rounded to `digits` decimals, or null when it is not finite (printed as `—`). */
export function round (value: number, digits = 1): number | null {
  if (!Number.isFinite(value)) return null
  const f = 10 ** digits
  return Math.round(value * f) / f
}
