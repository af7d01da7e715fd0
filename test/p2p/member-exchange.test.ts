/**
 * `/shepherd/members/1.0.0` over real libp2p hosts and real meshes: two members swap their lists,
 * each named as the stream's authenticated peer; non-members, junk, oversized lists, silent
 * openers and exchange floods are refused (reset, reported) while other members are still
 * answered. On real meshes: a node learns a member it was never told of by gossip through its
 * seed's list, and a hostile member's list of 500 ghosts stays a bounded set of dial hints.
 */
import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import net from 'node:net'
import { multiaddr } from '@multiformats/multiaddr'
import { peerIdFromString } from '@libp2p/peer-id'
import { newHost, exchange } from '../support/fuzz-hosts.js'
import { concat, sleep, until, varint } from '../support/fuzz-harness.js'
import type { Host } from '../../src/p2p/host.js'
import { Mesh, createIdentity, peerIdOf } from '../../src/p2p/index.js'
import { EXCHANGE_READ_TIMEOUT_MS, MAX_LISTED_MEMBERS, MEMBERS_PROTOCOL, MemberExchange, MEMBER_EXCHANGE_FAST_MS, exchangeIntervalMs, isMembersFrame, nextExchangeMs, type MemberEntry } from '../../src/p2p/member-exchange.js'

const frame = (x: unknown): Uint8Array => {
  const body = new TextEncoder().encode(JSON.stringify(x))
  return concat(varint(body.byteLength), body)
}

describe('member exchange: frames and scale', () => {
  it('accepts a well-formed list and rejects junk, bad ids, too many addresses or entries', async () => {
    const id = (await peerIdOf(await createIdentity())).toString()
    assert.equal(isMembersFrame({ v: 1, m: [[id, ['/ip4/127.0.0.1/tcp/1']]] }), true)
    assert.equal(isMembersFrame({ v: 2, m: [] }), false)
    assert.equal(isMembersFrame({ v: 1, m: [['not an id!', []]] }), false)
    assert.equal(isMembersFrame({ v: 1, m: [[id, ['a', 'b', 'c', 'd', 'e']]] }), false)
    assert.equal(isMembersFrame({ v: 1, m: [[id, []]], extra: 1 }), false)
    assert.equal(isMembersFrame({ v: 1, m: Array.from({ length: MAX_LISTED_MEMBERS + 1 }, () => [id, []]) }), false)
  })

  it('scales the interval as memberlist scales push-pull: flat to 32 members, one more interval per doubling', () => {
    assert.equal(exchangeIntervalMs(10_000, 4), 10_000)
    assert.equal(exchangeIntervalMs(10_000, 32), 10_000)
    assert.equal(exchangeIntervalMs(10_000, 48), 20_000)
    assert.equal(exchangeIntervalMs(10_000, 64), 20_000)
    assert.equal(exchangeIntervalMs(10_000, 1000), 60_000)
  })

  it('runs fast while lists still teach this node members it lacked, then at the scaled period', () => {
    const now = 1_000_000
    assert.equal(nextExchangeMs(now, now + 1, 48), MEMBER_EXCHANGE_FAST_MS)
    assert.equal(nextExchangeMs(now, now, 48), 20_000)
    assert.equal(nextExchangeMs(now, 0, 4), 10_000)
  })
})

