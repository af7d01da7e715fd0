/**
 * The node's membership on a real LevelDB store and a real libp2p host: founded once, persisted
 * before it changes, and a failed write leaves memory as it was (a typed error, no rejection
 * left unhandled).
 */
import { after, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import fc from 'fast-check'
import { ShepherdError } from '../../src/errors.js'
import { Store } from '../../src/node/store.js'
import { Membership } from '../../src/node/membership.js'
import { createHost, type Host } from '../../src/p2p/host.js'
import { createIdentity, peerIdOf } from '../../src/p2p/identity.js'
import { isAdmissionRequest, isAdmissionResponse, isStatement } from '../../src/p2p/admission-messages.js'
import { decodeInvite } from '../../src/p2p/invite.js'
import { tempDir } from '../support/cluster.js'

describe('node membership on a real store', () => {
  const hosts: Host[] = []
  after(async () => { await Promise.all(hosts.map(async h => { await h.stop() })) })

  it('founds a mesh once, persists admits and revokes, and reloads them', async () => {
    const dir = await tempDir('shepherd-membership-')
    const key = await createIdentity()
    const self = peerIdOf(key)
    const other = peerIdOf(await createIdentity())
    let store = await Store.open(dir)
    const m = await Membership.open({ store, key, selfId: self, name: 'me', mode: 'admission', allow: [], deny: [] })
    const mesh = m.trust.ledger?.mesh
    assert.match(mesh ?? '', /^[0-9a-f]{32}$/)
    const host = await createHost({ privateKey: key, listen: ['/ip4/127.0.0.1/tcp/0'], mdns: false, mdnsIntervalMs: 1000, trust: m.trust })
    hosts.push(host)
    await m.start(host)
    await m.admit(other)
    assert.ok(m.trust.isMember(other))
    await m.stop()
    await store.close()

    store = await Store.open(dir)
    const again = await Membership.open({ store, key, selfId: self, name: 'me', mode: 'admission', allow: [], deny: [] })
    assert.equal(again.trust.ledger?.mesh, mesh, 'the same mesh after a restart')
    assert.ok(again.trust.isMember(other), 'the admit survived the restart')
    assert.deepEqual(again.list(() => false).map(v => [v.id, v.status]).sort(), [[other, 'member'], [self, 'member']].sort())
    await store.close()
  })

  it('a failed write is a typed error and changes nothing in memory', async () => {
    const dir = await tempDir('shepherd-membership-')
    const key = await createIdentity()
    const self = peerIdOf(key)
    const other = peerIdOf(await createIdentity())
    const store = await Store.open(dir)
    const m = await Membership.open({ store, key, selfId: self, name: 'me', mode: 'admission', allow: [], deny: [] })
    const host = await createHost({ privateKey: key, listen: ['/ip4/127.0.0.1/tcp/0'], mdns: false, mdnsIntervalMs: 1000, trust: m.trust })
    hosts.push(host)
    await m.start(host)
    const digest = m.trust.ledger?.digest
    await store.close()
    await assert.rejects(m.admit(other), (err: unknown) => err instanceof ShepherdError && err.status >= 500)
    assert.ok(!m.trust.isMember(other))
    assert.equal(m.trust.ledger?.digest, digest)
    await assert.rejects(m.updateLists({ deny: [other] }), (err: unknown) => err instanceof ShepherdError && err.status >= 500)
    assert.deepEqual(m.trust.lists().deny, [])
    // A malformed id: 400 before anything is written.
    await assert.rejects(m.updateLists({ deny: ['A'.repeat(46)] }), (err: unknown) => err instanceof ShepherdError && err.status === 400)
    await m.stop()
  })

  it('invites name reachable addresses and expire; used secrets are pruned after expiry', async () => {
    const dir = await tempDir('shepherd-membership-')
    const key = await createIdentity()
    const store = await Store.open(dir)
    const m = await Membership.open({ store, key, selfId: peerIdOf(key), name: 'me', mode: 'admission', allow: [], deny: [] })
    const { token, expiresAt } = await m.invite(60_000, ['/ip4/10.1.2.3/tcp/9191', '/ip4/127.0.0.1/tcp/9191'])
    const t = decodeInvite(token)
    assert.ok(t != null)
    assert.deepEqual(t.addrs, ['/ip4/10.1.2.3/tcp/9191'], 'loopback addresses are left out when others exist')
    assert.ok(Math.abs(Date.parse(expiresAt) - Date.now() - 60_000) < 5000)
    // Used secrets are kept while their token could still be presented, then forgotten.
    const used = store.table<{ expiresAt: number }>('invites_used')
    await used.put('old', { expiresAt: Date.now() - 1 })
    await used.put('live', { expiresAt: Date.now() + 60_000 })
    assert.equal(await m.pruneInvites(), 1)
    assert.deepEqual((await used.entries()).map(([k]) => k), ['live'])
    await store.close()
  })
})

describe('fuzz: admission decoders', () => {
  it('never throw on any JSON value', () => {
    fc.assert(fc.property(fc.jsonValue({ maxDepth: 6 }), v => {
      for (const check of [isAdmissionRequest, isAdmissionResponse, isStatement]) assert.equal(typeof check(v), 'boolean')
    }), { numRuns: 2000 })
    fc.assert(fc.property(fc.string({ maxLength: 300 }), s => { assert.equal(decodeInvite(s), undefined) }), { numRuns: 500 })
  })
})
