/**
 * A histogram of delays (here: heartbeat delivery, sender's clock to receiver's), with fixed
 * bucket bounds in ms, as Prometheus keeps them: a reader takes two readings and subtracts, so it
 * sees the delays of its own window, not those of a busy start.
 */
export const DELAY_BUCKETS_MS = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000] as const

export class DelayHistogram {
  /** Per bucket (and one past the last bound, +Inf): how many delays fell at or below its bound. */
  readonly counts: number[] = new Array(DELAY_BUCKETS_MS.length + 1).fill(0)
  count = 0
  sum = 0

  /**
   * Records one delay. A negative one (a sender's clock ahead of ours, or a lying timestamp: one
   * stamped 10 years ahead once made the sum -7.6e12) counts as 0, so the sum never goes negative.
   */
  push (ms: number): void {
    if (!Number.isFinite(ms)) return
    ms = Math.max(0, ms)
    const i = DELAY_BUCKETS_MS.findIndex(b => ms <= b)
    this.counts[i < 0 ? DELAY_BUCKETS_MS.length : i]++
    this.count++
    this.sum += ms
  }

  /** Cumulative counts per bound, `+Inf` last: the `_bucket` samples. */
  cumulative (): Array<[le: string, count: number]> {
    let n = 0
    const out: Array<[string, number]> = DELAY_BUCKETS_MS.map((b, i) => [String(b), n += this.counts[i]])
    out.push(['+Inf', this.count])
    return out
  }
}
