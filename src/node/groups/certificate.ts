import { MAX_TERM, verifyVote, type LeaderCertificate, type SignedVote } from '../../p2p/index.js'

/**
 * Leadership certificates: how a node checks, against its own view, that a leader was elected.
 *
 * A certificate for (group, term, leader) carries signed votes. A verifier counts a vote only when
 * - its signature is the voter's (the key is in the voter's peer id),
 * - the voter is a member of the mesh (`isMember`: trust) and this node has heard it announce the
 *   group (`knownInGroup`: a key that never joined the group counts for nothing), and
 * - the voter has not been counted already (one vote per voter).
 * The certificate proves leadership when the counted votes reach `quorum(viewSize)`: a majority of
 * the group's live members as this verifier sees them, less `VIEW_SLACK`. The slack lets views that
 * differ by a node agree (a leader elected by 3 of 5 is still proven to a node that sees 6, and a
 * 2/2 partition's side is proven to all 4 after the heal), while a lone member's own vote never
 * proves anything to a node that sees another member. A non-member can never produce one: its
 * own vote does not count, and members' votes are signed for a named candidate.
 */
export const VIEW_SLACK = 1

/** Votes that prove leadership to a verifier that sees `viewSize` live members (itself included). */
export function quorum (viewSize: number): number {
  // Never one vote for a node that sees another member: one member's word is not a majority.
  return Math.max(Math.min(viewSize, 2), Math.floor(Math.max(1, viewSize - VIEW_SLACK) / 2) + 1)
}

/** Votes a candidate needs from its own electorate: a strict majority. */
export function majority (electorateSize: number): number {
  return Math.floor(Math.max(1, electorateSize) / 2) + 1
}

export interface CertificateContext {
  /** Whether a peer is a member of the mesh (TrustPolicy.isMember). */
  isMember: (peer: string) => boolean
  /** Whether this node has heard `peer` announce the group (or it is this node, joined). */
  knownInGroup: (peer: string) => boolean
  /** Live members of the group this node sees, itself included when joined. */
  viewSize: number
}

export type CertificateVerdict =
  /** Proven: enough counted votes. */
  | { ok: true, voters: string[] }
  /** Every counted vote is good but too few: an honest but outvoted leader (a healed partition) or a lone liar. */
  | { ok: false, code: 'no_quorum', voters: string[], reason: string }
  | { ok: false, code: 'invalid_certificate' | 'term_out_of_bounds', reason: string }

/** Checks a (schema-valid) certificate. Never throws. */
export async function verifyCertificate (cert: LeaderCertificate, ctx: CertificateContext): Promise<CertificateVerdict> {
  if (!Number.isSafeInteger(cert.term) || cert.term < 1 || cert.term > MAX_TERM) return { ok: false, code: 'term_out_of_bounds', reason: `term ${cert.term} is outside 1..${MAX_TERM}` }
  if (!ctx.isMember(cert.leader)) return { ok: false, code: 'invalid_certificate', reason: 'the leader is not a member' }
  const seen = new Set<string>()
  for (const v of cert.votes) {
    if (seen.has(v.voter)) return { ok: false, code: 'invalid_certificate', reason: `voter ${v.voter} appears twice` }
    seen.add(v.voter)
  }
  const counted: string[] = []
  for (const v of cert.votes) {
    const vote: SignedVote = { group: cert.group, term: cert.term, candidate: cert.leader, voter: v.voter, sig: v.sig }
    if (!await verifyVote(vote)) return { ok: false, code: 'invalid_certificate', reason: `the vote of ${v.voter} is not its signature` }
    if (ctx.isMember(v.voter) && ctx.knownInGroup(v.voter)) counted.push(v.voter)
  }
  const need = quorum(ctx.viewSize)
  if (counted.length >= need) return { ok: true, voters: counted }
  return { ok: false, code: 'no_quorum', voters: counted, reason: `${counted.length} counted vote(s) of members; ${need} needed for a view of ${ctx.viewSize}` }
}
