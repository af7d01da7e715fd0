import { describe, it, before } from 'node:test'
import assert from 'node:assert/strict'
import { generateKeyPair } from '@libp2p/crypto/keys'
import { peerIdFromPrivateKey } from '@libp2p/peer-id'
import type { PrivateKey } from '@libp2p/interface'
import {
  initialGroupState, onCertificate, onMembers, onTick, onVoteRefused, onVoteReply, onVoteRequest, shownTerm, verifyCertificate, quorum, MAX_TERM_STEP, CANDIDACY_TIMEOUT_MS,
  type GroupState
} from '../../../src/node/groups/index.js'
import { isLeaderCertificate, signVote, MAX_TERM, type LeaderCertificate } from '../../../src/p2p/index.js'

const t = { settleMs: 500, backoffPerRankMs: 300 }

interface Key { id: string, key: PrivateKey }
let keys: Key[] = []

/** Real Ed25519 identities, sorted by id so rank 0 is keys[0]. */
before(async () => {
  const made = await Promise.all(Array.from({ length: 6 }, async () => {
    const key = await generateKeyPair('Ed25519')
    return { key, id: peerIdFromPrivateKey(key).toString() }
  }))
  // Code-unit order, as the election ranks members (`[...members].sort()`); localeCompare folds case.
  keys = made.sort((a, b) => a.id < b.id ? -1 : a.id > b.id ? 1 : 0)
})

async function certFor (group: string, term: number, leader: Key, voters: Key[]): Promise<LeaderCertificate> {
  const votes = await Promise.all(voters.map(async v => {
    const s = await signVote(v.key, v.id, { group, term, candidate: leader.id })
    return { voter: v.id, sig: s.sig }
  }))
  return { v: 1, group, term, leader: leader.id, votes }
}

const everyone = { isMember: () => true, knownInGroup: () => true }

/** Runs a whole election among `nodes` (pure states, real signatures): `cand` stands, the others answer. */
async function elect (states: Map<string, GroupState>, cand: Key, now: number): Promise<GroupState> {
  let s = states.get(cand.id)!
  const step = onTick(s, cand.id, now, t, true)
  s = step.state
  const req = step.actions.find(a => a.type === 'request_votes')
  assert.ok(req != null && req.type === 'request_votes', 'the candidate asks for votes')
  s = onVoteReply(s, cand.id, await signVote(cand.key, cand.id, { group: 'g', term: req.term, candidate: cand.id })).state
  for (const id of req.to) {
    const d = onVoteRequest(states.get(id)!, id, { term: req.term, candidate: cand.id, candidateOk: true })
    if (!d.grant) continue
    states.set(id, d.state)
    const voter = keys.find(k => k.id === id)!
    s = onVoteReply(s, cand.id, await signVote(voter.key, voter.id, { group: 'g', term: req.term, candidate: cand.id })).state
  }
  states.set(cand.id, s)
  return s
}

function cluster (members: Key[], term = 0): Map<string, GroupState> {
  const ids = members.map(k => k.id)
  return new Map(ids.map(id => [id, onMembers(initialGroupState('g', { term }, 0), ids, 0)]))
}

