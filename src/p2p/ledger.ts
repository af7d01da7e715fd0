import { MAX_LEDGER_STATEMENTS, MAX_STATEMENT_SKEW_MS, cleanName, ledgerDigest, statementId, verifyStatement, type Statement } from './admission-messages.js'

/**
 * The membership ledger as a pure state machine: a set of signed statements (found, admit,
 * revoke) and the members they define. Signatures are checked before (`withValidSignatures`);
 * everything else here is synchronous and deterministic.
 *
 * The state is a function of the set of statements, not of their arrival order: statements are
 * replayed sorted by (at, id) from the mesh's founding, and each counts only when its issuer is
 * a member at that point. So members that sync the same statements agree, whatever order they
 * came in, and a revoked member's later statements never count. A revoked peer counts again only
 * after an admit dated after its revocation (a replay of an old admit is the same statement and
 * changes nothing). A revoked member could still sign statements back-dated to before its
 * revocation: `applyStatements` refuses every new statement by a key this node knows is revoked,
 * so only nodes that took them before they learned of the revocation keep them (limitation).
 */

export interface MemberInfo {
  id: string
  name: string
  /** When the statement that made it a member was signed. */
  since: number
  /** Who admitted it (itself for the founder). */
  by: string
}

export interface LedgerState {
  /** The mesh id (from the founding statement). */
  mesh: string
  founder: string
  /** The statements that count, by id. */
  statements: Map<string, Statement>
  members: Map<string, MemberInfo>
  /** Peers whose latest counting statement is a revoke, and when. */
  revoked: Map<string, number>
  /** Digest of the statement ids (equal digests: equal ledgers). */
  digest: string
}

/** Why a statement was not taken. */
export type RefusalReason = 'other_mesh' | 'duplicate' | 'future' | 'not_member' | 'no_effect' | 'full' | 'bad_signature'

export interface ApplyResult {
  state: LedgerState
  /** Statements new to the ledger that count. */
  added: Statement[]
  refused: Array<{ statement: Statement, reason: RefusalReason }>
}

function ordered (list: Array<{ s: Statement, id: string }>): Array<{ s: Statement, id: string }> {
  return list.sort((a, b) => a.s.at - b.s.at || (a.id < b.id ? -1 : a.id > b.id ? 1 : 0))
}

/**
 * The ledger the statements define: the mesh founded by the earliest `found` statement (of
 * `mesh` when given), and the members that follow from it. Undefined when there is no founding.
 */
export function replay (statements: Iterable<Statement>, mesh?: string): LedgerState | undefined {
  const all = [...statements].map(s => ({ s, id: statementId(s) }))
  const found = ordered(all.filter(x => x.s.t === 'found' && (mesh == null || x.s.mesh === mesh)))[0]
  if (found == null || found.s.t !== 'found') return undefined
  const f = found.s
  const members = new Map<string, MemberInfo>([[f.subject, { id: f.subject, name: cleanName(f.name), since: f.at, by: f.issuer }]])
  const revoked = new Map<string, number>()
  const counted = new Map<string, Statement>([[found.id, f]])
  const seen = new Set<string>([found.id])
  for (const { s, id } of ordered(all.filter(x => x.s.t !== 'found' && x.s.mesh === f.mesh))) {
    if (seen.has(id) || counted.size >= MAX_LEDGER_STATEMENTS) continue
    seen.add(id)
    if (s.at < f.at || !members.has(s.issuer)) continue
    if (s.t === 'admit') {
      if (members.has(s.subject)) continue
      members.set(s.subject, { id: s.subject, name: cleanName(s.name), since: s.at, by: s.issuer })
      revoked.delete(s.subject)
    } else if (s.t === 'revoke') {
      members.delete(s.subject)
      revoked.set(s.subject, s.at)
    }
    counted.set(id, s)
  }
  return { mesh: f.mesh, founder: f.subject, statements: counted, members, revoked, digest: ledgerDigest(counted.keys()) }
}

