import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import fc from 'fast-check'
import { layerRanges, planSplit, type SplitCandidate } from '../../src/scheduler/split-placement.js'

const GiB = 2 ** 30
const node = (id: string, freeGiB: number, rttMs: number | null = 1, holdsFile = false): SplitCandidate => ({ id, freeBytes: freeGiB * GiB, rttMs, holdsFile })

describe('planSplit', () => {
  it('uses the fewest nodes: two roomy ones rather than three small ones', () => {
    const plan = planSplit([node('a', 3, 1, true), node('b', 2), node('c', 2), node('d', 6)], { needBytes: 8 * GiB })
    assert.ok(plan.ok)
    assert.equal(plan.workers.length + 1, 2)
    assert.deepEqual(new Set([plan.head, ...plan.workers]), new Set(['a', 'd']))
  })

  it('prefers a head that holds the file', () => {
    const plan = planSplit([node('a', 5), node('b', 5, 1, true), node('c', 5)], { needBytes: 8 * GiB })
    assert.ok(plan.ok)
    assert.equal(plan.head, 'b')
  })

  it('among plans of one size, prefers the lower RTT', () => {
    const plan = planSplit([node('h', 5, 1, true), node('far', 5, 9), node('near', 5, 0.5)], { needBytes: 8 * GiB })
    assert.ok(plan.ok)
    assert.deepEqual(plan.workers, ['near'])
  })

  it('keeps a far node when only it makes the set fit', () => {
    const plan = planSplit([node('h', 4, 1, true), node('near', 1, 0.5), node('far', 5, 9)], { needBytes: 8 * GiB })
    assert.ok(plan.ok)
    assert.deepEqual(plan.workers, ['far'])
  })

  it('shares memory in proportion to free memory, never beyond it', () => {
    const plan = planSplit([node('a', 6, 1, true), node('b', 2), node('c', 4)], { needBytes: 10.5 * GiB })
    assert.ok(plan.ok)
    assert.equal(plan.shares.length, 3)
    const fr = Object.fromEntries(plan.shares.map(s => [s.nodeId, s.fraction]))
    assert.ok(Math.abs(fr.a - 0.5) < 1e-9 && Math.abs(fr.c - 1 / 3) < 1e-9 && Math.abs(fr.b - 1 / 6) < 1e-9)
    for (const s of plan.shares) assert.ok(s.bytes <= (s.nodeId === 'a' ? 6 : s.nodeId === 'b' ? 2 : 4) * GiB + 1)
  })

  it('reports unplaceable when the mesh lacks the memory, or nobody can head it', () => {
    const plan = planSplit([node('a', 1, 1, true), node('b', 1)], { needBytes: 8 * GiB })
    assert.equal(plan.ok, false)
    assert.match(plan.ok ? '' : plan.reason, /needs/)
    const noHead = planSplit([node('a', 5), node('b', 5)], { needBytes: 8 * GiB, headMayPull: false })
    assert.equal(noHead.ok, false)
  })

  it('respects maxNodes and ignores nodes with nothing free', () => {
    const cands = [node('a', 2, 1, true), node('b', 2), node('c', 2), node('d', 2), node('z', 0)]
    assert.equal(planSplit(cands, { needBytes: 7 * GiB, maxNodes: 3 }).ok, false)
    const plan = planSplit(cands, { needBytes: 7 * GiB, maxNodes: 4 })
    assert.ok(plan.ok && !plan.workers.includes('z'))
  })

  it('property: a plan always fits, uses distinct nodes and no smaller plan existed', () => {
    fc.assert(fc.property(
      fc.array(fc.record({ free: fc.integer({ min: 0, max: 64 }), rtt: fc.option(fc.integer({ min: 0, max: 20 })), file: fc.boolean() }), { minLength: 1, maxLength: 8 }),
      fc.integer({ min: 1, max: 200 }),
      (xs, need) => {
        const cands = xs.map((x, i) => ({ id: `n${i}`, freeBytes: x.free, rttMs: x.rtt, holdsFile: x.file }))
        const plan = planSplit(cands, { needBytes: need })
        if (!plan.ok) return
        const ids = [plan.head, ...plan.workers]
        assert.equal(new Set(ids).size, ids.length)
        const free = ids.reduce((s, id) => s + cands.find(c => c.id === id)!.freeBytes, 0)
        assert.ok(free >= need)
        // No smaller set fits: the k-1 roomiest nodes hold less than the need.
        const roomiest = cands.map(c => c.freeBytes).sort((a, b) => b - a).slice(0, ids.length - 1).reduce((s, x) => s + x, 0)
        assert.ok(ids.length === 2 || roomiest < need)
        assert.ok(Math.abs(plan.shares.reduce((s, x) => s + x.fraction, 0) - 1) < 1e-9)
      }
    ))
  })
})

describe('layerRanges', () => {
  it('gives the head the first layers and spreads the rest over the workers in order', () => {
    const r = layerRanges(8, [0.25, 0.5, 0.25])
    assert.equal(r.headLayers, 2)
    assert.equal(r.gpuLayers, 7)
    assert.deepEqual(r.ranges[0], [0, 1])
    const all = r.ranges.filter(x => x != null) as Array<[number, number]>
    // Contiguous, in order, covering every layer once.
    let next = 0
    for (const [from, to] of all) { assert.equal(from, next); next = to + 1 }
    assert.equal(next, 8)
    assert.deepEqual(r.tensorSplit, [0.667, 0.333])
  })

  it('a head with no share offloads everything', () => {
    const r = layerRanges(4, [0, 1])
    assert.equal(r.headLayers, 0)
    assert.equal(r.ranges[0], null)
    assert.deepEqual(r.ranges[1], [0, 3])
    assert.equal(r.gpuLayers, 5)
  })
})
