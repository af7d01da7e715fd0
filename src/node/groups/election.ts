import { MAX_TERM, type LeaderCertificate } from '../../p2p/index.js'
import { majority, quorum } from './certificate.js'

/**
 * Leader election per swarm group, as raft does it, as pure functions of (state, input, now) that
 * return the new state and the actions the I/O layer (group-manager.ts) must carry out. The I/O
 * layer persists (`persist`) BEFORE any vote or request leaves; when that write fails it keeps the
 * old state, so memory never runs ahead of the disk.
 *
 * - A group without a live leader elects one: once its member set has been stable for `settleMs`,
 *   the best candidate (smallest id among live members) becomes a candidate at term + 1, votes for
 *   itself and asks the others (`request_votes`). Others stand only if the best stays silent, each
 *   after a delay that grows with its rank. A majority of the candidate's electorate (the live
 *   members it sees) makes it leader, with a certificate of the signed votes.
 * - A member votes at most once per term (persisted), only for a member in the group, and never
 *   while its own leader is alive: a live leader is not preempted (a restarted node with a smaller
 *   id does not take over).
 * - A node adopts a leader only from a certificate that proves it (certificate.ts); a higher
 *   certified term wins, equal terms resolve to the smaller leader id. A heartbeat's bare claim
 *   changes nothing.
 * - A certificate whose votes are all good but too few for this node's view (a healed partition's
 *   lone node, or a lying member) is a rival: if its term is within `MAX_TERM_STEP` of ours, the
 *   current leader re-certifies at a term above it, so everyone converges on one proven leader.
 *
 * Partitions: each side with a majority of the members it sees elects; after the heal the highest
 * term proven to everyone wins (a lone node's leadership, proven by one vote, is replaced by a
 * re-certification of the majority's leader).
 */
export interface GroupState {
  group: string
  /** Highest term this node took part in (voted, stood, or adopted): persisted. */
  term: number
  /** Who this node voted for at `term` (persisted with it): one vote per term. */
  votedFor: string | null
  /** The leader this node follows (null: none proven, or not heard since start). */
  leader: string | null
  /** The proof of the newest leadership adopted (persisted); `cert.term <= term`. */
  cert: LeaderCertificate | null
  /** When the leader last changed (ms). */
  leaderSince: number
  /** When the member set last changed (ms). */
  membersChangedAt: number
  /** Sorted live member ids (self included when a member). */
  members: string[]
  /** When the group was first seen without a live leader (ms), or null. */
  leaderlessSince: number | null
  /** No candidacy before this time (after a lost one). */
  retryAt: number
  /** The election this node runs, if any. */
  candidacy: Candidacy | null
  /** Highest term of a rival certificate (good votes, no quorum here), 0 when none. */
  rival: number
  /** The leader that rival names, and when it was seen: a live one gets time to re-certify first. */
  rivalLeader: string | null
  rivalAt: number
}

export interface Candidacy {
  term: number
  /** Live members when it started (self included): the majority is counted against them. */
  electorate: string[]
  /** Votes received, by voter (self's included): signatures. */
  votes: Record<string, string>
  /** Members that refused or could not be reached: once a majority is out of reach the election is lost. */
  refused: string[]
  startedAt: number
}

export interface ElectionTimings {
  /** The member set must be this stable before standing. */
  settleMs: number
  /** Extra wait per rank for a candidate that is not the best one. */
  backoffPerRankMs: number
}

/** A candidacy without a majority this long is abandoned (the vote requests time out well before). */
export const CANDIDACY_TIMEOUT_MS = 4000
/** A bare or unproven term is followed only this far above this node's own term. */
export const MAX_TERM_STEP = 16

export type ElectionAction =
  /** Write `{ term, votedFor, cert }` durably before anything else. */
  | { type: 'persist' }
  | { type: 'request_votes', term: number, to: string[] }
  | { type: 'leader', leader: string | null, term: number }

export interface Step { state: GroupState, actions: ElectionAction[] }

export function initialGroupState (group: string, persisted: { term: number, votedFor?: string | null, cert?: LeaderCertificate | null }, now: number): GroupState {
  const cert = persisted.cert ?? null
  // A restarted node follows no one until it hears a proof again; the certificate it kept only
  // keeps its shown term from going down.
  return { group, term: Math.max(persisted.term, cert?.term ?? 0), votedFor: persisted.votedFor ?? null, leader: null, cert, leaderSince: now, membersChangedAt: now, members: [], leaderlessSince: now, retryAt: 0, candidacy: null, rival: 0, rivalLeader: null, rivalAt: 0 }
}

/** The term shown for the group: that of the newest proven leadership. */
export function shownTerm (s: GroupState): number {
  return s.cert?.term ?? 0
}

