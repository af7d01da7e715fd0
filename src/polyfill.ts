/**
 * libp2p 3 calls `Promise.withResolvers` (Node 22+). Node 20 (Raspberry Pi OS, this project's
 * floor) lacks it, so this module must be imported before anything that loads libp2p.
 */
interface WithResolvers<T> { promise: Promise<T>, resolve: (v: T | PromiseLike<T>) => void, reject: (e?: unknown) => void }

const P = Promise as unknown as { withResolvers?: <T>() => WithResolvers<T> }
if (typeof P.withResolvers !== 'function') {
  P.withResolvers = function withResolvers<T> (): WithResolvers<T> {
    let resolve!: WithResolvers<T>['resolve']
    let reject!: WithResolvers<T>['reject']
    const promise = new Promise<T>((res, rej) => { resolve = res; reject = rej })
    return { promise, resolve, reject }
  }
}
export {}
