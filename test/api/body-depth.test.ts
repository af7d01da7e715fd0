import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { jsonDepth, MAX_BODY_DEPTH } from '../../src/api/body-depth.js'

function nested (levels: number): unknown {
  let v: unknown = 'leaf'
  for (let i = 0; i < levels; i++) v = i % 2 === 0 ? { a: v } : [v]
  return v
}

describe('jsonDepth', () => {
  it('counts objects and arrays, not scalars', () => {
    assert.equal(jsonDepth('x'), 0)
    assert.equal(jsonDepth(null), 0)
    assert.equal(jsonDepth({}), 1)
    assert.equal(jsonDepth({ a: [1, { b: 2 }], c: 'x' }), 3)
    assert.equal(jsonDepth(nested(MAX_BODY_DEPTH)), MAX_BODY_DEPTH)
  })

  it('walks a body far deeper than the stack allows, and stops early past the limit', () => {
    const deep = JSON.parse('['.repeat(200_000) + ']'.repeat(200_000))
    assert.throws(() => JSON.stringify(deep), RangeError)
    assert.equal(jsonDepth(deep, MAX_BODY_DEPTH), MAX_BODY_DEPTH + 1)
    assert.equal(jsonDepth(deep), 200_000)
  })
})
