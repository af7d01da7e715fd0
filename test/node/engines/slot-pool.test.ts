import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import { OverloadedError } from '../../../src/errors.js'
import { SlotPool } from '../../../src/node/engines/slot-pool.js'

describe('SlotPool', () => {
  it('hands out free slots, then queues first come first served', async () => {
    const pool = new SlotPool(['a', 'b'], 10)
    const first = await pool.acquire()
    const second = await pool.acquire()
    assert.deepEqual([first, second].sort(), ['a', 'b'])
    assert.equal(pool.available, 0)
    const order: string[] = []
    const w1 = pool.acquire().then(s => { order.push(`w1:${s}`) })
    const w2 = pool.acquire().then(s => { order.push(`w2:${s}`) })
    assert.equal(pool.waiting, 2)
    pool.release(first)
    pool.release(second)
    await Promise.all([w1, w2])
    assert.deepEqual(order, [`w1:${first}`, `w2:${second}`])
    assert.equal(pool.busy, 2)
  })

  it('refuses with OverloadedError past the queue bound', async () => {
    const pool = new SlotPool([1], 1)
    await pool.acquire()
    const queued = pool.acquire()
    await assert.rejects(pool.acquire(), OverloadedError)
    pool.release(1)
    assert.equal(await queued, 1)
  })

  it('drops a waiter whose signal aborts, rejecting it with the reason', async () => {
    const pool = new SlotPool(['x'], 5)
    await pool.acquire()
    const controller = new AbortController()
    const waiting = pool.acquire(controller.signal)
    const reason = new Error('gone')
    controller.abort(reason)
    await assert.rejects(waiting, reason)
    assert.equal(pool.waiting, 0)
    pool.release('x')
    assert.equal(pool.available, 1, 'the slot went back, not to the aborted waiter')
    await assert.rejects(pool.acquire(AbortSignal.abort(reason)), reason)
  })

  it('rejects waiters and later calls once closed', async () => {
    const pool = new SlotPool(['x'], 5)
    await pool.acquire()
    const waiting = pool.acquire()
    const reason = new Error('closed')
    pool.close(reason)
    await assert.rejects(waiting, reason)
    await assert.rejects(pool.acquire(), reason)
  })
})
