/**
 * The group manager's I/O around the election state machine, on a real LevelDB store: votes are
 * on disk before they are given (one per term across a restart), a full disk (ENOSPC) refuses
 * the vote or the join/leave with a typed 507 and leaves memory as it was, heartbeat claims
 * beyond the term cap are audited, and commands are authorised only by a checked certificate.
 */
import { describe, it, before } from 'node:test'
import { execFile } from 'node:child_process'
import { promisify } from 'node:util'
import assert from 'node:assert/strict'
import { EventEmitter } from 'node:events'
import fs from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import { generateKeyPair } from '@libp2p/crypto/keys'
import { peerIdFromPrivateKey } from '@libp2p/peer-id'
import type { PrivateKey } from '@libp2p/interface'
import { GroupManager } from '../../../src/node/groups/index.js'
import { Store } from '../../../src/node/store.js'
import { signVote, verifyVote, type LeaderCertificate, type VoteResponseFrame } from '../../../src/p2p/index.js'

interface Key { id: string, key: PrivateKey }
async function newKey (): Promise<Key> {
  const key = await generateKeyPair('Ed25519')
  return { key, id: peerIdFromPrivateKey(key).toString() }
}

/** The part of Mesh the manager uses, with peers set by the test. */
class FakeMesh extends EventEmitter {
  groups: string[]
  peerList: Array<{ id: string, name: string, status: string, groups: string[] }> = []
  constructor (groups: string[]) { super(); this.groups = groups }
  peers (): any[] { return this.peerList }
  get table (): any { return { get: (id: string) => this.peerList.find(p => p.id === id) } }
  setGroups (g: string[]): void { this.groups = [...g] }
  heartbeatNow (): void {}
}

const OPTS = { settleMs: 500, backoffPerRankMs: 300, startupGraceMs: 0, quietStartMs: 0, expectPeers: false, tickMs: 100 }
const enospc = (): Error => Object.assign(new Error('IO error: /x/000003.log: No space left on device'), { code: 'LEVEL_IO_ERROR', cause: Object.assign(new Error('No space left on device'), { code: 'ENOSPC' }) })

async function open (dir: string, self: Key, mesh: FakeMesh, members: (p: string) => boolean = () => true): Promise<{ store: Store, m: GroupManager }> {
  const store = await Store.open(dir)
  const { manager, groups } = await GroupManager.create(store, ['default'], OPTS, () => self.id, 'me', { key: self.key, isMember: members })
  mesh.groups = groups
  manager.attach(mesh as any)
  return { store, m: manager }
}

const answer = async (m: GroupManager, req: any, peer: string): Promise<VoteResponseFrame> => await (m as any).answer(req, peer)
const tick = async (m: GroupManager): Promise<void> => { await (m as any).tick() }

