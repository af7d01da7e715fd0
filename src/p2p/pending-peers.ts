import { cleanName } from './admission-messages.js'

/** A peer that said hello but is no member: shown as `pending` until a member admits it. */
export interface PendingPeer {
  id: string
  /** Its own name, control characters stripped. */
  name: string
  /** Its mesh id (its own, when it founded one). */
  mesh: string
  firstSeen: number
  lastSeen: number
}

/** Pending peers kept at most; a flood of identities evicts the oldest, never grows the table. */
export const MAX_PENDING_PEERS = 64

/** Bounded table of pending peers, least recently seen evicted first. */
export class PendingPeers {
  private readonly peers = new Map<string, PendingPeer>()

  constructor (private readonly max = MAX_PENDING_PEERS) {}

  /** Records a hello; true when the peer is new to the table. */
  add (id: string, name: string, mesh: string, now = Date.now()): boolean {
    const prev = this.peers.get(id)
    this.peers.delete(id)
    this.peers.set(id, { id, name: cleanName(name), mesh, firstSeen: prev?.firstSeen ?? now, lastSeen: now })
    while (this.peers.size > this.max) {
      const oldest = this.peers.keys().next().value
      if (oldest == null) break
      this.peers.delete(oldest)
    }
    return prev == null
  }

  get (id: string): PendingPeer | undefined { return this.peers.get(id) }
  delete (id: string): void { this.peers.delete(id) }
  list (): PendingPeer[] { return [...this.peers.values()] }
}