/** Whether `s.leader` is alive and, when it is this node, still proven in the current view. */
export function leaderLive (s: GroupState, self: string): boolean {
  if (s.leader == null || !s.members.includes(s.leader)) return false
  if (s.leader === self) return s.cert != null && s.cert.leader === self && s.cert.votes.length >= quorum(s.members.length)
  return true
}

/** The live member set now (self included when a member). */
export function onMembers (s: GroupState, members: string[], now: number): GroupState {
  const sorted = [...members].sort()
  if (sorted.length === s.members.length && sorted.every((m, i) => m === s.members[i])) return s
  return { ...s, members: sorted, membersChangedAt: now }
}

/**
 * Periodic decision. `canStand` is false during the start-up grace. Starts a candidacy when the
 * group has no live leader and this node's turn came, or re-certifies this node's leadership when
 * a rival term appeared or its proof no longer reaches a quorum of the members it sees.
 */
export function onTick (s: GroupState, self: string, now: number, t: ElectionTimings, canStand: boolean): Step {
  if (s.candidacy != null) {
    if (now - s.candidacy.startedAt < CANDIDACY_TIMEOUT_MS) return { state: s, actions: [] }
    const rank = Math.max(0, s.members.indexOf(self))
    s = { ...s, candidacy: null, retryAt: now + t.settleMs + rank * t.backoffPerRankMs }
  }
  const isMember = s.members.includes(self)
  if (!isMember) return { state: s.leaderlessSince == null ? s : { ...s, leaderlessSince: null }, actions: [] }
  const selfLeads = s.leader === self
  const recertify = selfLeads && (s.rival > shownTerm(s) || !leaderLive(s, self))
  if (!recertify && s.leader != null && s.members.includes(s.leader) && !selfLeads) {
    return { state: s.leaderlessSince == null ? s : { ...s, leaderlessSince: null }, actions: [] }
  }
  if (selfLeads && !recertify) return { state: s, actions: [] }
  if (!canStand || now < s.retryAt) return { state: s, actions: [] }
  // A live rival leader (a node that led alone, now seen by more members) re-certifies itself
  // soon: standing against it would only split the vote. It gets a bounded time to do so.
  if (!selfLeads && s.rivalLeader != null && s.rivalLeader !== self && s.members.includes(s.rivalLeader) && now - s.rivalAt < CANDIDACY_TIMEOUT_MS) {
    return { state: s, actions: [] }
  }
  const since = s.leaderlessSince ?? now
  const state = s.leaderlessSince == null ? { ...s, leaderlessSince: now } : s
  const rank = s.members.indexOf(self)
  const stableFor = now - s.membersChangedAt
  const waitedFor = now - since
  const due = recertify || rank === 0
    ? stableFor >= t.settleMs
    : stableFor >= t.settleMs && waitedFor >= t.settleMs + rank * t.backoffPerRankMs
  if (!due) return { state, actions: [] }
  return stand(state, self, now)
}

function stand (s: GroupState, self: string, now: number): Step {
  const term = Math.max(s.term, s.rival) + 1
  if (term > MAX_TERM) return { state: s, actions: [] }
  const candidacy: Candidacy = { term, electorate: [...s.members], votes: {}, refused: [], startedAt: now }
  const next: GroupState = { ...s, term, votedFor: self, candidacy }
  return { state: next, actions: [{ type: 'persist' }, { type: 'request_votes', term, to: s.members.filter(m => m !== self) }] }
}

/**
 * This node's own vote is signed (by the I/O layer, after `persist`) and counted like any other:
 * call with the candidate's own signature once it exists.
 */
export function onVoteReply (s: GroupState, self: string, vote: { term: number, voter: string, sig: string }): Step {
  const c = s.candidacy
  if (c == null || vote.term !== c.term || !c.electorate.includes(vote.voter) || c.votes[vote.voter] != null) return { state: s, actions: [] }
  const votes = { ...c.votes, [vote.voter]: vote.sig }
  const count = Object.keys(votes).length
  if (count < majority(c.electorate.length)) return { state: { ...s, candidacy: { ...c, votes } }, actions: [] }
  const cert: LeaderCertificate = { v: 1, group: s.group, term: c.term, leader: self, votes: Object.entries(votes).sort(([a], [b]) => a.localeCompare(b)).map(([voter, sig]) => ({ voter, sig })) }
  const state: GroupState = { ...s, candidacy: null, cert, leader: self, leaderSince: Date.now(), leaderlessSince: null, rival: 0 }
  return { state, actions: [{ type: 'persist' }, { type: 'leader', leader: self, term: c.term }] }
}

/**
 * A member refused (or did not answer) this node's vote request at `term`. Once the votes still
 * possible cannot make a majority, the election is lost at once (not at the timeout), and the node
 * stands again after the settle delay, longer by rank, so a split vote between two candidates
 * resolves in one more round instead of a 4 s timeout.
 */
