import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { PeerTable, newRecord, onDisconnected, onHeard, onLeave, onRefused, onTick, type PeerRecord } from '../../src/p2p/index.js'

const timings = { suspectAfterMs: 2000, deadAfterMs: 4000 }

function alive (now = 1000): PeerRecord {
  return onHeard(newRecord<Record<string, unknown>>('peerA', 0), { incarnation: 1, seq: 1, name: 'a', groups: ['default'] }, now).record
}

describe('membership transitions (fake clock)', () => {
  it('a first heartbeat makes an unseen peer alive and takes its name and groups', () => {
    const res = onHeard(newRecord('peerA', 0), { incarnation: 1, seq: 0, name: 'rig-1', groups: ['gpu'] }, 500)
    assert.equal(res.accepted, true)
    assert.equal(res.changed, true)
    assert.equal(res.record.status, 'alive')
    assert.equal(res.record.name, 'rig-1')
    assert.deepEqual(res.record.groups, ['gpu'])
    assert.equal(res.record.lastSeen, 500)
  })

  it('silence turns alive into suspect, then dead, at the configured thresholds', () => {
    const rec = alive(1000)
    assert.equal(onTick(rec, 1000 + 2000, timings).record.status, 'alive')
    const suspect = onTick(rec, 1000 + 2001, timings).record
    assert.equal(suspect.status, 'suspect')
    assert.equal(suspect.statusSince, 3001)
    assert.equal(onTick(suspect, 1000 + 4000, timings).record.status, 'suspect')
    assert.equal(onTick(suspect, 1000 + 4001, timings).record.status, 'dead')
    // An alive peer silent past both thresholds in one tick goes straight to dead.
    assert.equal(onTick(rec, 1000 + 9000, timings).record.status, 'dead')
  })

  it('a heartbeat revives a suspect or dead peer of the same incarnation', () => {
    const dead = onTick(alive(1000), 10_000, timings).record
    assert.equal(dead.status, 'dead')
    const back = onHeard(dead, { incarnation: 1, seq: 2 }, 10_500)
    assert.equal(back.record.status, 'alive')
    assert.equal(back.changed, true)
  })

  it('stale and replayed messages are not accepted', () => {
    const rec = onHeard(alive(), { incarnation: 1, seq: 5 }, 1100).record
    assert.equal(onHeard(rec, { incarnation: 1, seq: 5 }, 1200).accepted, false)
    assert.equal(onHeard(rec, { incarnation: 1, seq: 3 }, 1200).accepted, false)
    assert.equal(onHeard(rec, { incarnation: 0, seq: 99 }, 1200).accepted, false)
    assert.equal(onHeard(rec, { incarnation: 2, seq: 0 }, 1200).accepted, true)
  })

  it('left is sticky for its incarnation; a restart (newer incarnation) is alive again', () => {
    const left = onLeave(alive(), { incarnation: 1, seq: 9 }, 2000).record
    assert.equal(left.status, 'left')
    assert.equal(onHeard(left, { incarnation: 1, seq: 8 }, 2100).record.status, 'left')
    assert.equal(onTick(left, 99_999, timings).record.status, 'left')
    const restarted = onHeard(left, { incarnation: 2, seq: 0 }, 3000)
    assert.equal(restarted.record.status, 'alive')
    assert.equal(restarted.record.snapshotVersion, -1, 'a restart forgets the old snapshot version')
  })

  it('a lost connection makes an alive peer suspect; a refused redial makes it dead', () => {
    const suspect = onDisconnected({ ...alive(), connected: true }, 1500).record
    assert.equal(suspect.status, 'suspect')
    assert.equal(suspect.connected, false)
    const dead = onRefused(suspect, 1510)
    assert.equal(dead.record.status, 'dead')
    assert.equal(dead.changed, true)
    // A refusal while another connection is up proves nothing.
    assert.equal(onRefused({ ...alive(), connected: true }, 1510).record.status, 'alive')
  })
})

describe('PeerTable', () => {
  it('emits joined once, then one event per status change', () => {
    const table = new PeerTable()
    const events: string[] = []
    for (const ev of ['peer:joined', 'peer:alive', 'peer:suspect', 'peer:dead', 'peer:left'] as const) table.on(ev, () => events.push(ev))
    let prev = table.ensure('p', 0)
    prev = table.apply(prev, onHeard(prev, { incarnation: 1, seq: 0 }, 100))
    prev = table.apply(prev, onHeard(prev, { incarnation: 1, seq: 1 }, 200))
    prev = table.apply(prev, onTick(prev, 3000, timings))
    prev = table.apply(prev, onTick(prev, 5000, timings))
    prev = table.apply(prev, onHeard(prev, { incarnation: 1, seq: 2 }, 5100))
    table.apply(prev, onLeave(prev, { incarnation: 1, seq: 3 }, 5200))
    assert.deepEqual(events, ['peer:joined', 'peer:alive', 'peer:suspect', 'peer:dead', 'peer:alive', 'peer:left'])
  })
})
