import { createLogger } from '../logger.js'
import type { Deployment } from './deployments.js'

/** What the merger needs of the deployment store: its merge (a synced write per newer record). */
export interface DeploymentMergeTarget {
  merge: (incoming: Deployment[], from: string) => Promise<number>
}

/**
 * Merges peers' gossiped deployments one merge at a time (issue 14). A peer's snapshot that
 * arrives while a merge runs replaces that peer's earlier waiting one (only the newest matters:
 * each snapshot carries the whole set), and a set identical to the last one merged from that
 * peer is skipped outright. One ~100 KB snapshot of 1,024 junk deployments re-sent while merges
 * ran concurrently (each a synced write and a re-published snapshot) once pinned two nodes' CPUs
 * for minutes.
 */
export class SnapshotMerger {
  /** Waiting sets, one per peer, oldest peer first. */
  private readonly waiting = new Map<string, Deployment[]>()
  /** Per peer: the digest of the last set merged, so an unchanged set costs one comparison. */
  private readonly lastMerged = new Map<string, string>()
  private running?: Promise<void>
  private readonly log = createLogger('node:snapshot-merge')
  /** Counted work (tests bound it): merges run, sets skipped as unchanged, sets replaced while waiting. */
  readonly stats = { merges: 0, unchanged: 0, superseded: 0, maxConcurrent: 0 }
  private active = 0

  constructor (private readonly target: DeploymentMergeTarget, private readonly maxPeers = 1024) {}

  /** Queues `deployments` from `peer`; returns at once (the merge runs in the background). */
  offer (peer: string, deployments: Deployment[]): void {
    if (this.lastMerged.get(peer) === digest(deployments)) {
      this.stats.unchanged++
      return
    }
    if (this.waiting.has(peer)) {
      this.stats.superseded++
      this.waiting.delete(peer)
    }
    this.waiting.set(peer, deployments)
    this.running ??= this.drain().finally(() => { this.running = undefined })
  }

  /** Resolves once nothing waits and no merge runs (tests, stop). */
  async idle (): Promise<void> {
    while (this.running != null) await this.running
  }

  /** Forgets what was merged from `peer` (it left or was evicted). */
  forget (peer: string): void {
    this.lastMerged.delete(peer)
    this.waiting.delete(peer)
  }

  private async drain (): Promise<void> {
    for (let next = this.waiting.entries().next(); next.done !== true; next = this.waiting.entries().next()) {
      const [peer, set] = next.value
      this.waiting.delete(peer)
      const d = digest(set)
      if (this.lastMerged.get(peer) === d) { this.stats.unchanged++; continue }
      this.stats.merges++
      this.stats.maxConcurrent = Math.max(this.stats.maxConcurrent, ++this.active)
      try {
        await this.target.merge(set, peer)
        this.lastMerged.delete(peer)
        this.lastMerged.set(peer, d)
        while (this.lastMerged.size > this.maxPeers) this.lastMerged.delete(this.lastMerged.keys().next().value as string)
      } catch (err) {
        // Not remembered as merged: the next snapshot of this peer tries again.
        this.log.warn('could not merge deployments', { peer, err })
      } finally {
        this.active--
      }
    }
  }
}

/** Identity of a set of records: their signatures and stamps, in order (a signature covers the rest). */
function digest (set: Deployment[]): string {
  let out = `${set.length}`
  for (const d of set) out += `|${String(d.sig)}@${String(d.updatedAt)}`
  return out
}
