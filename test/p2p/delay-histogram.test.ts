import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { DelayHistogram } from '../../src/p2p/delay-histogram.js'

describe('DelayHistogram', () => {
  it('counts each delay in the first bucket whose bound it does not exceed, cumulatively, +Inf last', () => {
    const h = new DelayHistogram()
    for (const v of [0.4, 1, 1.5, 9.9, 10, 10.1, 6000, NaN, Infinity]) h.push(v)
    assert.equal(h.count, 7)
    assert.equal(h.sum, 0.4 + 1 + 1.5 + 9.9 + 10 + 10.1 + 6000)
    const c = Object.fromEntries(h.cumulative())
    assert.equal(c['1'], 2)
    assert.equal(c['2'], 3)
    assert.equal(c['10'], 5, 'a bound is inclusive')
    assert.equal(c['20'], 6)
    assert.equal(c['5000'], 6)
    assert.equal(c['+Inf'], 7)
  })

  it('counts a negative delay (a clock or a stamp from the future) as 0: the sum never goes negative', () => {
    const h = new DelayHistogram()
    h.push(-10 * 365 * 24 * 3600_000)
    h.push(3)
    assert.equal(h.count, 2)
    assert.equal(h.sum, 3)
    assert.equal(Object.fromEntries(h.cumulative())['1'], 1)
  })
})
