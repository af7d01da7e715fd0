/**
 * A fixed set of interchangeable slots (context sequences of one loaded model) handed out one
 * request at a time. When none is free, requests wait in a bounded FIFO queue; past the bound
 * they are refused with `OverloadedError` so a saturated node says so at once instead of
 * piling up work.
 */
import { OverloadedError } from '../../errors.js'

interface Waiter<T> {
  resolve: (slot: T) => void
  reject: (err: unknown) => void
  cleanup: () => void
}

export class SlotPool<T> {
  private readonly free: T[]
  private readonly waiters: Array<Waiter<T>> = []
  private readonly size: number
  private closedWith: unknown

  /** `maxWaiting`: requests that may queue when every slot is taken. */
  constructor (slots: readonly T[], private readonly maxWaiting: number) {
    this.free = [...slots]
    this.size = slots.length
  }

  get total (): number { return this.size }
  get available (): number { return this.free.length }
  get busy (): number { return this.size - this.free.length }
  get waiting (): number { return this.waiters.length }

  /**
   * Resolves with a slot, now or when one is released (first come, first served). Rejects with
   * `OverloadedError` when the queue is full, with the signal's reason when it aborts first,
   * and with the close reason once the pool is closed.
   */
  async acquire (signal?: AbortSignal): Promise<T> {
    if (this.closedWith !== undefined) throw this.closedWith
    signal?.throwIfAborted()
    const slot = this.free.pop()
    if (slot !== undefined) return slot
    if (this.waiters.length >= this.maxWaiting) {
      throw new OverloadedError(`All ${this.size} slots are busy and ${this.waiters.length} requests are already waiting`)
    }
    return await new Promise<T>((resolve, reject) => {
      const onAbort = (): void => {
        const i = this.waiters.indexOf(waiter)
        if (i >= 0) this.waiters.splice(i, 1)
        reject(signal?.reason)
      }
      const waiter: Waiter<T> = {
        resolve,
        reject,
        cleanup: () => { signal?.removeEventListener('abort', onAbort) }
      }
      signal?.addEventListener('abort', onAbort, { once: true })
      this.waiters.push(waiter)
    })
  }

  /** Returns a slot: straight to the longest waiter, else back to the free list. */
  release (slot: T): void {
    const waiter = this.waiters.shift()
    if (waiter !== undefined) {
      waiter.cleanup()
      waiter.resolve(slot)
      return
    }
    this.free.push(slot)
  }

  /** Rejects every waiter and all later `acquire` calls with `reason`. */
  close (reason: unknown): void {
    this.closedWith = reason
    for (const waiter of this.waiters.splice(0)) {
      waiter.cleanup()
      waiter.reject(reason)
    }
  }
}
