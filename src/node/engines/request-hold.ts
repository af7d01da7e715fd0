/**
 * What a local engine tracks of the requests on one loaded model (embedded) or one running
 * child (llama-server): their controllers (aborted when the model goes away), who waits for the
 * last of them to end, when it was last used, and its idle timer.
 */
export interface RequestHolder {
  requests: Set<AbortController>
  onDrained: Array<() => void>
  lastUsed: number
  idleTimer?: NodeJS.Timeout
}

export interface RequestHold {
  /** The caller's signal joined with the holder's (aborted when the model goes away). */
  signal: AbortSignal
  /** Ends the request (once; later calls do nothing), with the keep-alive it asked for. */
  release: (keepAliveMs: number | undefined) => void
}

/**
 * Registers one request on `holder` and stops its idle timer. When the last request is released,
 * whoever waits for the holder to drain is woken and `onIdle` gets the releasing request's
 * keep-alive, to start the idle timer again.
 */
export function holdRequest (holder: RequestHolder, signal: AbortSignal | undefined, onIdle: (keepAliveMs: number | undefined) => void): RequestHold {
  const controller = new AbortController()
  holder.requests.add(controller)
  clearTimeout(holder.idleTimer)
  holder.lastUsed = Date.now()
  let released = false
  return {
    signal: signal === undefined ? controller.signal : AbortSignal.any([signal, controller.signal]),
    release: keepAliveMs => {
      if (released) return
      released = true
      holder.requests.delete(controller)
      holder.lastUsed = Date.now()
      if (holder.requests.size > 0) return
      for (const resolve of holder.onDrained.splice(0)) resolve()
      onIdle(keepAliveMs)
    }
  }
}
