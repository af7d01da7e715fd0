import { OverloadedError } from '../errors.js'

/**
 * Per-node admission control: at most `maxConcurrent` requests run, up to `maxQueue` wait in
 * FIFO order, and the rest are refused at once (429) instead of piling up.
 */
export class Admission {
  private running = 0
  private readonly waiters: Array<{ resolve: () => void, reject: (e: unknown) => void, signal?: AbortSignal, onAbort?: () => void }> = []

  constructor (public maxConcurrent: number, public maxQueue: number) {}

  /** Changes the limits at run time; a raised limit admits waiters at once. */
  setLimits (maxConcurrent: number, maxQueue: number): void {
    this.maxConcurrent = maxConcurrent
    this.maxQueue = maxQueue
    while (this.running < this.maxConcurrent && this.waiters.length > 0) {
      const next = this.waiters.shift()!
      if (next.onAbort != null) next.signal?.removeEventListener('abort', next.onAbort)
      this.running++
      next.resolve()
    }
  }

  get active (): number { return this.running }
  get queued (): number { return this.waiters.length }

  /** Waits for a turn; the returned function must be called exactly once when the request ends. */
  async acquire (signal?: AbortSignal): Promise<() => void> {
    signal?.throwIfAborted()
    if (this.running < this.maxConcurrent) {
      this.running++
      return this.releaser()
    }
    if (this.waiters.length >= this.maxQueue) throw new OverloadedError(`This node is saturated (${this.running} running, ${this.waiters.length} queued); retry later`)
    await new Promise<void>((resolve, reject) => {
      const w: (typeof this.waiters)[number] = { resolve, reject, signal }
      if (signal != null) {
        w.onAbort = () => {
          const i = this.waiters.indexOf(w)
          if (i >= 0) this.waiters.splice(i, 1)
          reject(signal.reason)
        }
        signal.addEventListener('abort', w.onAbort, { once: true })
      }
      this.waiters.push(w)
    })
    return this.releaser()
  }

  private releaser (): () => void {
    let done = false
    return () => {
      if (done) return
      done = true
      const next = this.waiters.shift()
      if (next != null) {
        if (next.onAbort != null) next.signal?.removeEventListener('abort', next.onAbort)
        next.resolve()
      } else {
        this.running--
      }
    }
  }
}
