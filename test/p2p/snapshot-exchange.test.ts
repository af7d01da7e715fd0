/**
 * `/shepherd/snapshot/1.0.0` over real libp2p hosts: a member's snapshot is pulled from it and
 * named as the stream's authenticated peer; non-members, junk, silent openers and pull floods are
 * refused (reset, reported) while other members are still answered.
 */
import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { newHost, exchange } from '../support/fuzz-hosts.js'
import { until } from '../support/fuzz-harness.js'
import type { Host } from '../../src/p2p/host.js'
import { PULL_READ_TIMEOUT_MS, SNAPSHOT_PROTOCOL, SnapshotExchange } from '../../src/p2p/snapshot-exchange.js'

const sleep = async (ms: number): Promise<void> => { await new Promise(resolve => setTimeout(resolve, ms)) }

describe('snapshot exchange over real libp2p', () => {
  let owner: Host, puller: Host, other: Host, outsider: Host
  let served: SnapshotExchange, pulling: SnapshotExchange, pullingOther: SnapshotExchange
  const violations: Array<[string, string]> = []
  const got: Array<[string, string]> = []
  const gotOther: string[] = []
  let answers = 0

  before(async () => {
    [owner, puller, other, outsider] = await Promise.all([newHost(), newHost(), newHost(), newHost()])
    const members = new Set([owner, puller, other].map(h => h.peerId.toString()))
    served = new SnapshotExchange(owner, {
      current: () => new TextEncoder().encode(`snapshot #${++answers}`),
      onSnapshot: () => {},
      isMember: p => members.has(p),
      onViolation: (peer, reason) => { violations.push([peer, reason]) }
    })
    await served.start()
    pulling = new SnapshotExchange(puller, { current: () => new Uint8Array(0), onSnapshot: (from, bytes) => { got.push([from, new TextDecoder().decode(bytes)]) }, isMember: p => members.has(p) })
    pullingOther = new SnapshotExchange(other, { current: () => new Uint8Array(0), onSnapshot: (_from, bytes) => { gotOther.push(new TextDecoder().decode(bytes)) }, isMember: p => members.has(p) })
    await Promise.all([pulling.start(), pullingOther.start()])
    for (const h of [puller, other, outsider]) await h.dial(owner.getMultiaddrs()[0])
  })
  after(async () => { await Promise.all([owner, puller, other, outsider].map(async h => await h.stop())) })

  it('pulls the owner\'s snapshot, named as the authenticated peer; asking twice while it runs pulls once', async () => {
    assert.equal(await pulling.supports(owner.peerId.toString()), true, 'identify named the protocol')
    pulling.want(owner.peerId.toString())
    pulling.want(owner.peerId.toString())
    await until('the snapshot', () => got.length >= 1)
    await sleep(100)
    assert.deepEqual(got, [[owner.peerId.toString(), 'snapshot #1']])
    assert.equal(served.stats.served, 1)
    assert.equal(pulling.pending(owner.peerId.toString()), false)
  })

  it('refuses a non-member, junk, a silent opener and a pull flood; another member is still answered', async () => {
    const before = served.stats.refused
    const fromOutsider = await exchange(outsider, owner.peerId, SNAPSHOT_PROTOCOL, [new Uint8Array([7, ...new TextEncoder().encode('{"v":1}')])])
    assert.equal(fromOutsider.bytes.byteLength, 0, 'no snapshot for a non-member')

    const junk = await exchange(puller, owner.peerId, SNAPSHOT_PROTOCOL, [new Uint8Array([3, 1, 2, 3])])
    assert.equal(junk.bytes.byteLength, 0)
    const oversized = await exchange(puller, owner.peerId, SNAPSHOT_PROTOCOL, [new Uint8Array([0xff, 0xff, 0x7f]), new Uint8Array(1000)])
    assert.equal(oversized.bytes.byteLength, 0)
    const t0 = performance.now()
    const silent = await exchange(puller, owner.peerId, SNAPSHOT_PROTOCOL, [], { close: false, ms: PULL_READ_TIMEOUT_MS + 2000 })
    assert.equal(silent.bytes.byteLength, 0)
    assert.ok(performance.now() - t0 >= PULL_READ_TIMEOUT_MS - 100, 'the silent opener was held to the read timeout')
    assert.ok(violations.filter(([p]) => p === puller.peerId.toString()).length >= 3, JSON.stringify(violations))
    assert.ok(!violations.some(([p]) => p === outsider.peerId.toString()), 'a non-member is refused, not audited as a member')

    // A flood of valid pulls from one member: a few answered, the rest reset and reported.
    const request = new Uint8Array([7, ...new TextEncoder().encode('{"v":1}')])
    const answered = (await Promise.all(Array.from({ length: 12 }, async () => (await exchange(puller, owner.peerId, SNAPSHOT_PROTOCOL, [request])).bytes.byteLength > 0))).filter(Boolean).length
    assert.ok(answered >= 1 && answered <= 5, `answered ${answered} of 12`)
    assert.ok(violations.some(([p, r]) => p === puller.peerId.toString() && /pulls past/.test(r)))
    assert.ok(served.stats.refused - before >= 12 - answered)

    pullingOther.want(owner.peerId.toString())
    await until('the other member\'s pull', () => gotOther.length === 1)
    assert.match(gotOther[0], /^snapshot #\d+$/)
  })
})
