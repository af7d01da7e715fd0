import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { Admission } from '../../src/node/index.js'
import { OverloadedError } from '../../src/errors.js'

describe('Admission', () => {
  it('runs up to the limit, queues FIFO up to the queue size, refuses the rest with 429', async () => {
    const adm = new Admission(2, 1)
    const r1 = await adm.acquire()
    await adm.acquire()
    const order: number[] = []
    const third = adm.acquire().then(rel => { order.push(3); return rel })
    await assert.rejects(adm.acquire(), (err: unknown) => err instanceof OverloadedError && err.status === 429)
    assert.equal(adm.active, 2)
    assert.equal(adm.queued, 1)
    r1()
    r1()
    const rel3 = await third
    assert.deepEqual(order, [3])
    assert.equal(adm.active, 2)
    rel3()
    assert.equal(adm.active, 1)
  })

  it('an aborted waiter leaves the queue', async () => {
    const adm = new Admission(1, 5)
    const rel = await adm.acquire()
    const ac = new AbortController()
    const waiting = adm.acquire(ac.signal)
    ac.abort(new Error('gone'))
    await assert.rejects(waiting, /gone/)
    assert.equal(adm.queued, 0)
    rel()
    assert.equal(adm.active, 0)
  })

  it('gives freed slots to the sources in turn, each source in its own FIFO order', async () => {
    const adm = new Admission(1, 100)
    const rel = await adm.acquire(undefined, 'peer-a')
    const order: string[] = []
    // Each request, once admitted, notes its turn and ends on the next tick, freeing the slot.
    const wait = async (source: string, tag: string): Promise<void> => {
      const done = await adm.acquire(undefined, source)
      order.push(tag)
      setImmediate(done)
    }
    // peer-a floods first; the node's own client and peer-b arrive after.
    const waiters = [wait('peer-a', 'a1'), wait('peer-a', 'a2'), wait('peer-a', 'a3'), wait('local', 'l1'), wait('peer-b', 'b1'), wait('local', 'l2')]
    rel()
    await Promise.all(waiters)
    assert.deepEqual(order, ['a1', 'l1', 'b1', 'a2', 'l2', 'a3'])
    assert.equal(adm.queued, 0)
  })

  it('lets one source fill at most half of the queue; others still find room', async () => {
    const adm = new Admission(1, 4)
    await adm.acquire(undefined, 'flood')
    const queued = [adm.acquire(undefined, 'flood'), adm.acquire(undefined, 'flood')]
    await assert.rejects(adm.acquire(undefined, 'flood'), (err: unknown) => err instanceof OverloadedError && /share/.test(err.message))
    const others = [adm.acquire(undefined, 'local'), adm.acquire(undefined, 'peer-b')]
    assert.equal(adm.queued, 4)
    await assert.rejects(adm.acquire(undefined, 'peer-c'), (err: unknown) => err instanceof OverloadedError && /saturated/.test(err.message))
    assert.equal(adm.maxQueuedPerSource, 2)
    void queued
    void others
  })
})