/**
 * Adds statements (signatures already checked) to a ledger. Statements of another mesh, dated
 * too far in the future, already held, or that do not count (issuer not a member at their
 * time, admit of a member) are refused with a reason; the rest are added.
 */
export function applyStatements (state: LedgerState, incoming: Statement[], now: number): ApplyResult {
  const refused: ApplyResult['refused'] = []
  const candidates = new Map(state.statements)
  const fresh = new Map<string, Statement>()
  for (const s of incoming) {
    const id = statementId(s)
    if (s.mesh !== state.mesh) refused.push({ statement: s, reason: 'other_mesh' })
    else if (candidates.has(id)) refused.push({ statement: s, reason: 'duplicate' })
    else if (s.at > now + MAX_STATEMENT_SKEW_MS) refused.push({ statement: s, reason: 'future' })
    else if (s.t === 'found') refused.push({ statement: s, reason: 'no_effect' })
    // A revoked member's key may still sign, dated before its revocation (a back-dated admit of a
    // fresh key, or a revoke of the member that revoked it, would count in the replay and undo
    // the revocation). Once this node knows of the revocation, it takes nothing new from that key.
    else if (state.revoked.has(s.issuer)) refused.push({ statement: s, reason: 'not_member' })
    else { candidates.set(id, s); fresh.set(id, s) }
  }
  if (fresh.size === 0) return { state, added: [], refused }
  const next = replay(candidates.values(), state.mesh)
  if (next == null) return { state, added: [], refused }
  const added: Statement[] = []
  for (const [id, s] of fresh) {
    if (next.statements.has(id)) { added.push(s); continue }
    const reason: RefusalReason = next.statements.size >= MAX_LEDGER_STATEMENTS ? 'full' : s.t === 'admit' && next.members.has(s.subject) ? 'no_effect' : 'not_member'
    refused.push({ statement: s, reason })
  }
  return { state: added.length > 0 ? next : state, added, refused }
}

/**
 * Whether a node alone in its mesh should take `theirs` as its ledger: it is alone (no member
 * but itself) and the other ledger counts it as a member. With `inviter` (an invite), the ledger
 * must also count the inviter as a member and its admit of `self` must be the inviter's: then
 * nothing is taken on first use, and being alone is not required.
 *
 * With `now`, trust on first use also ends `TOFU_WINDOW_MS` after this node's mesh was founded:
 * any peer that can connect may offer a lone node a ledger that admits it, so without the window
 * a node that has served alone for days (the first machine, with the models) would be taken
 * over by the first LAN peer to push one. A node started a while ago joins with an invite.
 */
export function adoption (own: LedgerState | undefined, self: string, theirs: Statement[], opts: { inviter?: string, mesh?: string, now?: number } = {}): LedgerState | undefined {
  const next = replay(theirs, opts.mesh)
  if (next == null || !next.members.has(self)) return undefined
  if (own != null && next.mesh === own.mesh) return undefined
  if (opts.inviter != null) {
    return next.members.has(opts.inviter) && next.members.get(self)?.by === opts.inviter ? next : undefined
  }
  const alone = own == null || [...own.members.keys()].every(m => m === self)
  const founded = [...(own?.statements.values() ?? [])].find(s => s.t === 'found')?.at
  const fresh = own == null || opts.now == null || (founded != null && founded >= opts.now - TOFU_WINDOW_MS)
  return alone && fresh ? next : undefined
}

/** How long after its founding a lone node still adopts the first mesh that admits it (trust on first use). */
export const TOFU_WINDOW_MS = 30 * 60_000

/** The statements whose signatures hold; `forged` counts the others. */
export async function withValidSignatures (statements: Statement[]): Promise<{ valid: Statement[], forged: Statement[] }> {
  const checks = await Promise.all(statements.map(async s => await verifyStatement(s)))
  return { valid: statements.filter((_, i) => checks[i]), forged: statements.filter((_, i) => !checks[i]) }
}
