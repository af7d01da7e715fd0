/**
 * Refusals worth an audit entry, at most one per key per window: a peer that repeats a claim
 * with every heartbeat or snapshot must not fill the audit log (nor the disk under it).
 */
export class AuditLimiter {
  private readonly last = new Map<string, number>()

  constructor (private readonly windowMs = 10_000, private readonly maxKeys = 4096, private readonly clock: () => number = Date.now) {}

  /** True when an entry for `key` may be written now (and marks it written). */
  take (key: string): boolean {
    const now = this.clock()
    if ((this.last.get(key) ?? -Infinity) > now - this.windowMs) return false
    if (this.last.size >= this.maxKeys) this.last.clear()
    this.last.set(key, now)
    return true
  }
}
