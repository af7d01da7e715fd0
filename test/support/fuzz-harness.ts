/**
 * Shared plumbing of the fuzz tests (test/fuzz): one seed per run, printed so a failure can be
 * replayed (`FUZZ_SEED=<n>`), bounded case counts (`FUZZ_SCALE` multiplies them), a recorder of
 * unhandled rejections and uncaught exceptions, a heap probe, and the checks every decoder
 * failure must pass (a `ShepherdError` with one of the codes its contract names).
 */
import assert from 'node:assert/strict'
import v8 from 'node:v8'
import vm from 'node:vm'
import fc from 'fast-check'
import { ShepherdError } from '../../src/errors.js'

function envInt (name: string): number | undefined {
  const raw = process.env[name]
  if (raw == null || raw === '') return undefined
  const n = Number(raw)
  if (!Number.isFinite(n)) throw new Error(`${name} must be a number, not '${raw}'`)
  return n
}

/** The seed of this run: `FUZZ_SEED`, else random. Every `fc.assert` of the process uses it. */
export const FUZZ_SEED = envInt('FUZZ_SEED') ?? (Math.random() * 0x7fffffff) | 0
fc.configureGlobal({ seed: FUZZ_SEED })
console.log(`# fuzz seed ${FUZZ_SEED} (replay with FUZZ_SEED=${FUZZ_SEED})`)

/** `n` cases, scaled by `FUZZ_SCALE` (default 1), at least 1. */
export function runs (n: number): number {
  return Math.max(1, Math.round(n * (envInt('FUZZ_SCALE') ?? 1)))
}

/** Counts the cases a property ran and how long they took, for the summary line. */
export class FuzzCounter {
  cases = 0
  private readonly t0 = performance.now()
  constructor (readonly name: string) {}
  hit (): void { this.cases++ }
  /** Prints `# fuzz <name>: <cases> cases in <ms> ms` (the node test runner shows `#` lines). */
  report (): void {
    console.log(`# fuzz ${this.name}: ${this.cases} cases in ${(performance.now() - this.t0).toFixed(0)} ms`)
  }
}

/** Prints a short form of a failing value (fast-check's own report can be megabytes of bytes). */
function preview (v: unknown): string {
  let text: string
  try {
    text = fc.stringify(v)
  } catch {
    try { text = JSON.stringify(v, (_k, x) => x instanceof Uint8Array ? `Uint8Array(${Array.from(x).join(',')})` : x) } catch { text = String(v) }
  }
  return text.length > 2000 ? `${text.slice(0, 2000)}… (${text.length} chars)` : text
}

/** fast-check's failure, with the assertion that failed (the last one seen, i.e. on the shrunk value). */
function explain (err: unknown, last: { value: unknown, error: unknown } | undefined): Error {
  if (last === undefined) return err as Error
  const inner = last.error as Error
  return new Error(`${(err as Error).message.split('\nCounterexample')[0]}\nFailing value: ${preview(last.value)}\nFailure: ${inner?.stack ?? String(inner)}`)
}

/** Runs a sync property `numRuns` times and prints what it did. */
export function check<T> (name: string, arb: fc.Arbitrary<T>, numRuns: number, predicate: (value: T) => void, params: fc.Parameters<[T]> = {}): void {
  const counter = new FuzzCounter(name)
  let last: { value: unknown, error: unknown } | undefined
  try {
    fc.assert(fc.property(arb, v => {
      counter.hit()
      try { predicate(v) } catch (error) { last = { value: v, error }; throw error }
    }), { ...params, numRuns: runs(numRuns) })
  } catch (err) {
    throw explain(err, last)
  }
  counter.report()
}

/**
 * Runs an async property `numRuns` times and prints what it did. Over real streams a failure is
 * reported as found (no shrinking): each shrink step would replay a network exchange.
 */
export async function checkAsync<T> (name: string, arb: fc.Arbitrary<T>, numRuns: number, predicate: (value: T) => Promise<void>, params: fc.Parameters<[T]> = { endOnFailure: true }): Promise<void> {
  const counter = new FuzzCounter(name)
  let last: { value: unknown, error: unknown } | undefined
  try {
    await fc.assert(fc.asyncProperty(arb, async v => {
      counter.hit()
      try { await predicate(v) } catch (error) { last = { value: v, error }; throw error }
    }), { ...params, numRuns: runs(numRuns) })
  } catch (err) {
    throw explain(err, last)
  }
  counter.report()
}

/**
 * Records every unhandled rejection and uncaught exception from `start()` on. A fuzz test
 * asserts the list is empty at its end: a hostile input must never escape into the process.
 */
export class ProcessWatch {
  readonly failures: Array<{ kind: string, error: unknown }> = []
  private readonly onRejection = (error: unknown): void => { this.failures.push({ kind: 'unhandledRejection', error }) }
  private readonly onException = (error: unknown): void => { this.failures.push({ kind: 'uncaughtException', error }) }

