/**
 * A closed-loop load generator: `concurrency` workers each send a request, wait for its answer
 * and send the next, until the time is up. Throughput is completed requests over the time until
 * the last one finished (no request starts after the deadline).
 */

export interface ClosedLoopResult<T> {
  results: T[]
  elapsedMs: number
}

export async function closedLoop<T> (concurrency: number, durationMs: number, request: (worker: number) => Promise<T>): Promise<ClosedLoopResult<T>> {
  const results: T[] = []
  const t0 = performance.now()
  const deadline = t0 + durationMs
  await Promise.all(Array.from({ length: concurrency }, async (_, worker) => {
    while (performance.now() < deadline) results.push(await request(worker))
  }))
  return { results, elapsedMs: performance.now() - t0 }
}