export function onVoteRefused (s: GroupState, self: string, refusal: { term: number, voter: string }, now: number, t: ElectionTimings): Step {
  const c = s.candidacy
  if (c == null || refusal.term !== c.term || !c.electorate.includes(refusal.voter) || c.votes[refusal.voter] != null || c.refused.includes(refusal.voter)) return { state: s, actions: [] }
  const refused = [...c.refused, refusal.voter]
  if (c.electorate.length - refused.length >= majority(c.electorate.length)) return { state: { ...s, candidacy: { ...c, refused } }, actions: [] }
  const rank = Math.max(0, s.members.indexOf(self))
  // Never at once: a node that cannot win (others follow a leader it has not heard of yet) must not
  // burn through terms; the settle delay, longer by rank, also breaks a split vote.
  return { state: { ...s, candidacy: null, retryAt: now + t.settleMs + rank * t.backoffPerRankMs }, actions: [] }
}

export type VoteRefusal = 'not_in_group' | 'not_a_member' | 'term_out_of_bounds' | 'stale_term' | 'already_voted' | 'leader_alive'

export interface VoteDecision extends Step {
  grant: boolean
  code?: VoteRefusal
  reason?: string
}

/**
 * A vote request from `candidate` (authenticated by its connection) for `term`. `candidateOk`:
 * the candidate is a member of the mesh and announces the group.
 */
export function onVoteRequest (s: GroupState, self: string, req: { term: number, candidate: string, candidateOk: boolean }): VoteDecision {
  const refuse = (code: VoteRefusal, reason: string): VoteDecision => ({ state: s, actions: [], grant: false, code, reason })
  if (!s.members.includes(self)) return refuse('not_in_group', `this node is not in group '${s.group}'`)
  if (!req.candidateOk) return refuse('not_a_member', 'the candidate is not a member of the mesh in this group')
  if (!Number.isSafeInteger(req.term) || req.term > MAX_TERM || req.term > Math.max(s.term, shownTerm(s)) + MAX_TERM_STEP) {
    return refuse('term_out_of_bounds', `term ${req.term} is more than ${MAX_TERM_STEP} above term ${s.term}`)
  }
  if (req.term < s.term || req.term <= shownTerm(s)) return refuse('stale_term', `term ${req.term} is not above term ${s.term}`)
  if (req.term === s.term && s.votedFor != null) {
    if (s.votedFor === req.candidate) return { state: s, actions: [], grant: true }
    return refuse('already_voted', `this node voted for another candidate at term ${req.term}`)
  }
  if (leaderLive(s, self) && s.leader !== req.candidate) return refuse('leader_alive', `leader ${s.leader} is alive`)
  const stepDown = s.leader === self
  const next: GroupState = {
    ...s,
    term: req.term,
    votedFor: req.candidate,
    candidacy: s.candidacy != null && s.candidacy.term <= req.term ? null : s.candidacy,
    ...(stepDown ? { leader: null, leaderSince: Date.now() } : {})
  }
  return { state: next, actions: [{ type: 'persist' }, ...(stepDown ? [{ type: 'leader' as const, leader: null, term: shownTerm(s) }] : [])], grant: true }
}

/**
 * A certificate was fetched and checked (certificate.ts). `proven`: it reached a quorum here;
 * otherwise `rival` says whether all its votes were good (a rival to re-certify above).
 */
export function onCertificate (s: GroupState, cert: LeaderCertificate, verdict: { proven: boolean, rival: boolean }, now: number): Step {
  const held = shownTerm(s)
  if (!verdict.proven) {
    if (verdict.rival && cert.term > held && cert.term > s.rival && cert.term <= s.term + MAX_TERM_STEP) return { state: { ...s, rival: cert.term, rivalLeader: cert.leader, rivalAt: now }, actions: [] }
    return { state: s, actions: [] }
  }
  const better = cert.term > held ||
    (cert.term === held && cert.leader !== s.leader && (s.leader == null || cert.leader < s.leader))
  if (!better) return { state: s, actions: [] }
  const term = Math.max(s.term, cert.term)
  const state: GroupState = {
    ...s,
    term,
    votedFor: term > s.term ? null : s.votedFor,
    cert,
    leader: cert.leader,
    leaderSince: now,
    leaderlessSince: null,
    candidacy: s.candidacy != null && s.candidacy.term <= cert.term ? null : s.candidacy,
    rival: s.rival <= cert.term ? 0 : s.rival,
    rivalLeader: s.rival <= cert.term ? null : s.rivalLeader
  }
  return { state, actions: [{ type: 'persist' }, { type: 'leader', leader: cert.leader, term: cert.term }] }
}