  /** Keeps the event loop alive: a read stuck on an unref'd timer must fail its test, not end the process quietly. */
  private keepAlive?: NodeJS.Timeout

  start (): this {
    process.on('unhandledRejection', this.onRejection)
    process.on('uncaughtException', this.onException)
    this.keepAlive = setInterval(() => {}, 1000)
    return this
  }

  stop (): void {
    process.off('unhandledRejection', this.onRejection)
    process.off('uncaughtException', this.onException)
    clearInterval(this.keepAlive)
  }

  assertClean (): void {
    const shown = this.failures.slice(0, 5).map(f => `${f.kind}: ${(f.error as Error)?.stack ?? String(f.error)}`)
    assert.equal(this.failures.length, 0, `hostile input escaped into the process:\n${shown.join('\n')}`)
  }
}

/**
 * A full garbage collection: `global.gc` when the process runs with `--expose-gc`, else the
 * same function obtained at run time (V8 flag set, then read from a fresh context), so heap
 * bounds are measured after collection in every run, `npm test` included.
 */
const collect: (() => void) | undefined = (() => {
  const exposed = (globalThis as { gc?: () => void }).gc
  if (exposed != null) return exposed
  try {
    v8.setFlagsFromString('--expose_gc')
    return vm.runInNewContext('gc') as () => void
  } catch {
    return undefined
  }
})()

/** Heap in use, after full collections when they can be had. */
export async function heapUsed (): Promise<number> {
  if (collect != null) {
    for (let i = 0; i < 3; i++) {
      collect()
      await new Promise(resolve => setImmediate(resolve))
    }
  }
  return process.memoryUsage().heapUsed
}

/**
 * Growth allowed across a fuzz run. Measured after collections the bound is tight; without them
 * garbage not yet collected counts, so it is generous.
 */
export function heapGrowthBound (tightBytes: number): number {
  return collect != null ? tightBytes : Math.max(tightBytes * 4, 256 * 1024 * 1024)
}

export async function assertHeapBounded (before: number, tightBytes: number, what: string): Promise<void> {
  const after = await heapUsed()
  const bound = heapGrowthBound(tightBytes)
  console.log(`# fuzz ${what}: heap ${(before / 1048576).toFixed(1)} MiB -> ${(after / 1048576).toFixed(1)} MiB (bound +${(bound / 1048576).toFixed(0)} MiB${collect != null ? ', after gc' : ', no gc'})`)
  assert.ok(after - before < bound, `${what}: heap grew by ${after - before} bytes (bound ${bound})`)
}

/**
 * Asserts that `err` is the typed failure a decoder promises: a `ShepherdError` (of `type`
 * when given) whose stable `code` is one of `codes`. Anything else (a TypeError, a RangeError,
 * a library's own error class) is a bug: it reached a place that was not meant to fail.
 */
export function assertTyped (err: unknown, codes: readonly string[], type?: abstract new (...args: any[]) => ShepherdError): asserts err is ShepherdError {
  const e = err as Error
  assert.ok(err instanceof ShepherdError, `expected a ShepherdError with code ${codes.join('|')}, got ${e?.name}: ${e?.message}`)
  if (type != null) assert.ok(err instanceof type, `expected a ${type.name}, got ${err.name} (${err.code})`)
  assert.ok(codes.includes(err.code), `unexpected code '${err.code}' (${err.message}); allowed: ${codes.join(', ')}`)
}

/** Unsigned LEB128, the length prefix of both framings. */
export function varint (n: number): Uint8Array {
  const out: number[] = []
  while (n >= 0x80) {
    out.push((n % 0x80) | 0x80)
    n = Math.floor(n / 0x80)
  }
  out.push(n)
  return Uint8Array.from(out)
}

export function concat (...parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((s, p) => s + p.byteLength, 0))
  let at = 0
  for (const p of parts) { out.set(p, at); at += p.byteLength }
  return out
}

/** `p`, or a rejection naming `what` after `ms` (a ref'd timer: a hang fails, it does not end the run). */
export async function deadline<T> (p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined
  try {
    return await Promise.race([p, new Promise<never>((_resolve, reject) => { timer = setTimeout(() => { reject(new Error(`${what}: no answer within ${ms} ms`)) }, ms) })])
  } finally {
    clearTimeout(timer)
  }
}

export async function sleep (ms: number): Promise<void> {
  await new Promise(resolve => setTimeout(resolve, ms))
}

/** Polls `cond` until it holds, or fails naming `what`. */
export async function until (what: string, cond: () => boolean | Promise<boolean>, ms = 5000): Promise<void> {
  const end = Date.now() + ms
  while (!await cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`)
    await sleep(5)
  }
}
