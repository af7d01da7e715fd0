/** The held-certificate table: one per group, highest term, rechecked only when the view changes, dropped when due. */
import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { PENDING_CERT_MS, PendingCertificates } from '../../../src/node/groups/pending-certificates.js'

const cert = (group: string, term: number): any => ({ v: 1, group, term, leader: 'L', votes: [] })

describe('pending certificates', () => {
  it('keeps the highest term per group, rechecks on a changed view only, and expires on a fake clock', () => {
    const p = new PendingCertificates()
    assert.equal(p.hold('a', cert('g', 3), 'v1', 0), true)
    assert.equal(p.hold('b', cert('g', 2), 'v1', 10), false, 'a lower term does not replace a higher one')
    assert.equal(p.hold('c', cert('h', 1), 'w1', 0), true)
    const views: Record<string, string> = { g: 'v1', h: 'w1' }
    assert.deepEqual(p.due(100, g => views[g]), [], 'nothing changed: nothing to check')
    views.g = 'v2'
    const due = p.due(200, g => views[g])
    assert.deepEqual(due.map(d => [d.entry.cert.group, d.entry.peer, d.expired]), [['g', 'a', false]])
    assert.deepEqual(p.due(300, g => views[g]), [], 'the new view was recorded')
    p.settled('h', 1)
    const late = p.due(PENDING_CERT_MS, g => views[g])
    assert.deepEqual(late.map(d => [d.entry.cert.group, d.expired]), [['g', true]], 'h was settled; g is due and dropped')
    assert.deepEqual(p.due(PENDING_CERT_MS + 1, g => 'x' + views[g]), [])
  })
})
