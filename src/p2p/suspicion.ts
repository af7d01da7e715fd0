/**
 * Lifeguard's suspicion timeout (memberlist `suspicion.go`), as pure functions: a suspicion
 * starts at `max` and shrinks towards `min` as independent members confirm it, so a member many
 * see failing is declared dead quickly, while one suspected by a single slow node (itself the
 * likely problem) gets the long timeout and time to refute.
 */

/** memberlist `suspicionTimeout`: `mult × max(1, log10(n)) × interval`. */
export function suspicionMinMs (mult: number, n: number, intervalMs: number): number {
  return mult * Math.max(1, Math.log10(Math.max(1, n))) * intervalMs
}

/**
 * The timeout after `confirmations` independent confirmations of `k` expected:
 * `max - log(c + 1) / log(k + 1) × (max - min)`, never below `min`.
 */
export function suspicionTimeoutMs (minMs: number, maxMs: number, k: number, confirmations: number): number {
  if (k < 1) return minMs
  const frac = Math.log(confirmations + 1) / Math.log(k + 1)
  return Math.max(minMs, Math.floor(maxMs - frac * (maxMs - minMs)))
}

/** One running suspicion: when it started, its bounds and who confirmed it. */
export interface Suspicion {
  startedAt: number
  minMs: number
  maxMs: number
  /** Confirmations expected (Lifeguard's k: `suspicionMult - 2`). */
  k: number
  /** Distinct members that suspected the same incarnation (the first suspecter included). */
  confirmedBy: Set<string>
}

export function newSuspicion (from: string, now: number, minMs: number, maxMs: number, k: number): Suspicion {
  return { startedAt: now, minMs, maxMs, k, confirmedBy: new Set([from]) }
}

/** Adds a confirmation; true when it is new (a new confirmation is gossiped on, a repeat is not). */
export function confirm (s: Suspicion, from: string): boolean {
  if (s.confirmedBy.has(from) || s.confirmedBy.size > s.k) return false
  s.confirmedBy.add(from)
  return true
}

/** When the suspicion expires: the member is then declared dead. */
export function suspicionDeadline (s: Suspicion): number {
  return s.startedAt + suspicionTimeoutMs(s.minMs, s.maxMs, s.k, s.confirmedBy.size - 1)
}
