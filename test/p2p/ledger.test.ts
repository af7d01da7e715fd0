import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import type { PrivateKey } from '@libp2p/interface'
import { createIdentity, peerIdOf } from '../../src/p2p/identity.js'
import { isAdmissionRequest, isStatement, signStatement, MAX_ADMISSION_FRAME_BYTES, MAX_LEDGER_STATEMENTS, type Statement } from '../../src/p2p/admission-messages.js'
import { adoption, applyStatements, replay, withValidSignatures, type LedgerState } from '../../src/p2p/ledger.js'
import { foundMesh } from '../../src/p2p/admission.js'
import { checkInvite, createInvite } from '../../src/p2p/invite.js'
import { TrustPolicy } from '../../src/p2p/trust.js'
import { PendingPeers } from '../../src/p2p/pending-peers.js'

interface Who { key: PrivateKey, id: string }
const who = async (): Promise<Who> => { const key = await createIdentity(); return { key, id: peerIdOf(key) } }

async function stmt (by: Who, l: LedgerState, t: 'admit' | 'revoke', subject: string, at: number): Promise<Statement> {
  const base = { v: 1 as const, mesh: l.mesh, subject, issuer: by.id, at }
  return await signStatement(by.key, t === 'admit' ? { ...base, t, name: 'n' } : { ...base, t })
}

/** Signature check then the pure apply, as the service does. */
async function apply (l: LedgerState, s: Statement[], now = Date.now()): Promise<ReturnType<typeof applyStatements> & { forged: number }> {
  const { valid, forged } = await withValidSignatures(s)
  return { ...applyStatements(l, valid, now), forged: forged.length }
}

