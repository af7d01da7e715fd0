import assert from 'node:assert/strict'
import { freemem, totalmem } from 'node:os'
import { describe, it } from 'node:test'
import {
  checkMemoryBudgetOptions,
  defaultMemoryLimits,
  defaultReserveBytes,
  victimsFor,
  type LoadedModelUsage,
  type MemoryLimits
} from '../../../src/node/engines/memory-budget.js'

const GiB = 1024 ** 3

function model (name: string, sizeBytes: number, lastUsed: number, busy = false): LoadedModelUsage {
  return { name, sizeBytes, lastUsed, busy }
}

/** Limits where only the budget binds. */
function budget (budgetBytes: number): MemoryLimits {
  return { budgetBytes, availableBytes: Infinity, reserveBytes: 0 }
}

/** Limits where only available memory binds. */
function available (availableBytes: number, reserveBytes: number): MemoryLimits {
  return { budgetBytes: Infinity, availableBytes, reserveBytes }
}

describe('victimsFor', () => {
  const three = [model('b', 10, 200), model('a', 10, 100), model('c', 10, 300)]

  it('unloads nothing when the model fits both limits', () => {
    assert.deepEqual(victimsFor(three, 10, budget(40)), [])
    assert.deepEqual(victimsFor(three, 10, available(100, 50)), [])
    assert.deepEqual(victimsFor([], 10, { budgetBytes: 10, availableBytes: 10, reserveBytes: 0 }), [])
  })

  it('picks idle models least recently used first, whatever order they come in', () => {
    assert.deepEqual(victimsFor(three, 10, budget(30)), ['a'])
    assert.deepEqual(victimsFor(three, 10, budget(20)), ['a', 'b'])
    assert.deepEqual(victimsFor(three, 10, budget(10)), ['a', 'b', 'c'])
    // Same age: the caller's order stands.
    assert.deepEqual(victimsFor([model('x', 10, 5), model('y', 10, 5)], 10, budget(20)), ['x'])
  })

  it('never picks a busy model, even the least recently used', () => {
    const loaded = [model('old-busy', 10, 1, true), model('mid', 10, 2), model('new', 10, 3)]
    assert.deepEqual(victimsFor(loaded, 10, budget(30)), ['mid'])
    assert.deepEqual(victimsFor(loaded, 10, budget(20)), ['mid', 'new'])
    // Busy models still count against the budget.
    assert.deepEqual(victimsFor([model('busy', 50, 1, true), model('idle', 5, 2)], 10, budget(60)), ['idle'])
  })

  it('unloads until loaded plus needed is within the budget, the boundary included', () => {
    const loaded = [model('a', 30, 1), model('b', 20, 2)]
    assert.deepEqual(victimsFor(loaded, 50, budget(100)), [], 'exactly at the budget fits')
    assert.deepEqual(victimsFor(loaded, 51, budget(100)), ['a'], 'one byte over does not')
    // Unloading 'a' leaves 20 loaded: 20 + 80 = 100.
    assert.deepEqual(victimsFor(loaded, 80, budget(100)), ['a'])
    assert.deepEqual(victimsFor(loaded, 81, budget(100)), ['a', 'b'])
  })

  it('unloads until what stays available after the load is at least the reserve, the boundary included', () => {
    const loaded = [model('a', 30, 1), model('b', 20, 2)]
    assert.deepEqual(victimsFor(loaded, 50, available(150, 100)), [], 'exactly the reserve left fits')
    assert.deepEqual(victimsFor(loaded, 51, available(150, 100)), ['a'], 'one byte short does not')
    // Unloading 'a' makes its 30 bytes available again: 150 + 30 - 80 = 100.
    assert.deepEqual(victimsFor(loaded, 80, available(150, 100)), ['a'])
    assert.deepEqual(victimsFor(loaded, 81, available(150, 100)), ['a', 'b'])
    // Available memory binds alone: the budget has plenty of room.
    assert.deepEqual(victimsFor(loaded, 10, { budgetBytes: 1000, availableBytes: 105, reserveBytes: 100 }), ['a'])
  })

  it('needs both limits met: the stricter one decides', () => {
    const loaded = [model('a', 10, 1), model('b', 10, 2), model('c', 10, 3)]
    // The budget wants one gone, available memory two.
    assert.deepEqual(victimsFor(loaded, 10, { budgetBytes: 30, availableBytes: 15, reserveBytes: 20 }), ['a', 'b'])
    // And the other way round.
    assert.deepEqual(victimsFor(loaded, 10, { budgetBytes: 20, availableBytes: 40, reserveBytes: 20 }), ['a', 'b'])
  })

  it('returns every idle model when even that is not enough, and nothing when none is idle', () => {
    const loaded = [model('busy', 10, 1, true), model('b', 10, 3), model('a', 10, 2)]
    assert.deepEqual(victimsFor(loaded, 1000, budget(100)), ['a', 'b'])
    assert.deepEqual(victimsFor(loaded, 10, available(0, 1)), ['a', 'b'])
    assert.deepEqual(victimsFor([model('x', 10, 1, true), model('y', 10, 2, true)], 1000, budget(10)), [])
  })
})

describe('defaultMemoryLimits', () => {
  it('derives the budget and reserve from total memory and asks the probe', () => {
    const total = totalmem()
    const reserve = Math.min(GiB, Math.floor(total * 0.1))
    assert.equal(defaultReserveBytes(total), reserve)
    assert.equal(defaultReserveBytes(4 * GiB), Math.floor(0.4 * GiB))
    assert.equal(defaultReserveBytes(64 * GiB), GiB)
    const limits = defaultMemoryLimits()
    assert.equal(limits.reserveBytes, reserve)
    assert.equal(limits.budgetBytes, total - reserve)
    assert.ok(limits.availableBytes > 0 && limits.availableBytes <= total)
    assert.ok(Math.abs(limits.availableBytes - freemem()) < total / 10)
  })

  it('takes the options where given; a budget of 0 means the default', () => {
    assert.deepEqual(defaultMemoryLimits({ maxLoadedBytes: 5000, memoryReserveBytes: 100, availableMemoryBytes: () => 700 }),
      { budgetBytes: 5000, availableBytes: 700, reserveBytes: 100 })
    assert.equal(defaultMemoryLimits({ maxLoadedBytes: 0, memoryReserveBytes: 100 }).budgetBytes, totalmem() - 100)
    assert.equal(defaultMemoryLimits({ memoryReserveBytes: 0 }).reserveBytes, 0)
  })

  it('checks nothing against available memory when the probe fails', () => {
    assert.equal(defaultMemoryLimits({ availableMemoryBytes: () => { throw new Error('no /proc') } }).availableBytes, Infinity)
    assert.equal(defaultMemoryLimits({ availableMemoryBytes: () => NaN }).availableBytes, Infinity)
  })

  it('refuses negative or non-numeric limits', () => {
    assert.throws(() => { checkMemoryBudgetOptions({ maxLoadedBytes: -1 }) }, RangeError)
    assert.throws(() => { checkMemoryBudgetOptions({ memoryReserveBytes: NaN }) }, RangeError)
    checkMemoryBudgetOptions({ maxLoadedBytes: 0, memoryReserveBytes: 0 })
  })
})
