import { EventEmitter } from 'node:events'

export type TrustState = 'allowed' | 'denied' | 'open'

export interface TrustEvents {
  /** A peer lost its right to talk to this node: its connections are closed. */
  revoked: [peer: string]
  /** A peer that is not trusted tried a protocol; its stream was reset. */
  refused: [peer: string, protocol: string]
}

/**
 * Who may talk to this node. A denied peer never may; when the allow list is not empty, only
 * the peers on it may. Checked at connection (the libp2p connection gater), by every protocol
 * handler, and for every gossip message (which other peers may relay).
 */
export class TrustPolicy extends EventEmitter<TrustEvents> {
  private readonly allow = new Set<string>()
  private readonly deny = new Set<string>()

  constructor (lists: { allow?: string[], deny?: string[] } = {}) {
    super()
    for (const p of lists.allow ?? []) this.allow.add(p)
    for (const p of lists.deny ?? []) this.deny.add(p)
  }

  allows (peer: string): boolean {
    if (this.deny.has(peer)) return false
    return this.allow.size === 0 || this.allow.has(peer)
  }

  state (peer: string): TrustState {
    if (this.deny.has(peer)) return 'denied'
    if (this.allow.has(peer)) return 'allowed'
    return this.allow.size === 0 ? 'open' : 'denied'
  }

  lists (): { allow: string[], deny: string[] } {
    return { allow: [...this.allow].sort(), deny: [...this.deny].sort() }
  }

  /** Applies a change; peers that lost access are reported with `revoked`. */
  update (change: { allow?: string[], deny?: string[], remove?: string[] }, known: string[] = []): void {
    const before = new Map(known.map(p => [p, this.allows(p)]))
    for (const p of change.remove ?? []) { this.allow.delete(p); this.deny.delete(p) }
    for (const p of change.allow ?? []) { this.deny.delete(p); this.allow.add(p) }
    for (const p of change.deny ?? []) { this.allow.delete(p); this.deny.add(p) }
    for (const [p, was] of before) if (was && !this.allows(p)) this.emit('revoked', p)
    for (const p of change.deny ?? []) if (!before.has(p)) this.emit('revoked', p)
  }
}