describe('membership ledger', () => {
  it('a founded mesh has its founder as its only member', async () => {
    const a = await who()
    const l = await foundMesh(a.key, a.id, 'a')
    assert.deepEqual([...l.members.keys()], [a.id])
    assert.equal(l.founder, a.id)
    assert.match(l.mesh, /^[0-9a-f]{32}$/)
    assert.equal(l.statements.size, 1)
  })

  it('a member admits; the admitted member admits in turn; digests follow the content', async () => {
    const [a, b, c] = [await who(), await who(), await who()]
    const l0 = await foundMesh(a.key, a.id, 'a')
    const now = Date.now()
    const r1 = await apply(l0, [await stmt(a, l0, 'admit', b.id, now + 1)])
    assert.equal(r1.added.length, 1)
    assert.ok(r1.state.members.has(b.id))
    assert.notEqual(r1.state.digest, l0.digest)
    const r2 = await apply(r1.state, [await stmt(b, r1.state, 'admit', c.id, now + 2)])
    assert.ok(r2.state.members.has(c.id))
    assert.equal(r2.state.members.get(c.id)?.by, b.id)
  })

  it('refuses a forged signature', async () => {
    const [a, b, m] = [await who(), await who(), await who()]
    const l = await foundMesh(a.key, a.id, 'a')
    // Signed by m but claiming a as issuer.
    const forged = { ...(await stmt(m, l, 'admit', b.id, Date.now() + 1)), issuer: a.id } as Statement
    const r = await apply(l, [forged])
    assert.equal(r.forged, 1)
    assert.equal(r.added.length, 0)
    assert.ok(!r.state.members.has(b.id))
    // A signature of another statement does not transfer either.
    const real = await stmt(a, l, 'admit', b.id, Date.now() + 1)
    const swapped = { ...real, subject: m.id } as Statement
    assert.equal((await apply(l, [swapped])).forged, 1)
  })

  it('refuses a statement by a non-member', async () => {
    const [a, b, m] = [await who(), await who(), await who()]
    const l = await foundMesh(a.key, a.id, 'a')
    const r = await apply(l, [await stmt(m, l, 'admit', b.id, Date.now() + 1), await stmt(m, l, 'admit', m.id, Date.now() + 1)])
    assert.equal(r.forged, 0)
    assert.deepEqual(r.refused.map(x => x.reason), ['not_member', 'not_member'])
    assert.deepEqual([...r.state.members.keys()], [a.id])
  })

  it('refuses a revoked member\'s later statements; a revoked peer counts again only after a later admit', async () => {
    const [a, b, c] = [await who(), await who(), await who()]
    const l0 = await foundMesh(a.key, a.id, 'a')
    const t = Date.now()
    let l = (await apply(l0, [await stmt(a, l0, 'admit', b.id, t + 1)])).state
    l = (await apply(l, [await stmt(a, l, 'revoke', b.id, t + 2)])).state
    assert.ok(!l.members.has(b.id))
    assert.ok(l.revoked.has(b.id))
    const byRevoked = await apply(l, [await stmt(b, l, 'admit', c.id, t + 3)])
    assert.deepEqual(byRevoked.refused.map(x => x.reason), ['not_member'])
    // The old admit replayed: same statement, nothing changes.
    const oldAdmit = [...l.statements.values()].find(s => s.t === 'admit' && s.subject === b.id)
    assert.ok(oldAdmit != null)
    assert.deepEqual((await apply(l, [oldAdmit])).refused.map(x => x.reason), ['duplicate'])
    // A new admit dated before the revoke does not re-admit.
    const early = await apply(l, [await stmt(a, l, 'admit', b.id, t + 1)])
    assert.ok(!early.state.members.has(b.id))
    // An admit after the revoke does.
    const later = await apply(l, [await stmt(a, l, 'admit', b.id, t + 4)])
    assert.ok(later.state.members.has(b.id))
    assert.ok(!later.state.revoked.has(b.id))
  })

  it('reaches the same state whatever order the statements arrive in', async () => {
    const [a, b, c] = [await who(), await who(), await who()]
    const l0 = await foundMesh(a.key, a.id, 'a')
    const t = Date.now()
    const s1 = await stmt(a, l0, 'admit', b.id, t + 1)
    const s2 = await stmt(b, l0, 'admit', c.id, t + 2)
    const s3 = await stmt(a, l0, 'revoke', b.id, t + 3)
    const found = [...l0.statements.values()]
    const x = replay([...found, s1, s2, s3])
    const y = replay([s3, s2, ...found, s1])
    assert.equal(x?.digest, y?.digest)
    assert.deepEqual([...(x?.members.keys() ?? [])].sort(), [a.id, c.id].sort())
    // Applied one by one in a bad order: s2 (by b, not yet a member) is refused until s1 is there.
    const r = await apply(l0, [s2])
    assert.deepEqual(r.refused.map(q => q.reason), ['not_member'])
    const r2 = await apply(l0, [s3, s2, s1])
    assert.equal(r2.state.digest, x?.digest)
  })

  it('refuses statements of another mesh, from the future, and oversized or malformed frames', async () => {
    const [a, b, z] = [await who(), await who(), await who()]
    const l = await foundMesh(a.key, a.id, 'a')
    const other = await foundMesh(z.key, z.id, 'z')
    const r = await apply(l, [await stmt(z, other, 'admit', b.id, Date.now()), await stmt(a, l, 'admit', b.id, Date.now() + 3600_000)])
    assert.deepEqual(r.refused.map(x => x.reason), ['other_mesh', 'future'])
    const s = await stmt(a, l, 'admit', b.id, Date.now())
    assert.ok(isStatement(s))
    assert.ok(!isStatement({ ...s, extra: 1 }))
    assert.ok(!isStatement({ ...s, name: 'x'.repeat(65) }))
    assert.ok(!isStatement({ ...s, subject: 'not-a-peer-id' }))
    assert.ok(!isAdmissionRequest({ v: 1, t: 'push', statements: Array.from({ length: MAX_LEDGER_STATEMENTS + 1 }, () => s) }))
    assert.ok(isAdmissionRequest({ v: 1, t: 'push', statements: [s] }))
    assert.ok(MAX_ADMISSION_FRAME_BYTES >= MAX_LEDGER_STATEMENTS * 400, 'a full ledger fits one frame')
  })

  it('adopts another mesh only when alone in its own, or with the inviter\'s admit', async () => {
    const [a, b, c] = [await who(), await who(), await who()]
    const la = await foundMesh(a.key, a.id, 'a')
    const lb = await foundMesh(b.key, b.id, 'b')
    const admitB = await stmt(a, la, 'admit', b.id, Date.now() + 1)
    const theirs = [...la.statements.values(), admitB]
    assert.equal(adoption(lb, b.id, theirs)?.mesh, la.mesh, 'alone: trust on first use')
    assert.equal(adoption(lb, c.id, theirs), undefined, 'a ledger that does not admit this node')
    // b has a member of its own: no adoption without an invite.
    const lb2 = (await apply(lb, [await stmt(b, lb, 'admit', c.id, Date.now() + 1)])).state
    assert.equal(adoption(lb2, b.id, theirs), undefined)
    assert.equal(adoption(lb2, b.id, theirs, { inviter: a.id })?.mesh, la.mesh, 'the inviter admitted it')
    assert.equal(adoption(lb2, b.id, theirs, { inviter: c.id }), undefined, 'not the inviter named in the token')
  })

  it('invites: signed by the inviter, its mesh, expiring', async () => {
    const [a, m] = [await who(), await who()]
    const l = await foundMesh(a.key, a.id, 'a')
    const now = Date.now()
    const token = await createInvite(a.key, { mesh: l.mesh, inviter: a.id, addrs: ['/ip4/10.0.0.1/tcp/9191'], ttlMs: 60_000, now })
    assert.equal((await checkInvite(token, { self: a.id, mesh: l.mesh, now })).ok, true)
    assert.deepEqual(await codeOf(checkInvite(token, { self: a.id, mesh: l.mesh, now: now + 61_000 })), 'invite_expired')
    assert.deepEqual(await codeOf(checkInvite(token, { self: m.id, mesh: l.mesh, now })), 'wrong_inviter')
    const forged = await createInvite(m.key, { mesh: l.mesh, inviter: m.id, addrs: [], ttlMs: 60_000, now })
    const body = JSON.parse(Buffer.from(forged.slice(5), 'base64url').toString())
    const claimed = 'shm1.' + Buffer.from(JSON.stringify({ ...body, inviter: a.id })).toString('base64url')
    assert.equal(await codeOf(checkInvite(claimed, { self: a.id, mesh: l.mesh, now })), 'invalid_invite')
    assert.equal(await codeOf(checkInvite('shm1.garbage', { self: a.id, mesh: l.mesh, now })), 'invalid_invite')
  })
})

