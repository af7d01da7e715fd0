/**
 * Turns callbacks into an async iterable: generation pushes text pieces as node-llama-cpp
 * reports them, a stream consumer pulls them. Unbounded, which is safe here because a
 * generation's output is bounded by its token budget.
 */
export class AsyncQueue<T> implements AsyncIterable<T> {
  private readonly items: T[] = []
  private done = false
  private failure: { error: unknown } | undefined
  private wake: (() => void) | undefined

  push (item: T): void {
    if (this.done) return
    this.items.push(item)
    this.notify()
  }

  /** Ends the iteration once the queued items are consumed. */
  end (): void {
    this.done = true
    this.notify()
  }

  /** Ends the iteration with `error` once the queued items are consumed. */
  fail (error: unknown): void {
    this.failure ??= { error }
    this.done = true
    this.notify()
  }

  private notify (): void {
    const wake = this.wake
    this.wake = undefined
    wake?.()
  }

  async * [Symbol.asyncIterator] (): AsyncIterator<T> {
    while (true) {
      const item = this.items.shift()
      if (item !== undefined) {
        yield item
        continue
      }
      if (this.done) {
        if (this.failure !== undefined) throw this.failure.error
        return
      }
      await new Promise<void>(resolve => { this.wake = resolve })
    }
  }
}
