import { EventEmitter } from 'node:events'
import type { LedgerState } from './ledger.js'
import { PendingPeers } from './pending-peers.js'

/**
 * How membership is decided (issue 11 item 1):
 * - `admission` (default): members are the peers with a counting admit in this node's signed
 *   ledger (plus `--allow-peer` ids, admitted locally);
 * - `swarm-key`: the pnet key admits: every peer that completes a connection holds it and is a
 *   member unless denied;
 * - `open` (labs): every peer that connects is a member unless denied.
 */
export type MembershipMode = 'admission' | 'swarm-key' | 'open'

/** A peer as this node sees it: a member, pending (said hello, not admitted), denied (or revoked), or none of these. */
export type TrustState = 'member' | 'pending' | 'denied' | 'none'

export interface TrustEvents {
  /** A peer lost its right to talk to this node: its connections are closed. */
  revoked: [peer: string]
  /** A peer that is not a member tried a protocol; its stream was reset. */
  refused: [peer: string, protocol: string]
  /** A peer became a member. */
  member: [peer: string]
  /** A peer that is no member said hello (first time in the pending table). */
  pending: [peer: string, name: string]
}

export type TrustLists = { allow: string[], deny: string[] }
export interface TrustChange { allow?: string[], deny?: string[], remove?: string[] }

/** The lists after `change` (pure: the caller persists them before applying them). */
export function changedLists (lists: TrustLists, change: TrustChange): TrustLists {
  const allow = new Set(lists.allow)
  const deny = new Set(lists.deny)
  for (const p of change.remove ?? []) { allow.delete(p); deny.delete(p) }
  for (const p of change.allow ?? []) { deny.delete(p); allow.add(p) }
  for (const p of change.deny ?? []) { allow.delete(p); deny.add(p) }
  return { allow: [...allow].sort(), deny: [...deny].sort() }
}

/**
 * Who is a member of this node's mesh: the one question every part asks (`isMember`) before it
 * gives a peer prompts, takes its state or obeys it. Local lists (allow = admitted here, deny =
 * never, not even a connection) sit on top of the mode and the signed ledger. Checked at
 * connection (the gater: `allows`), by every protocol handler but admission/identify/ping, and
 * for every gossip message.
 */
export class TrustPolicy extends EventEmitter<TrustEvents> {
  private allow = new Set<string>()
  private deny = new Set<string>()
  private ledgerState?: LedgerState
  /** Peers that said hello and are no members (admission mode only). */
  readonly pending = new PendingPeers()
  readonly mode: MembershipMode

  constructor (lists: { allow?: string[], deny?: string[], mode?: MembershipMode } = {}) {
    super()
    // Tests and tools that build a host without saying so keep today's behaviour (anyone joins).
    this.mode = lists.mode ?? 'open'
    for (const p of lists.allow ?? []) this.allow.add(p)
    for (const p of lists.deny ?? []) this.deny.add(p)
  }

  /** The signed ledger, once loaded (admission state of this node's mesh). */
  get ledger (): LedgerState | undefined {
    return this.ledgerState
  }

  /**
   * Whether `peer` is a member of this node's mesh: a peer this node gives prompts to, takes
   * state (snapshots, models, deployments, leadership views) from and obeys (when it also holds
   * authority).
   */
  isMember (peer: string): boolean {
    if (this.deny.has(peer)) return false
    if (this.mode !== 'admission') return true
    return this.allow.has(peer) || this.ledgerState?.members.has(peer) === true
  }

  /** Whether `peer` may hold a connection at all (to say hello, be pending): not denied nor revoked. */
  allows (peer: string): boolean {
    if (this.deny.has(peer)) return false
    return this.ledgerState?.revoked.has(peer) !== true || this.isMember(peer)
  }

  state (peer: string): TrustState {
    if (!this.allows(peer)) return 'denied'
    if (this.isMember(peer)) return 'member'
    return this.pending.get(peer) != null ? 'pending' : 'none'
  }

  lists (): TrustLists {
    return { allow: [...this.allow].sort(), deny: [...this.deny].sort() }
  }

  /** Replaces the ledger; peers that lost membership are reported with `revoked`, new ones with `member`. */
  setLedger (next: LedgerState, known: string[] = []): void {
    this.transition(known, () => { this.ledgerState = next })
  }

  /** Applies a change of the local lists (persisted by the caller first). */
  update (change: TrustChange, known: string[] = []): void {
    const next = changedLists(this.lists(), change)
    this.transition([...known, ...(change.deny ?? [])], () => {
      this.allow = new Set(next.allow)
      this.deny = new Set(next.deny)
    })
  }

  /** Records a hello from a peer that is no member; emits `pending` the first time. */
  hello (peer: string, name: string, mesh: string): void {
    if (this.isMember(peer) || !this.allows(peer)) return
    if (this.pending.add(peer, name, mesh)) this.emit('pending', peer, this.pending.get(peer)?.name ?? '')
  }

  private transition (known: string[], change: () => void): void {
    const peers = new Set([...known, ...(this.ledgerState?.members.keys() ?? []), ...this.allow, ...this.pending.list().map(p => p.id)])
    const before = new Map([...peers].map(p => [p, { member: this.isMember(p), allowed: this.allows(p) }]))
    change()
    for (const p of this.ledgerState?.members.keys() ?? []) if (!before.has(p)) before.set(p, { member: false, allowed: true })
    for (const p of this.allow) if (!before.has(p)) before.set(p, { member: false, allowed: true })
    for (const [p, was] of before) {
      const member = this.isMember(p)
      if ((was.member && !member) || (was.allowed && !this.allows(p))) this.emit('revoked', p)
      else if (!was.member && member) {
        this.pending.delete(p)
        this.emit('member', p)
      }
    }
  }
}