async function codeOf (p: ReturnType<typeof checkInvite>): Promise<string> {
  const r = await p
  return r.ok ? 'ok' : r.code
}

describe('trust policy and pending peers', () => {
  it('admission mode: members from the ledger and the allow list; deny wins; revoked peers cannot connect', async () => {
    const [a, b, c] = [await who(), await who(), await who()]
    const l = await foundMesh(a.key, a.id, 'a')
    const t = new TrustPolicy({ mode: 'admission', allow: [c.id] })
    t.setLedger(l)
    assert.ok(t.isMember(a.id))
    assert.ok(!t.isMember(b.id))
    assert.ok(t.allows(b.id), 'a stranger may connect, to say hello')
    assert.ok(t.isMember(c.id), 'pre-admitted locally')
    const events: string[] = []
    t.on('member', p => events.push(`member:${p}`))
    t.on('revoked', p => events.push(`revoked:${p}`))
    t.on('pending', p => events.push(`pending:${p}`))
    t.hello(b.id, 'b', 'x'.repeat(32))
    t.hello(b.id, 'b\u001b[2J', 'x'.repeat(32))
    assert.equal(t.state(b.id), 'pending')
    assert.equal(t.pending.get(b.id)?.name, 'b[2J', 'control characters stripped')
    const l2 = (await apply(l, [await stmt(a, l, 'admit', b.id, Date.now() + 1)])).state
    t.setLedger(l2)
    assert.equal(t.state(b.id), 'member')
    const l3 = (await apply(l2, [await stmt(a, l2, 'revoke', b.id, Date.now() + 2)])).state
    t.setLedger(l3)
    assert.equal(t.state(b.id), 'denied')
    assert.ok(!t.allows(b.id))
    t.update({ deny: [c.id] })
    assert.ok(!t.isMember(c.id))
    assert.deepEqual(events, [`pending:${b.id}`, `member:${b.id}`, `revoked:${b.id}`, `revoked:${c.id}`])
  })

  it('open and swarm-key modes: every connected peer is a member unless denied', () => {
    for (const mode of ['open', 'swarm-key'] as const) {
      const t = new TrustPolicy({ mode, deny: ['Qmdenied'] })
      assert.ok(t.isMember('12D3KooWanything'))
      assert.ok(!t.isMember('Qmdenied'))
    }
  })

  it('the pending table is bounded: the oldest is evicted', () => {
    const p = new PendingPeers(3)
    for (let i = 0; i < 5; i++) p.add(`peer${i}`, `n${i}`, 'm', i)
    assert.deepEqual(p.list().map(x => x.id), ['peer2', 'peer3', 'peer4'])
    p.add('peer2', 'again', 'm', 9)
    p.add('peer5', 'n5', 'm', 10)
    assert.deepEqual(p.list().map(x => x.id), ['peer4', 'peer2', 'peer5'])
  })
})
