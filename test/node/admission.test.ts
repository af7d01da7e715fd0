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
})
