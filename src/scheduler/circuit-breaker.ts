/**
 * Takes a host that keeps failing out of rotation for a cooldown, so a host that fails fast
 * does not attract more traffic under least-loaded. After the cooldown one trial request is let
 * through (half-open): success closes the breaker, failure opens it again.
 */
export class CircuitBreaker {
  private readonly hosts = new Map<string, { failures: number, openUntil: number, trial: boolean }>()

  constructor (private readonly threshold: number, private readonly cooldownMs: number, private readonly now: () => number = Date.now) {}

  /** Whether a request may go to `host` now (claims the half-open trial when there is one). */
  allow (host: string): boolean {
    const h = this.hosts.get(host)
    if (h == null || h.failures < this.threshold) return true
    if (this.now() < h.openUntil) return false
    if (h.trial) return false
    h.trial = true
    return true
  }

  /** Whether `host` is out of rotation, without claiming anything. */
  isOpen (host: string): boolean {
    const h = this.hosts.get(host)
    return h != null && h.failures >= this.threshold && (this.now() < h.openUntil || h.trial)
  }

  success (host: string): void {
    this.hosts.delete(host)
  }

  failure (host: string): void {
    const h = this.hosts.get(host) ?? { failures: 0, openUntil: 0, trial: false }
    h.failures++
    h.trial = false
    if (h.failures >= this.threshold) h.openUntil = this.now() + this.cooldownMs
    this.hosts.set(host, h)
  }

  state (): Record<string, { failures: number, open: boolean }> {
    const out: Record<string, { failures: number, open: boolean }> = {}
    for (const [id, h] of this.hosts) out[id] = { failures: h.failures, open: this.isOpen(id) }
    return out
  }
}
