/**
 * The residency core with a fake clock and a fake driver: loads joined, keep-alive (changed at
 * run time too), pins, the memory budget with LRU eviction, unload aborting requests.
 */
import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import { ShepherdError } from '../../../src/errors.js'
import { Residency, idleDelay, pinsCopy, type LoadPlan, type ResidencyClock, type ResidentDriver } from '../../../src/node/engines/residency.js'

/** Timers run only when the test advances time. */
class FakeClock implements ResidencyClock {
  time = 1_000
  private seq = 0
  private readonly timers = new Map<number, { at: number, fn: () => void }>()
  now = (): number => this.time
  setTimeout = (fn: () => void, ms: number): unknown => {
    const id = ++this.seq
    this.timers.set(id, { at: this.time + ms, fn })
    return id
  }

  clearTimeout = (handle: unknown): void => { this.timers.delete(handle as number) }
  get pending (): number { return this.timers.size }
  /** Moves time on, firing due timers in order, and lets their promises settle. */
  async advance (ms: number): Promise<void> {
    const until = this.time + ms
    while (true) {
      const next = [...this.timers.entries()].filter(([, t]) => t.at <= until).sort((a, b) => a[1].at - b[1].at)[0]
      if (next === undefined) break
      this.timers.delete(next[0])
      this.time = next[1].at
      next[1].fn()
      await settle()
    }
    this.time = until
    await settle()
  }
}

async function settle (): Promise<void> {
  for (let i = 0; i < 20; i++) await new Promise<void>(resolve => { setImmediate(resolve) })
}

interface Copy { key: string, size: number, stopped: boolean }

function harness (opts: { keepAliveMs?: number, budget?: number } = {}) {
  const clock = new FakeClock()
  const starts: string[] = []
  const stops: string[] = []
  const changes: Array<[string, string | undefined, boolean]> = []
  const driver: ResidentDriver<Copy> = {
    stop: async copy => { copy.stopped = true; stops.push(copy.key) },
    sizeOf: copy => copy.size
  }
  const residency = new Residency<Copy>({
    driver,
    keepAliveMs: opts.keepAliveMs ?? 60_000,
    clock,
    maxLoadedBytes: opts.budget ?? 1e12,
    memoryReserveBytes: 0,
    availableMemoryBytes: () => Infinity,
    onChange: (key, state, pinned) => { changes.push([key, state, pinned]) },
    // As an engine whose keys carry a role: clients read the model's name only.
    modelOf: key => key.replace(/^generate\u0000/, '')
  })
  let gate: Promise<void> = Promise.resolve()
  const plan = (key: string, size = 10): () => LoadPlan<Copy> => () => ({
    estimateBytes: size,
    start: async () => {
      starts.push(key)
      await gate
      return { key, size, stopped: false }
    }
  })
  const hold = (): (() => void) => {
    let open!: () => void
    gate = new Promise<void>(resolve => { open = resolve })
    return open
  }
  return { clock, residency, starts, stops, changes, plan, hold }
}

describe('residency pure rules', () => {
  it('pinsCopy: negative or infinite pins, finite non-negative unpins', () => {
    assert.equal(pinsCopy(-1), true)
    assert.equal(pinsCopy(Infinity), true)
    assert.equal(pinsCopy(0), false)
    assert.equal(pinsCopy(5000), false)
  })

  it('idleDelay: counts from the idle start, never for pinned or infinite', () => {
    assert.equal(idleDelay(false, 1000, 0), 1000)
    assert.equal(idleDelay(false, 1000, 400), 600)
    assert.equal(idleDelay(false, 1000, 5000), 0)
    assert.equal(idleDelay(true, 1000, 0), undefined)
    assert.equal(idleDelay(false, Infinity, 0), undefined)
    assert.equal(idleDelay(false, -1, 0), undefined)
  })
})

