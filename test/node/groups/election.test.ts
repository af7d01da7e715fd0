import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { decide, initialGroupState, onMembers, onView } from '../../../src/node/groups/index.js'

const t = { settleMs: 500, backoffPerRankMs: 300 }

describe('election (fake clock)', () => {
  it('the best member claims term+1 once membership has been stable for settleMs', () => {
    let s = onMembers(initialGroupState('g', 4, 0), ['b', 'a', 'c'], 0)
    assert.equal(decide(s, 'a', 400, t).claim, null)
    const res = decide(s, 'a', 500, t)
    assert.equal(res.claim, 5)
    assert.equal(res.state.leader, 'a')
    s = onMembers(s, ['a', 'b', 'c'], 0)
    assert.equal(decide(s, 'b', 500, t).claim, null, 'rank 1 waits longer')
  })

  it('others claim only after the best stays silent, later by rank', () => {
    // Leaderless since 0; the best ('a') would have claimed at 500.
    const s = onMembers(initialGroupState('g', 0, 0), ['a', 'b', 'c'], 0)
    assert.equal(decide(s, 'b', 799, t).claim, null)
    assert.equal(decide(s, 'b', 800, t).claim, 1)
    assert.equal(decide(s, 'c', 800, t).claim, null)
    assert.equal(decide(s, 'c', 1100, t).claim, 1)
  })

  it('a live leader is kept, even when a smaller id joins', () => {
    let s = onMembers(initialGroupState('g', 0, 0), ['b', 'c'], 0)
    s = onView(s, { term: 3, leader: 'c' }, 10).state
    s = onMembers(s, ['a', 'b', 'c'], 20)
    assert.equal(decide(s, 'a', 5000, t).claim, null)
    assert.equal(s.leader, 'c')
  })

  it('higher terms win; equal terms resolve to the smaller id; lower terms are ignored', () => {
    let s = initialGroupState('g', 2, 0)
    s = onView(s, { term: 5, leader: 'x' }, 1).state
    assert.deepEqual([s.term, s.leader], [5, 'x'])
    assert.equal(onView(s, { term: 4, leader: 'a' }, 2).changed, false)
    s = onView(s, { term: 5, leader: 'w' }, 3).state
    assert.equal(s.leader, 'w')
    assert.equal(onView(s, { term: 5, leader: 'z' }, 4).changed, false)
  })

  it('a dead leader (gone from members) triggers a new election with a higher term', () => {
    let s = onMembers(initialGroupState('g', 0, 0), ['a', 'b', 'c'], 0)
    s = onView(s, { term: 7, leader: 'a' }, 0).state
    s = onMembers(s, ['b', 'c'], 1000)
    assert.equal(decide(s, 'b', 1400, t).claim, null)
    const res = decide(s, 'b', 1500, t)
    assert.equal(res.claim, 8)
  })

  it('partition: two sides elect two leaders; after the heal the higher term wins everywhere', () => {
    let left = onMembers(initialGroupState('g', 3, 0), ['a', 'b'], 0)
    let right = onMembers(initialGroupState('g', 3, 0), ['c', 'd'], 0)
    left = decide(left, 'a', 600, t).state
    right = decide(right, 'c', 600, t).state
    assert.deepEqual([left.term, left.leader, right.term, right.leader], [4, 'a', 4, 'c'])
    right = decide(onMembers(right, ['d'], 1000), 'd', 1600, t).state // c lost too: right side re-elects
    assert.deepEqual([right.term, right.leader], [5, 'd'])
    // Heal: views cross.
    left = onView(left, { term: right.term, leader: right.leader! }, 2000).state
    right = onView(right, { term: left.term, leader: left.leader! }, 2000).state
    assert.deepEqual([left.leader, right.leader], ['d', 'd'])
  })
})
