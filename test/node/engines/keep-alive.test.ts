import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import { BadRequestError } from '../../../src/errors.js'
import { parseKeepAlive } from '../../../src/node/engines/keep-alive.js'

describe('parseKeepAlive', () => {
  it('reads Go duration strings', () => {
    assert.equal(parseKeepAlive('5m'), 300_000)
    assert.equal(parseKeepAlive('30s'), 30_000)
    assert.equal(parseKeepAlive('1h30m'), 5_400_000)
    assert.equal(parseKeepAlive('250ms'), 250)
    assert.equal(parseKeepAlive('1.5s'), 1500)
    assert.equal(parseKeepAlive(' 2m '), 120_000)
  })

  it('reads numbers and numeric strings as seconds', () => {
    assert.equal(parseKeepAlive(0), 0)
    assert.equal(parseKeepAlive(90), 90_000)
    assert.equal(parseKeepAlive(0.5), 500)
    assert.equal(parseKeepAlive('0'), 0)
    assert.equal(parseKeepAlive('120'), 120_000)
  })

  it('treats anything negative as "keep loaded"', () => {
    assert.equal(parseKeepAlive(-1), Infinity)
    assert.equal(parseKeepAlive('-1'), Infinity)
    assert.equal(parseKeepAlive('-5m'), Infinity)
  })

  it('rejects what is not a duration', () => {
    for (const bad of ['soon', '5 minutes', '5d', '', 'm', '1h-5m', null, true, {}, Number.NaN, Infinity]) {
      assert.throws(() => parseKeepAlive(bad), (err: BadRequestError) => err instanceof BadRequestError && err.param === 'keep_alive', String(bad))
    }
  })
})