describe('election (fake clock, real signatures)', () => {
  it('the best member stands once membership is stable; others only later, by rank', () => {
    const [a, b, c] = keys
    const s = onMembers(initialGroupState('g', { term: 4 }, 0), [a.id, b.id, c.id], 0)
    assert.equal(onTick(s, a.id, 400, t, true).actions.length, 0)
    const step = onTick(s, a.id, 500, t, true)
    assert.deepEqual(step.actions.map(x => x.type), ['persist', 'request_votes'])
    assert.equal(step.state.term, 5)
    assert.equal(step.state.votedFor, a.id, 'a candidate votes for itself, persisted before any request')
    assert.equal(step.state.leader, null, 'no leadership without votes')
    assert.equal(onTick(s, b.id, 799, t, true).actions.length, 0)
    assert.equal(onTick(s, b.id, 800, t, true).actions.length, 2)
    assert.equal(onTick(s, a.id, 5000, t, false).actions.length, 0, 'no candidacy during the start-up grace')
  })

  it('a majority of votes makes a leader whose certificate every member verifies', async () => {
    const [a, b, c] = keys
    const states = cluster([a, b, c], 2)
    const s = await elect(states, a, 600)
    assert.equal(s.leader, a.id)
    assert.equal(s.cert?.term, 3)
    assert.ok(isLeaderCertificate(s.cert))
    const v = await verifyCertificate(s.cert!, { ...everyone, viewSize: 3 })
    assert.equal(v.ok, true)
    for (const id of [b.id, c.id]) {
      const next = onCertificate(states.get(id)!, s.cert!, { proven: true, rival: false }, 700)
      assert.equal(next.state.leader, a.id)
      assert.equal(shownTerm(next.state), 3)
    }
  })

  it('a lone member elects itself (one vote of one)', async () => {
    const [a] = keys
    const s = await elect(cluster([a]), a, 600)
    assert.equal(s.leader, a.id)
    assert.equal(s.cert?.votes.length, 1)
  })

  it('one vote per term, also across a restart', () => {
    const [a, b, c] = keys
    const s = onMembers(initialGroupState('g', { term: 4 }, 0), [a.id, b.id, c.id], 0)
    const first = onVoteRequest(s, b.id, { term: 5, candidate: a.id, candidateOk: true })
    assert.equal(first.grant, true)
    assert.deepEqual(first.actions.map(x => x.type), ['persist'])
    const again = onVoteRequest(first.state, b.id, { term: 5, candidate: c.id, candidateOk: true })
    assert.deepEqual([again.grant, again.code], [false, 'already_voted'])
    assert.equal(onVoteRequest(first.state, b.id, { term: 5, candidate: a.id, candidateOk: true }).grant, true, 'the same vote again (a lost reply)')
    // Restart: only what was persisted survives.
    const restarted = onMembers(initialGroupState('g', { term: first.state.term, votedFor: first.state.votedFor }, 9000), [a.id, b.id, c.id], 9000)
    const after = onVoteRequest(restarted, b.id, { term: 5, candidate: c.id, candidateOk: true })
    assert.deepEqual([after.grant, after.code], [false, 'already_voted'])
    assert.equal(onVoteRequest(restarted, b.id, { term: 4, candidate: c.id, candidateOk: true }).code, 'stale_term')
  })

  it('refuses non-members, nodes outside the group, and a candidate while the leader is alive', async () => {
    const [a, b, c, d] = keys
    const states = cluster([a, b, c], 0)
    await elect(states, a, 600)
    const sb = onCertificate(states.get(b.id)!, states.get(a.id)!.cert!, { proven: true, rival: false }, 700).state
    assert.equal(onVoteRequest(sb, b.id, { term: 2, candidate: d.id, candidateOk: false }).code, 'not_a_member')
    assert.equal(onVoteRequest(sb, b.id, { term: 2, candidate: c.id, candidateOk: true }).code, 'leader_alive')
    assert.equal(onVoteRequest(sb, b.id, { term: 2, candidate: a.id, candidateOk: true }).grant, true, 'the live leader may re-certify')
    const outside = onMembers(sb, [a.id, c.id], 800)
    assert.equal(onVoteRequest(outside, b.id, { term: 2, candidate: a.id, candidateOk: true }).code, 'not_in_group')
    // The leader dies: now c may be elected.
    const dead = onMembers(sb, [b.id, c.id], 900)
    assert.equal(onVoteRequest(dead, b.id, { term: 2, candidate: c.id, candidateOk: true }).grant, true)
  })

  it('terms are bounded: 1e12, 2^53 and big jumps are refused', async () => {
    const [a, b, c] = keys
    const s = onMembers(initialGroupState('g', { term: 7 }, 0), [a.id, b.id, c.id], 0)
    for (const term of [1e12, 2 ** 53, MAX_TERM + 1, 7 + MAX_TERM_STEP + 1]) {
      assert.equal(onVoteRequest(s, b.id, { term, candidate: a.id, candidateOk: true }).code, 'term_out_of_bounds', `term ${term}`)
    }
    assert.equal(onVoteRequest(s, b.id, { term: 7 + MAX_TERM_STEP, candidate: a.id, candidateOk: true }).grant, true)
    for (const term of [1e12, 2 ** 53]) {
      const cert = await certFor('g', term, a, [a, b, c])
      assert.equal(isLeaderCertificate(cert), false, 'the wire schema refuses it')
      const v = await verifyCertificate(cert, { ...everyone, viewSize: 3 })
      assert.equal(v.ok, false)
      assert.equal(!v.ok && v.code, 'term_out_of_bounds')
    }
    // A rival (unproven) term far above ours is not followed either.
    const far = onCertificate(s, await certFor('g', 7 + MAX_TERM_STEP + 1, a, [a]), { proven: false, rival: true }, 10)
    assert.equal(far.state.rival, 0)
  })

  it('certificates: forged vote, non-member voter, duplicate voter, lone vote, healed partition', async () => {
    const [a, b, c, d, x] = keys
    // Forged: b's "vote" signed with x's key.
    const forged = await certFor('g', 3, a, [a, b])
    forged.votes[1].sig = (await signVote(x.key, x.id, { group: 'g', term: 3, candidate: a.id })).sig
    const f = await verifyCertificate(forged, { ...everyone, viewSize: 3 })
    assert.deepEqual([f.ok, !f.ok && f.code], [false, 'invalid_certificate'])
    // A vote for another term or candidate does not fit either.
    const moved = await certFor('g', 3, a, [a, b])
    moved.term = 4
    assert.equal((await verifyCertificate(moved, { ...everyone, viewSize: 3 })).ok, false)
    // Non-member voters are not counted: x's own votes prove nothing.
    const nonMember = await certFor('g', 3, x, [x, d])
    const nm = await verifyCertificate(nonMember, { isMember: p => p !== x.id && p !== d.id, knownInGroup: () => true, viewSize: 3 })
    assert.equal(nm.ok, false)
    const nm2 = await verifyCertificate(await certFor('g', 3, a, [a, d]), { isMember: p => p !== d.id, knownInGroup: () => true, viewSize: 3 })
    assert.deepEqual([nm2.ok, !nm2.ok && nm2.code], [false, 'no_quorum'])
    // A key that never announced the group counts for nothing either.
    const unknown = await verifyCertificate(await certFor('g', 3, a, [a, d]), { isMember: () => true, knownInGroup: p => p !== d.id, viewSize: 3 })
    assert.equal(unknown.ok, false)
    // Duplicate voter.
    const dup = await certFor('g', 3, a, [a, b])
    dup.votes.push(dup.votes[1])
    assert.equal((await verifyCertificate(dup, { ...everyone, viewSize: 5 })).ok, false)
    // A member alone proves nothing to a node that sees two other members...
    const lone = await verifyCertificate(await certFor('g', 3, x, [x]), { ...everyone, viewSize: 3 })
    assert.deepEqual([lone.ok, !lone.ok && lone.code], [false, 'no_quorum'])
    // ...but a 2/2 partition's side is proven to all four after the heal, and views a node apart agree.
    assert.equal((await verifyCertificate(await certFor('g', 3, a, [a, b]), { ...everyone, viewSize: 4 })).ok, true)
    assert.equal((await verifyCertificate(await certFor('g', 3, a, [a, b, c]), { ...everyone, viewSize: 6 })).ok, true)
    assert.deepEqual([quorum(1), quorum(2), quorum(3), quorum(4), quorum(5)], [1, 2, 2, 2, 3])
  })

  it('a lower or equal certificate changes nothing; equal terms resolve to the smaller leader id', async () => {
    const [a, b, c] = keys
    let s = onMembers(initialGroupState('g', { term: 0 }, 0), [a.id, b.id, c.id], 0)
    s = onCertificate(s, await certFor('g', 5, b, [a, b]), { proven: true, rival: false }, 1).state
    assert.deepEqual([s.leader, shownTerm(s)], [b.id, 5])
    const lower = onCertificate(s, await certFor('g', 4, c, [b, c]), { proven: true, rival: false }, 2)
    assert.equal(lower.state, s)
    assert.equal(onCertificate(s, await certFor('g', 5, c, [b, c]), { proven: true, rival: false }, 3).state, s)
    assert.equal(onCertificate(s, await certFor('g', 5, a, [a, c]), { proven: true, rival: false }, 3).state.leader, a.id)
    assert.equal(onCertificate(s, await certFor('g', 9, c, [c]), { proven: false, rival: false }, 4).state, s, 'an unproven certificate is never adopted')
  })

  it('1/3 heal: the lone leader\'s term is a rival; the majority\'s leader re-certifies above it and wins everywhere', async () => {
    const [a, b, c, d] = keys
    const all = [a, b, c, d]
    const states = cluster(all, 0)
    await elect(states, a, 600)
    for (const k of [b, c, d]) states.set(k.id, onCertificate(states.get(k.id)!, states.get(a.id)!.cert!, { proven: true, rival: false }, 700).state)
    // d is cut off: it sees itself alone and elects itself at term 2 (one vote of one).
    states.set(d.id, onMembers(states.get(d.id)!, [d.id], 1000))
    const lone = await elect(states, d, 5000)
    assert.deepEqual([lone.leader, shownTerm(lone)], [d.id, 2])
    // Heal: everyone sees all four again.
    for (const k of all) states.set(k.id, onMembers(states.get(k.id)!, all.map(x => x.id), 6000))
    // a sees d's certificate: good votes, too few for a view of 4.
    const v = await verifyCertificate(lone.cert!, { ...everyone, viewSize: 4 })
    assert.equal(v.ok, false)
    states.set(a.id, onCertificate(states.get(a.id)!, lone.cert!, { proven: false, rival: true }, 6100).state)
    assert.equal(states.get(a.id)!.leader, a.id, 'the rival is not adopted')
    const re = await elect(states, a, 6600)
    assert.deepEqual([re.leader, shownTerm(re)], [a.id, 3], 'a re-certifies above the rival term')
    assert.equal(states.get(d.id)!.votedFor, a.id, 'd, whose own proof no longer holds, votes too')
    assert.equal(states.get(d.id)!.leader, null, 'd stepped down')
    assert.equal((await verifyCertificate(re.cert!, { ...everyone, viewSize: 4 })).ok, true)
    for (const k of [b, c, d]) {
      const s = onCertificate(states.get(k.id)!, re.cert!, { proven: true, rival: false }, 6700).state
      assert.deepEqual([s.leader, shownTerm(s)], [a.id, 3])
    }
  })

  it('a candidacy without a majority is abandoned and retried later', () => {
    const [a, b, c] = keys
    const s = onMembers(initialGroupState('g', { term: 0 }, 0), [a.id, b.id, c.id], 0)
    const step = onTick(s, a.id, 500, t, true)
    assert.equal(onTick(step.state, a.id, 1000, t, true).actions.length, 0, 'still waiting for votes')
    const expired = onTick(step.state, a.id, 4600, t, true)
    assert.equal(expired.state.candidacy, null)
    assert.equal(expired.actions.length, 0, 'waits before standing again')
    const again = onTick(expired.state, a.id, 5200, t, true)
    assert.equal(again.state.term, 2, 'a new election at the next term')
  })

  it('a split vote is lost as soon as a majority is out of reach, and retried by rank', async () => {
    const [a, b, c, d] = keys
    const ids = [a.id, b.id, c.id, d.id]
    let sa = onMembers(initialGroupState('g', { term: 0 }, 0), ids, 0)
    sa = onTick(sa, a.id, 500, t, true).state
    sa = onVoteReply(sa, a.id, await signVote(a.key, a.id, { group: 'g', term: 1, candidate: a.id })).state
    sa = onVoteRefused(sa, a.id, { term: 1, voter: b.id }, 600, t).state
    assert.notEqual(sa.candidacy, null, 'a, c and d can still make 3 of 4')
    assert.equal(onVoteRefused(sa, a.id, { term: 0, voter: c.id }, 600, t).state, sa, 'a refusal for another term is ignored')
    sa = onVoteRefused(sa, a.id, { term: 1, voter: c.id }, 700, t).state
    assert.equal(sa.candidacy, null, 'lost at once: at most 2 of 4')
    assert.equal(onTick(sa, a.id, 1100, t, true).actions.length, 0, 'not before the settle delay')
    const again = onTick(sa, a.id, 1200, t, true)
    assert.equal(again.state.term, 2)
    let sb = onMembers(initialGroupState('g', { term: 0 }, 0), ids, 0)
    sb = onTick(sb, b.id, 800, t, true).state
    sb = onVoteRefused(onVoteRefused(sb, b.id, { term: 1, voter: a.id }, 900, t).state, b.id, { term: 1, voter: c.id }, 900, t).state
    assert.equal(sb.retryAt, 900 + 500 + 300, 'rank 1 waits longer than rank 0')
  })

  it('a node without a leader gives a live rival leader a bounded time to re-certify before standing', async () => {
    const [a, b, c] = keys
    let s = onMembers(initialGroupState('g', { term: 0 }, 0), [a.id, b.id, c.id], 0)
    s = onCertificate(s, await certFor('g', 1, c, [c]), { proven: false, rival: true }, 1000).state
    assert.deepEqual([s.rival, s.rivalLeader, s.leader], [1, c.id, null])
    assert.equal(onTick(s, a.id, 2000, t, true).actions.length, 0, 'a waits for c to re-certify')
    const late = onTick(s, a.id, 1000 + CANDIDACY_TIMEOUT_MS, t, true)
    assert.equal(late.state.term, 2, 'then stands above the rival term')
    const gone = onTick(onMembers(s, [a.id, b.id], 1100), a.id, 1700, t, true)
    assert.equal(gone.state.term, 2, 'a rival that is not alive is not waited for')
  })
})