describe('member exchange over real libp2p', () => {
  let owner: Host, member: Host, other: Host, outsider: Host
  let served: MemberExchange, asking: MemberExchange, askingOther: MemberExchange
  const violations: Array<[string, string]> = []
  const atOwner: Array<[string, MemberEntry[]]> = []
  const atMember: Array<[string, MemberEntry[]]> = []
  let ownerList: MemberEntry[]

  before(async () => {
    [owner, member, other, outsider] = await Promise.all([newHost(), newHost(), newHost(), newHost()])
    const members = new Set([owner, member, other].map(h => h.peerId.toString()))
    ownerList = [[owner.peerId.toString(), ['/ip4/127.0.0.1/tcp/4001']], [other.peerId.toString(), ['/ip4/127.0.0.1/tcp/4002']]]
    served = new MemberExchange(owner, {
      list: () => ownerList,
      onMembers: (from, m) => { atOwner.push([from, m]) },
      isMember: p => members.has(p),
      onViolation: (peer, reason) => { violations.push([peer, reason]) }
    })
    asking = new MemberExchange(member, { list: () => [[member.peerId.toString(), ['/ip4/127.0.0.1/tcp/4003']]], onMembers: (from, m) => { atMember.push([from, m]) }, isMember: p => members.has(p) })
    askingOther = new MemberExchange(other, { list: () => [], onMembers: () => {}, isMember: p => members.has(p) })
    await Promise.all([served.start(), asking.start(), askingOther.start()])
    for (const h of [member, other, outsider]) await h.dial(owner.getMultiaddrs()[0])
  })
  after(async () => { await Promise.all([owner, member, other, outsider].map(async h => await h.stop())) })

  it('swaps lists, each side naming the other by its authenticated id', async () => {
    await asking.exchange(owner.peerId.toString())
    assert.deepEqual(atMember, [[owner.peerId.toString(), ownerList]])
    await until('the owner to take the list', () => atOwner.length === 1)
    assert.deepEqual(atOwner[0], [member.peerId.toString(), [[member.peerId.toString(), ['/ip4/127.0.0.1/tcp/4003']]]])
    assert.equal(asking.stats.exchanged, 1)
    assert.equal(served.stats.served, 1)
  })

  it('refuses a non-member, junk, an oversized list, a silent opener and a flood; another member is still answered', async () => {
    const refusedBefore = served.stats.refused
    const valid = frame({ v: 1, m: [] })
    const fromOutsider = await exchange(outsider, owner.peerId, MEMBERS_PROTOCOL, [valid])
    assert.equal(fromOutsider.bytes.byteLength, 0, 'no list for a non-member')
    assert.ok(!violations.some(([p]) => p === outsider.peerId.toString()), 'a non-member is refused, not audited as a member')

    const junk = await exchange(member, owner.peerId, MEMBERS_PROTOCOL, [new Uint8Array([3, 1, 2, 3])])
    assert.equal(junk.bytes.byteLength, 0)
    const ghost = (await peerIdOf(await createIdentity())).toString()
    const tooMany = await exchange(member, owner.peerId, MEMBERS_PROTOCOL, [frame({ v: 1, m: Array.from({ length: MAX_LISTED_MEMBERS + 1 }, () => [ghost, []]) })])
    assert.equal(tooMany.bytes.byteLength, 0)
    await sleep(2000) // the bucket refills: the silent opener is judged on its silence, not its rate
    const t0 = performance.now()
    const silent = await exchange(member, owner.peerId, MEMBERS_PROTOCOL, [], { close: false, ms: EXCHANGE_READ_TIMEOUT_MS + 2000 })
    assert.equal(silent.bytes.byteLength, 0)
    assert.ok(performance.now() - t0 >= EXCHANGE_READ_TIMEOUT_MS - 100, 'the silent opener was held to the read timeout')
    const mine = (re: RegExp): number => violations.filter(([p, r]) => p === member.peerId.toString() && re.test(r)).length
    assert.equal(mine(/^not a member list$/), 2, JSON.stringify(violations))
    assert.equal(mine(new RegExp(`^no member list within ${EXCHANGE_READ_TIMEOUT_MS} ms$`)), 1, JSON.stringify(violations))
    // A requester that gives up (ends its stream having sent nothing) is refused, not reported.
    await sleep(2000)
    const refusedBeforeQuit = served.stats.refused
    const quitter = await exchange(member, owner.peerId, MEMBERS_PROTOCOL, [])
    assert.equal(quitter.bytes.byteLength, 0)
    await sleep(200)
    assert.equal(served.stats.refused, refusedBeforeQuit + 1, 'the ended stream was refused')
    assert.equal(mine(/member list/), 3, `a requester that gave up is not reported: ${JSON.stringify(violations)}`)
    assert.equal(atOwner.length, 1, 'nothing refused reached the mesh')

    await sleep(8000) // a full bucket
    const answered = (await Promise.all(Array.from({ length: 12 }, async () => (await exchange(member, owner.peerId, MEMBERS_PROTOCOL, [valid])).bytes.byteLength > 0))).filter(Boolean).length
    assert.ok(answered >= 1 && answered <= 5, `answered ${answered} of 12`)
    assert.ok(violations.some(([p, r]) => p === member.peerId.toString() && /exchanges past/.test(r)), JSON.stringify(violations))
    // Four misbehaving streams, then flood streams refused by rate (those past libp2p's stream limit never reach the handler).
    assert.ok(served.stats.refused - refusedBefore >= 5, `refused ${served.stats.refused - refusedBefore}, answered ${answered}`)

    await askingOther.exchange(owner.peerId.toString())
    assert.equal(askingOther.stats.exchanged, 1, 'the other member is still answered')
  })
})

async function mesh (name: string, bootstrap: string[] = []): Promise<Mesh> {
  return new Mesh({
    membership: 'swim',
    privateKey: await createIdentity(), name, groups: ['default'], listen: ['/ip4/127.0.0.1/tcp/0'], bootstrap, mdns: false, mdnsIntervalMs: 1000,
    heartbeatMs: 300, suspectAfterMs: 1500, deadAfterMs: 3000, snapshotIntervalMs: 60_000, pingIntervalMs: 5000, redialMinMs: 200, redialMaxMs: 1000,
    snapshotVersion: () => 1, snapshotData: () => ({ v: 1 }), validateSnapshot: (d: unknown): d is Record<string, unknown> => typeof d === 'object' && d !== null
  })
}

