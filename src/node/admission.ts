import { OverloadedError } from '../errors.js'

/** Who a request comes from: this node's own clients, or a peer (by id). */
export const LOCAL_SOURCE = 'local'

interface Waiter {
  source: string
  resolve: () => void
  reject: (e: unknown) => void
  signal?: AbortSignal
  onAbort?: () => void
}

/**
 * Per-node admission control: at most `maxConcurrent` requests run, up to `maxQueue` wait, and
 * the rest are refused at once (429) instead of piling up.
 *
 * Waiting is fair between sources (this node's own clients, each peer): every source has its own
 * FIFO queue, a freed slot goes to the sources in turn, and no source may hold more than half of
 * the queue. One peer sending as fast as it can therefore gets its share of the engine, not all of
 * it, and the node's own clients and other peers keep getting turns.
 */
export class Admission {
  private running = 0
  private waiting = 0
  /** Queues of the sources that have waiters, in the order they get their next turn. */
  private readonly queues = new Map<string, Waiter[]>()

  constructor (public maxConcurrent: number, public maxQueue: number) {}

  /** Changes the limits at run time; a raised limit admits waiters at once. */
  setLimits (maxConcurrent: number, maxQueue: number): void {
    this.maxConcurrent = maxConcurrent
    this.maxQueue = maxQueue
    while (this.running < this.maxConcurrent && this.waiting > 0) {
      this.running++
      this.next()
    }
  }

  get active (): number { return this.running }
  get queued (): number { return this.waiting }

  /** Waiters one source may have: half the queue (at least one), so others always find room. */
  get maxQueuedPerSource (): number {
    return Math.max(1, Math.ceil(this.maxQueue / 2))
  }

  /**
   * Waits for a turn; the returned function must be called exactly once when the request ends.
   * `source` is who asks: `LOCAL_SOURCE` or a peer id.
   */
  async acquire (signal?: AbortSignal, source: string = LOCAL_SOURCE): Promise<() => void> {
    signal?.throwIfAborted()
    if (this.running < this.maxConcurrent && this.waiting === 0) {
      this.running++
      return this.releaser()
    }
    if (this.waiting >= this.maxQueue) throw new OverloadedError(`This node is saturated (${this.running} running, ${this.waiting} queued); retry later`)
    const own = this.queues.get(source)
    if ((own?.length ?? 0) >= this.maxQueuedPerSource) {
      throw new OverloadedError(`This node's queue share for one source is full (${own?.length ?? 0} queued); retry later`)
    }
    await new Promise<void>((resolve, reject) => {
      const w: Waiter = { source, resolve, reject, signal }
      if (signal != null) {
        w.onAbort = () => {
          this.remove(w)
          reject(signal.reason)
        }
        signal.addEventListener('abort', w.onAbort, { once: true })
      }
      const queue = this.queues.get(source)
      if (queue != null) queue.push(w)
      else this.queues.set(source, [w])
      this.waiting++
    })
    return this.releaser()
  }

  /** Hands a slot (already counted as running) to the next source in turn. */
  private next (): void {
    const first = this.queues.entries().next()
    if (first.done === true) return
    const [source, queue] = first.value
    const w = queue.shift()!
    this.queues.delete(source)
    // A source with more waiters goes to the back of the line.
    if (queue.length > 0) this.queues.set(source, queue)
    this.waiting--
    if (w.onAbort != null) w.signal?.removeEventListener('abort', w.onAbort)
    w.resolve()
  }

  private remove (w: Waiter): void {
    const queue = this.queues.get(w.source)
    const i = queue?.indexOf(w) ?? -1
    if (queue == null || i < 0) return
    queue.splice(i, 1)
    if (queue.length === 0) this.queues.delete(w.source)
    this.waiting--
  }

  private releaser (): () => void {
    let done = false
    return () => {
      if (done) return
      done = true
      if (this.waiting > 0 && this.running <= this.maxConcurrent) {
        this.next()
      } else {
        this.running--
      }
    }
  }
}
