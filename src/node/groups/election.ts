/**
 * Leader election per swarm group, as pure functions of (state, input, now).
 *
 * - Every heartbeat carries the sender's view (group, term, leader). A higher term always wins;
 *   at equal terms the smaller leader id wins. Terms only grow and are persisted.
 * - A group without a live leader elects one: once the member set has been stable for
 *   `settleMs`, the best candidate (smallest peer id among alive members) claims term + 1. Others
 *   claim only if the best stays silent, each after a delay that grows with its rank, so one
 *   claim normally wins and competing ones resolve by the rules above.
 * - A live leader is never preempted: a node that joins with a smaller id does not take over.
 *
 * Partitions: each side elects its own leader (with a higher term). After the heal the views
 * meet in heartbeats and everyone adopts the highest term's leader: one leader again.
 */
export interface GroupState {
  group: string
  term: number
  leader: string | null
  /** When the leader last changed (ms). */
  leaderSince: number
  /** When the member set last changed (ms). */
  membersChangedAt: number
  /** Sorted member ids (alive, self included when a member), for change detection. */
  members: string[]
  /** When the group was first seen without a live leader (ms), or null. */
  leaderlessSince: number | null
}

export interface ElectionTimings {
  /** The member set must be this stable before a claim. */
  settleMs: number
  /** Extra wait per rank for a candidate that is not the best one. */
  backoffPerRankMs: number
}

export function initialGroupState (group: string, term: number, now: number): GroupState {
  return { group, term, leader: null, leaderSince: now, membersChangedAt: now, members: [], leaderlessSince: now }
}

/** A peer's view arrived. Returns the new state and whether the leader or term changed. */
export function onView (s: GroupState, view: { term: number, leader: string }, now: number): { state: GroupState, changed: boolean } {
  if (view.term > s.term || (view.term === s.term && view.leader !== s.leader && (s.leader == null || view.leader < s.leader))) {
    return { state: { ...s, term: view.term, leader: view.leader, leaderSince: now, leaderlessSince: null }, changed: true }
  }
  return { state: s, changed: false }
}

/** The member set now (alive members, self included when a member). */
export function onMembers (s: GroupState, members: string[], now: number): GroupState {
  const sorted = [...members].sort()
  if (sorted.length === s.members.length && sorted.every((m, i) => m === s.members[i])) return s
  return { ...s, members: sorted, membersChangedAt: now }
}

/**
 * Periodic decision: returns a claim (`term` to take) when this node should become leader now.
 */
export function decide (s: GroupState, self: string, now: number, t: ElectionTimings): { state: GroupState, claim: number | null } {
  const isMember = s.members.includes(self)
  const leaderAlive = s.leader != null && s.members.includes(s.leader)
  if (leaderAlive || !isMember) {
    return { state: s.leaderlessSince == null ? s : { ...s, leaderlessSince: null }, claim: null }
  }
  const since = s.leaderlessSince ?? now
  const state = s.leaderlessSince == null ? { ...s, leaderlessSince: now } : s
  const rank = s.members.indexOf(self)
  const stableFor = now - s.membersChangedAt
  const waitedFor = now - since
  const due = rank === 0
    ? stableFor >= t.settleMs
    : stableFor >= t.settleMs && waitedFor >= t.settleMs + rank * t.backoffPerRankMs
  if (!due) return { state, claim: null }
  const term = s.term + 1
  return { state: { ...state, term, leader: self, leaderSince: now, leaderlessSince: null }, claim: term }
}
