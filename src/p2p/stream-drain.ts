/**
 * `onDrain()` that waits for the next drain, for every libp2p stream.
 *
 * `@libp2p/utils` 7.4's `AbstractMessageStream.onDrain()` keeps one promise and never replaces it
 * once a drain resolved it: after a stream's first drain, every later `await stream.onDrain()`
 * returns at once, whether or not the stream can take more. A sender that honours back-pressure
 * (`if (!stream.send(x)) await stream.onDrain()`) then queues everything in its own write
 * buffer: a blob server put a whole 64 MiB model into memory ahead of a reader that had stopped
 * reading. It went unseen while yamux answered every frame with a window update (slow enough
 * that 500 ms moved only 20 MiB); once updates were batched (yamux-window.ts) the whole file went.
 *
 * The replacement waits for the stream's next `drain` (or rejects when it closes or the signal
 * aborts), with listeners of its own removed when it settles. Idempotent; applied by host.ts
 * before any stream exists.
 */
import type { AbortOptions } from '@libp2p/interface'
import { AbstractMessageStream, StreamClosedError } from '@libp2p/utils'

type Proto = AbstractMessageStream & { __shepherdDrain?: true }

/** Resolves on `stream`'s next drain; at once when it needs none. */
export async function nextDrain (stream: AbstractMessageStream, options?: AbortOptions): Promise<void> {
  if (stream.writableNeedsDrain !== true) return
  const signal = options?.signal
  signal?.throwIfAborted()
  await new Promise<void>((resolve, reject) => {
    const done = (): void => {
      stream.removeEventListener('drain', onDrain)
      stream.removeEventListener('close', onClose)
      signal?.removeEventListener('abort', onAbort)
    }
    const onDrain = (): void => { done(); resolve() }
    const onClose = (evt: Event): void => { done(); reject((evt as Event & { error?: Error }).error ?? new StreamClosedError('the stream closed before it drained')) }
    const onAbort = (): void => { done(); reject(signal?.reason) }
    stream.addEventListener('drain', onDrain)
    stream.addEventListener('close', onClose)
    signal?.addEventListener('abort', onAbort, { once: true })
  })
}

/** Applies `nextDrain` as every stream's `onDrain`; true once applied (now or before). */
export function fixStreamDrain (): boolean {
  const proto = AbstractMessageStream.prototype as Proto
  if (proto.__shepherdDrain === true) return true
  proto.onDrain = async function (this: AbstractMessageStream, options?: AbortOptions): Promise<void> {
    await nextDrain(this, options)
  }
  proto.__shepherdDrain = true
  return true
}

fixStreamDrain()