describe('Residency', () => {
  it('concurrent callers join one load', async () => {
    const h = harness()
    const open = h.hold()
    const leases = Promise.all([1, 2, 3].map(async () => await h.residency.use('m', h.plan('m'))))
    await settle()
    assert.equal(h.residency.get('m')?.state, 'loading')
    open()
    const got = await leases
    assert.deepEqual(h.starts, ['m'])
    assert.ok(got.every(l => l.resource === got[0].resource))
    assert.equal(h.residency.get('m')?.holders, 3)
    for (const l of got) l.release()
    assert.equal(h.residency.get('m')?.holders, 0)
  })

  it('a failed load fails every waiter and leaves nothing resident; the next caller loads again', async () => {
    const h = harness()
    let fail = true
    const plan = (): LoadPlan<Copy> => ({ estimateBytes: 1, start: async () => { await settle(); if (fail) throw new Error('bad file'); return { key: 'm', size: 1, stopped: false } } })
    const results = await Promise.allSettled([h.residency.use('m', plan), h.residency.use('m', plan)])
    assert.ok(results.every(r => r.status === 'rejected' && (r.reason as Error).message === 'bad file'))
    assert.equal(h.residency.get('m'), undefined)
    assert.deepEqual(h.changes.at(-1), ['m', undefined, false])
    fail = false
    const lease = await h.residency.use('m', plan)
    assert.equal(lease.resource.key, 'm')
  })

  it('idle copies unload after the keep-alive, not before; a request in between restarts the wait', async () => {
    const h = harness({ keepAliveMs: 10_000 })
    ;(await h.residency.use('m', h.plan('m'))).release()
    await h.clock.advance(9_000)
    assert.equal(h.residency.get('m')?.state, 'loaded')
    ;(await h.residency.use('m', h.plan('m'))).release()
    await h.clock.advance(9_000)
    assert.equal(h.residency.get('m')?.state, 'loaded', 'the wait restarted with the second request')
    await h.clock.advance(1_001)
    assert.equal(h.residency.get('m'), undefined)
    assert.deepEqual(h.stops, ['m'])
  })

  it('a held copy never idles out; a per-request keep-alive wins over the default', async () => {
    const h = harness({ keepAliveMs: 10_000 })
    const lease = await h.residency.use('m', h.plan('m'))
    await h.clock.advance(60_000)
    assert.equal(h.residency.get('m')?.state, 'loaded')
    lease.release(500)
    await h.clock.advance(499)
    assert.equal(h.residency.get('m')?.state, 'loaded')
    await h.clock.advance(2)
    assert.equal(h.residency.get('m'), undefined)
  })

  it('a keep-alive changed at run time re-times idle copies from when they went idle', async () => {
    const h = harness({ keepAliveMs: 3_600_000 })
    ;(await h.residency.use('a', h.plan('a'))).release()
    await h.clock.advance(20_000)
    ;(await h.residency.use('b', h.plan('b'))).release()
    // A copy with its own keep-alive keeps it.
    ;(await h.residency.use('c', h.plan('c'))).release(3_600_000)
    h.residency.setKeepAlive(30_000)
    assert.equal(h.residency.keepAliveMs, 30_000)
    await h.clock.advance(10_001)
    assert.equal(h.residency.get('a'), undefined, 'a was idle 30 s already')
    assert.equal(h.residency.get('b')?.state, 'loaded')
    await h.clock.advance(20_000)
    assert.equal(h.residency.get('b'), undefined)
    assert.equal(h.residency.get('c')?.state, 'loaded')
    // Longer again: a fresh idle copy waits the new default.
    h.residency.setKeepAlive(Infinity)
    ;(await h.residency.use('d', h.plan('d'))).release()
    await h.clock.advance(10 * 3_600_000)
    assert.equal(h.residency.get('d')?.state, 'loaded')
  })

  it('load with keep-alive -1 pins (never idle-unloaded, reported); 0 unpins and unloads once idle', async () => {
    const h = harness({ keepAliveMs: 1_000 })
    const view = await h.residency.load('m', h.plan('m'), { keepAliveMs: -1 })
    assert.equal(view.pinned, true)
    assert.deepEqual(h.changes.at(-1), ['m', 'loaded', true])
    await h.clock.advance(100_000)
    assert.equal(h.residency.get('m')?.pinned, true)
    // A plain request on a pinned copy leaves it pinned.
    ;(await h.residency.use('m', h.plan('m'))).release(0)
    await h.clock.advance(100_000)
    assert.equal(h.residency.get('m')?.state, 'loaded')
    // Retiring: a request still running is not cut; the copy goes when it ends.
    const running = await h.residency.use('m', h.plan('m'))
    await h.residency.load('m', h.plan('m'), { keepAliveMs: 0 })
    assert.equal(h.residency.get('m')?.pinned, false)
    await h.clock.advance(10)
    assert.equal(h.residency.get('m')?.state, 'loaded')
    assert.equal(running.signal.aborted, false)
    running.release()
    await h.clock.advance(1)
    assert.equal(h.residency.get('m'), undefined)
    assert.deepEqual(h.starts, ['m'])
  })

  it('LRU: a load over budget unloads the least recently used idle copy first, never a busy or pinned one', async () => {
    const h = harness({ budget: 30 })
    await h.residency.load('pinned', h.plan('pinned'), { keepAliveMs: -1 })
    h.clock.time += 1
    ;(await h.residency.use('old', h.plan('old'))).release()
    h.clock.time += 1
    const busy = await h.residency.use('busy', h.plan('busy'))
    // Budget 30: three copies of 10 fill it; a fourth needs one gone, and only 'old' may go.
    ;(await h.residency.use('new', h.plan('new'))).release()
    assert.deepEqual(h.stops, ['old'])
    assert.equal(h.residency.get('pinned')?.state, 'loaded')
    assert.equal(busy.signal.aborted, false)
    // Nothing evictable is left: the load goes ahead anyway (the engine's own errors decide).
    busy.release()
    h.clock.time += 1
    ;(await h.residency.use('newest', h.plan('newest'))).release()
    assert.deepEqual(h.stops, ['old', 'busy'], 'the least recently used idle one went: busy was released before new was last used')
  })

  it('touch restarts the idle wait from now; a held copy is left alone', async () => {
    const h = harness({ keepAliveMs: 10_000 })
    ;(await h.residency.use('m', h.plan('m'))).release()
    await h.clock.advance(9_000)
    h.residency.touch('m')
    await h.clock.advance(9_000)
    assert.equal(h.residency.get('m')?.state, 'loaded')
    await h.clock.advance(1_001)
    assert.equal(h.residency.get('m'), undefined)
  })

  it('evictOne: least recently used idle unpinned copy other than the one loading', async () => {
    const h = harness()
    ;(await h.residency.use('a', h.plan('a'))).release()
    h.clock.time += 5
    ;(await h.residency.use('b', h.plan('b'))).release()
    await h.residency.load('p', h.plan('p'), { keepAliveMs: -1 })
    assert.equal(await h.residency.evictOne('b'), true)
    assert.deepEqual(h.stops, ['a'])
    assert.equal(await h.residency.evictOne('b'), false, 'b is excluded and p is pinned')
  })

  it("an unload's error names the model, not the engine's key", async () => {
    const h = harness()
    const lease = await h.residency.use('generate\u0000org/m', h.plan('generate\u0000org/m'))
    void h.residency.unload('generate\u0000org/m')
    assert.equal((lease.signal.reason as ShepherdError).message, "The model 'org/m' was unloaded")
    lease.release()
  })

  it('unload aborts requests on the copy with model_unloaded and stops it once they end', async () => {
    const h = harness()
    const lease = await h.residency.use('m', h.plan('m'))
    const unloading = h.residency.unload('m')
    assert.equal(lease.signal.aborted, true)
    assert.equal((lease.signal.reason as ShepherdError).code, 'model_unloaded')
    assert.equal(h.residency.get('m')?.state, 'unloading')
    await settle()
    assert.deepEqual(h.stops, [], 'not stopped while the request still runs')
    lease.release()
    assert.equal(await unloading, true)
    assert.deepEqual(h.stops, ['m'])
    assert.equal(await h.residency.unload('m'), false)
  })

  it('a caller arriving during an unload waits for it, then loads afresh', async () => {
    const h = harness()
    const lease = await h.residency.use('m', h.plan('m'))
    const unloading = h.residency.unload('m')
    const next = h.residency.use('m', h.plan('m'))
    lease.release()
    await unloading
    const again = await next
    assert.equal(again.resource.stopped, false)
    assert.deepEqual(h.starts, ['m', 'm'])
  })

  it('unload during a load cancels it: waiters fail, the loaded copy is stopped at once', async () => {
    const h = harness()
    const open = h.hold()
    const waiting = h.residency.use('m', h.plan('m'))
    await settle()
    const unloading = h.residency.unload('m')
    open()
    await assert.rejects(waiting, (err: ShepherdError) => err.code === 'model_unloaded')
    assert.equal(await unloading, true)
    assert.deepEqual(h.stops, ['m'])
    assert.equal(h.residency.get('m'), undefined)
  })

  it('close unloads everything and refuses later callers with engine_closed', async () => {
    const h = harness()
    ;(await h.residency.use('a', h.plan('a'))).release()
    await h.residency.load('b', h.plan('b'), { keepAliveMs: -1 })
    await h.residency.close()
    assert.deepEqual(h.stops.sort(), ['a', 'b'])
    await assert.rejects(h.residency.use('a', h.plan('a')), (err: ShepherdError) => err.code === 'engine_closed')
    assert.equal(h.clock.pending, 0, 'no idle timer left behind')
  })

  it('a caller whose signal aborts while waiting for a load gives up alone', async () => {
    const h = harness()
    const open = h.hold()
    const ac = new AbortController()
    const a = h.residency.use('m', h.plan('m'), ac.signal)
    const b = h.residency.use('m', h.plan('m'))
    await settle()
    ac.abort(new Error('client left'))
    await assert.rejects(a, /client left/)
    open()
    const lease = await b
    assert.equal(h.residency.get('m')?.holders, 1)
    lease.release()
  })
})