describe('member exchange on real meshes', () => {
  const meshes: Mesh[] = []
  after(async () => { await Promise.all(meshes.map(async m => await m.stop({ announce: false }))) })

  it('a newcomer meets a member that published nothing it could hear, through its seed\'s list', async () => {
    const seed = await mesh('seed')
    meshes.push(seed)
    await seed.start()
    const old = await mesh('old', [seed.addresses()[0]])
    meshes.push(old)
    await old.start()
    await until('seed and old to meet', () => seed.peers().some(p => p.id === old.peerId && p.status === 'alive'))
    // Past the join window and every publication: what `old` published went out before the
    // newcomer existed, and a settled SWIM mesh publishes nothing more.
    await sleep(11_000)
    const newcomer = await mesh('newcomer', [seed.addresses()[0]])
    meshes.push(newcomer)
    await newcomer.start()
    await until('the newcomer to meet old', () => newcomer.peers().some(p => p.id === old.peerId && p.status === 'alive'), 20_000)
    assert.ok(newcomer.memberStats().exchanged >= 1, JSON.stringify(newcomer.memberStats()))
  })

  /** A connected attacker host, and a victim TCP port (counting connections) for the addresses it names. */
  async function hostileMember (): Promise<{ victim: net.Server, port: number, accepted: () => number, target: Mesh, attacker: Host }> {
    let n = 0
    const victim = net.createServer(s => { n++; s.destroy() })
    await new Promise<void>(resolve => victim.listen(0, '127.0.0.1', resolve))
    const port = (victim.address() as net.AddressInfo).port
    const target = meshes[0]
    const attacker = await newHost()
    await attacker.dial(multiaddr(target.addresses()[0]))
    return { victim, port, accepted: () => n, target, attacker }
  }

  it('a hostile member\'s list of 500 ghosts naming a victim port: a bounded set of hints and dials; the mesh still works', async () => {
    const { victim, port, accepted, target, attacker } = await hostileMember()
    try {
      const ghosts = await Promise.all(Array.from({ length: 500 }, async () => (await peerIdOf(await createIdentity())).toString()))
      const list = ghosts.map(g => [g, [`/ip4/127.0.0.1/tcp/${port}/p2p/${g}`]])
      const answer = await exchange(attacker, peerIdFromString(target.peerId), MEMBERS_PROTOCOL, [frame({ v: 1, m: list })])
      assert.ok(answer.bytes.byteLength > 0, 'an open mesh answers any connected peer')
      await sleep(8000)
      const hinted = target.redialStats().hinted
      assert.ok(hinted <= 64, `hinted targets ${hinted}`)
      assert.ok(accepted() <= 64 * 3, `connections to the victim port ${accepted()}`)
      assert.ok(target.peers().every(p => !ghosts.includes(p.id)), 'no ghost got a record')
      assert.ok(target.peers().some(p => p.id === meshes[1].peerId && p.status === 'alive'), 'the honest members still see each other')
    } finally {
      await attacker.stop()
      victim.close()
    }
  })

  it('a hostile member naming a fresh ghost in every list keeps a node in fast exchanges: one exchange per 2 s at most, bounded hints and dials', async () => {
    const { victim, port, accepted, target, attacker } = await hostileMember()
    try {
      const before = target.memberStats()
      const t0 = performance.now()
      let sent = 0
      // 12 lists, one each 2 s (inside the 0.5/s allowance), each teaching the target a new "member".
      for (let i = 0; i < 12; i++) {
        const ghost = (await peerIdOf(await createIdentity())).toString()
        const answer = await exchange(attacker, peerIdFromString(target.peerId), MEMBERS_PROTOCOL, [frame({ v: 1, m: [[ghost, [`/ip4/127.0.0.1/tcp/${port}/p2p/${ghost}`]]] })])
        if (answer.bytes.byteLength > 0) sent++
        await sleep(2000)
      }
      const seconds = (performance.now() - t0) / 1000
      const after = target.memberStats()
      assert.ok(sent >= 10, `the lists were taken (${sent} of 12)`)
      // Its own exchanges: fast mode is one every 2 s, whatever keeps it on.
      const initiated = (after.exchanged + after.failures) - (before.exchanged + before.failures)
      assert.ok(initiated <= Math.ceil(seconds / 2) + 2, `${initiated} exchanges started in ${seconds.toFixed(1)} s`)
      assert.ok(target.redialStats().hinted <= 64, `hinted targets ${target.redialStats().hinted}`)
      assert.ok(accepted() <= 12 * 3, `connections to the victim port ${accepted()}`)
      assert.ok(target.peers().some(p => p.id === meshes[1].peerId && p.status === 'alive'), 'the honest members still see each other')
    } finally {
      await attacker.stop()
      victim.close()
    }
  })
})
