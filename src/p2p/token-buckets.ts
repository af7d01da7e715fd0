/**
 * One token bucket per key (a peer id): `ratePerSec` tokens a second, up to `burst`. Idle keys
 * are forgotten, so the table stays as small as the set of active peers.
 */
export class TokenBuckets {
  private readonly buckets = new Map<string, { tokens: number, at: number }>()
  private sweptAt = 0

  constructor (private readonly ratePerSec: number, private readonly burst: number, private readonly now: () => number = Date.now) {}

  /**
   * Takes `cost` tokens (default one) for `key`; false when its bucket holds fewer (the caller
   * drops the message, and nothing is taken). A cost above `burst` can never pass.
   */
  take (key: string, cost = 1): boolean {
    const now = this.now()
    if (now - this.sweptAt > 60_000) this.sweep(now)
    let b = this.buckets.get(key)
    if (b == null) this.buckets.set(key, b = { tokens: this.burst, at: now })
    b.tokens = Math.min(this.burst, b.tokens + (now - b.at) / 1000 * this.ratePerSec)
    b.at = now
    if (b.tokens < cost) return false
    b.tokens -= cost
    return true
  }

  private sweep (now: number): void {
    this.sweptAt = now
    for (const [k, b] of this.buckets) if (now - b.at > 60_000) this.buckets.delete(k)
  }
}