describe('group manager (real store)', () => {
  let self: Key, x: Key, y: Key, outsider: Key
  before(async () => { [self, x, y, outsider] = await Promise.all([newKey(), newKey(), newKey(), newKey()]) })

  async function world (): Promise<{ dir: string, mesh: FakeMesh }> {
    const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'shepherd-gm-'))
    const mesh = new FakeMesh(['default'])
    mesh.peerList = [x, y].map(k => ({ id: k.id, name: k.id.slice(-4), status: 'alive', groups: ['default'] }))
    return { dir, mesh }
  }

  it('a vote is signed, on disk before it is given, and never given twice in a term across a restart', async () => {
    const { dir, mesh } = await world()
    let { store, m } = await open(dir, self, mesh)
    await tick(m)
    const r = await answer(m, { v: 1, t: 'vote', group: 'default', term: 1 }, x.id)
    assert.equal(r.t, 'vote')
    assert.ok(r.t === 'vote' && r.vote.voter === self.id && r.vote.candidate === x.id && await verifyVote(r.vote))
    await store.close();
    ({ store, m } = await open(dir, self, mesh))
    await tick(m)
    const again = await answer(m, { v: 1, t: 'vote', group: 'default', term: 1 }, y.id)
    assert.deepEqual([again.t, again.t === 'refused' && again.code], ['refused', 'already_voted'])
    await store.close()
  })

  it('refuses a candidate that is not a member, and one that is not in the group', async () => {
    const { dir, mesh } = await world()
    const { store, m } = await open(dir, self, mesh, p => p !== outsider.id)
    mesh.peerList.push({ id: outsider.id, name: 'o', status: 'alive', groups: ['default'] }, { id: 'zz', name: 'z', status: 'alive', groups: [] })
    await tick(m)
    const r = await answer(m, { v: 1, t: 'vote', group: 'default', term: 1 }, outsider.id)
    assert.deepEqual([r.t, r.t === 'refused' && r.code], ['refused', 'not_a_member'])
    const other = await answer(m, { v: 1, t: 'vote', group: 'default', term: 1 }, y.id)
    assert.equal(other.t, 'vote', 'the refusals recorded no vote')
    const audit = await store.auditLog(100)
    assert.ok(audit.some(e => e.kind === 'vote_refused' && e.peer === outsider.id))
    await store.close()
  })

  it('ENOSPC: the vote is refused with insufficient_storage and nothing changes in memory', async () => {
    const { dir, mesh } = await world()
    const { store, m } = await open(dir, self, mesh)
    await tick(m)
    const put = store.putMeta.bind(store)
    store.putMeta = async () => { throw enospc() }
    const r = await answer(m, { v: 1, t: 'vote', group: 'default', term: 1 }, x.id)
    assert.deepEqual([r.t, r.t === 'refused' && r.code], ['refused', 'insufficient_storage'])
    store.putMeta = put
    const later = await answer(m, { v: 1, t: 'vote', group: 'default', term: 1 }, y.id)
    assert.equal(later.t, 'vote', 'no vote for x was kept in memory')
    await store.close()
  })

  it('ENOSPC: join and leave answer 507 insufficient_storage and change nothing; otherwise they survive a restart', async () => {
    const { dir, mesh } = await world()
    let { store, m } = await open(dir, self, mesh)
    const put = store.putMeta.bind(store)
    store.putMeta = async () => { throw enospc() }
    await assert.rejects(m.join('gpu'), (err: any) => err.code === 'insufficient_storage' && err.status === 507)
    assert.deepEqual(mesh.groups, ['default'], 'not joined in memory')
    await assert.rejects(m.leave('default'), (err: any) => err.code === 'insufficient_storage' && err.status === 507)
    assert.deepEqual(mesh.groups, ['default'], 'not left in memory')
    store.putMeta = put
    await m.join('gpu')
    assert.deepEqual(mesh.groups, ['default', 'gpu'])
    await store.close();
    ({ store, m } = await open(dir, self, mesh))
    assert.deepEqual(mesh.groups.sort(), ['default', 'gpu'], 'the join survived the restart')
    await store.close()
  })

  it('ENOSPC while adopting a certificate: the node keeps its old view and keeps running', async () => {
    const { dir, mesh } = await world()
    const { store, m } = await open(dir, self, mesh)
    await tick(m)
    const cert = await certFor(2, x, [x, y])
    store.putMeta = async () => { throw enospc() }
    await m.consider(x.id, cert)
    assert.deepEqual(m.leaderOf('default'), { leader: null, term: 0 })
    await store.close()
  })

  async function certFor (term: number, leader: Key, voters: Key[]): Promise<LeaderCertificate> {
    const votes = await Promise.all(voters.map(async v => ({ voter: v.id, sig: (await signVote(v.key, v.id, { group: 'default', term, candidate: leader.id })).sig })))
    return { v: 1, group: 'default', term, leader: leader.id, votes }
  }

  it('commands are authorised by a checked certificate only; claims beyond the cap are audited', async () => {
    const { dir, mesh } = await world()
    const { store, m } = await open(dir, self, mesh, p => p !== outsider.id)
    await tick(m)
    assert.match((m.authorize({ issuer: x.id, group: 'default', term: 0 }) as any).reason, /^not_proven_leader: /)
    // A certificate signed by one voter is not proof for a node that sees three members.
    await m.consider(x.id, await certFor(3, x, [x]))
    assert.equal(m.leaderOf('default').leader, null)
    // Forged: y's vote signed by x.
    const forged = await certFor(3, x, [x, y])
    forged.votes[1].sig = (await signVote(x.key, y.id, { group: 'default', term: 3, candidate: x.id })).sig
    await m.consider(x.id, forged)
    assert.equal(m.leaderOf('default').leader, null)
    await m.consider(x.id, await certFor(3, x, [x, y]))
    assert.deepEqual(m.leaderOf('default'), { leader: x.id, term: 3 })
    assert.deepEqual(m.authorize({ issuer: x.id, group: 'default', term: 3 }), { ok: true })
    assert.equal(m.authorize({ issuer: x.id, group: 'default', term: 4 }).ok, false)
    assert.equal(m.authorize({ issuer: y.id, group: 'default', term: 3 }).ok, false)
    assert.equal(m.authorize({ issuer: x.id, group: 'other', term: 3 }).ok, false)
    // Heartbeat claims: 1e12 and 2^53 are audited and followed by nothing.
    ;(m as any).onView(outsider.id, 'default', 1e12, outsider.id)
    ;(m as any).onView(y.id, 'default', 2 ** 53, y.id)
    await new Promise(resolve => setTimeout(resolve, 50))
    const audit = await store.auditLog(100)
    assert.ok(audit.some(e => e.kind === 'term_out_of_bounds' && e.peer === outsider.id))
    assert.ok(audit.some(e => e.kind === 'term_out_of_bounds' && e.peer === y.id))
    assert.ok(audit.some(e => e.kind === 'invalid_certificate' && e.peer === x.id), 'the forged certificate was audited')
    assert.deepEqual(m.leaderOf('default'), { leader: x.id, term: 3 })
    await store.close()
  })

  it('a certificate whose voters are not heard yet waits for them (a restarted node), and is audited only if they never come', async () => {
    const { dir, mesh } = await world()
    // Just restarted: this node has heard x (the leader) but not y, whose vote completes the quorum.
    mesh.peerList = mesh.peerList.filter(p => p.id === x.id)
    const { store, m } = await open(dir, self, mesh)
    await tick(m)
    await m.consider(x.id, await certFor(3, x, [x, y]))
    assert.equal(m.leaderOf('default').leader, null, 'one counted vote of two needed: not proven yet')
    await tick(m)
    assert.equal(m.leaderOf('default').leader, null, 'nothing changed in the view: still not proven')
    mesh.peerList.push({ id: y.id, name: 'y', status: 'alive', groups: ['default'] })
    await tick(m)
    assert.deepEqual(m.leaderOf('default'), { leader: x.id, term: 3 }, 'y heard: the held certificate is proven without another fetch')
    assert.ok(!(await store.auditLog(100)).some(e => e.kind === 'invalid_certificate'), 'an honest leader is not audited for a slow view')

    // A claim whose extra voter is never heard: dropped and audited once the wait is over.
    const z = await newKey()
    await m.consider(y.id, await certFor(4, y, [y, z]))
    await (m as any).recheckPending(Date.now() + 1000)
    assert.ok(!(await store.auditLog(100)).some(e => e.kind === 'invalid_certificate'))
    await (m as any).recheckPending(Date.now() + 11_000)
    await new Promise(resolve => setTimeout(resolve, 50))
    const audit = await store.auditLog(100)
    assert.ok(audit.some(e => e.kind === 'invalid_certificate' && e.peer === y.id && /after 10000 ms/.test(e.detail)), JSON.stringify(audit))
    assert.deepEqual(m.leaderOf('default'), { leader: x.id, term: 3 })
    await store.close()
  })

  it('a real full disk (8 MiB tmpfs, needs root): join and votes refused typed, memory unchanged, writes again once space is freed', async () => {
    const run = promisify(execFile)
    const mnt = await fs.mkdtemp(path.join(os.tmpdir(), 'shepherd-gm-tmpfs-'))
    await run('mount', ['-t', 'tmpfs', '-o', 'size=8m', 'tmpfs', mnt])
    const mesh = new FakeMesh(['default'])
    mesh.peerList = [x, y].map(k => ({ id: k.id, name: k.id.slice(-4), status: 'alive', groups: ['default'] }))
    const { store, m } = await open(path.join(mnt, 'data'), self, mesh)
    try {
      await tick(m)
      const filler = path.join(mnt, 'filler')
      const fh = await fs.open(filler, 'w')
      try { for (;;) await fh.write(Buffer.alloc(64 * 1024)) } catch (err) { assert.equal((err as NodeJS.ErrnoException).code, 'ENOSPC') } finally { await fh.close() }
      const small = await fs.open(filler, 'a')
      try { for (;;) await small.write(Buffer.alloc(512)) } catch {} finally { await small.close() }
      // Big enough that it cannot fit in the slack of LevelDB's current log block.
      const name = 'g'.repeat(60)
      let refusedJoin = 0
      for (let i = 0; i < 40 && refusedJoin === 0; i++) {
        await m.join(`${name.slice(0, 58)}${i.toString().padStart(2, '0')}`).catch((err: any) => {
          assert.equal(err.code, 'insufficient_storage')
          assert.equal(err.status, 507)
          refusedJoin++
        })
        if (mesh.groups.length >= 32) break
      }
      assert.equal(refusedJoin, 1, 'the full disk refused a join')
      const groupsBefore = [...mesh.groups]
      await assert.rejects(m.join('after-full'), (err: any) => err.code === 'insufficient_storage')
      assert.deepEqual(mesh.groups, groupsBefore, 'memory unchanged')
      const vote = await answer(m, { v: 1, t: 'vote', group: 'default', term: 1 }, x.id)
      assert.deepEqual([vote.t, vote.t === 'refused' && vote.code], ['refused', 'insufficient_storage'])
      await fs.rm(filler)
      await m.join('after-full')
      assert.ok(mesh.groups.includes('after-full'))
      const granted = await answer(m, { v: 1, t: 'vote', group: 'default', term: 1 }, y.id)
      assert.equal(granted.t, 'vote', 'no vote for x was kept; the disk takes writes again')
    } finally {
      await store.close().catch(() => {})
      await run('umount', [mnt]).catch(() => {})
      await fs.rm(mnt, { recursive: true, force: true })
    }
  })
})
