import type { LeaderCertificate } from '../../p2p/index.js'

/**
 * How long a certificate short of quorum only because some of its voters are not yet in this
 * node's view is kept and checked again. A node that just restarted hears a leader's claim before
 * it hears the voters; refusing the claim then would leave it leaderless (and standing for
 * election against a live leader) until the claim is fetched again.
 */
export const PENDING_CERT_MS = 10_000

export interface PendingCertificate {
  /** The peer the certificate was fetched from (audited if it never proves). */
  peer: string
  cert: LeaderCertificate
  until: number
  /** The group's view (whose votes count) the certificate was last checked against. */
  view: string
}

/**
 * At most one waiting certificate per group, the highest term. Checks are local (no fetch) and
 * run only when the view changed since the last one, so a held claim costs nothing while idle.
 */
export class PendingCertificates {
  private readonly byGroup = new Map<string, PendingCertificate>()

  /** Holds `cert` unless a higher term is held already; returns whether it is held. */
  hold (peer: string, cert: LeaderCertificate, view: string, now: number): boolean {
    const held = this.byGroup.get(cert.group)
    if (held != null && held.cert.term > cert.term) return false
    this.byGroup.set(cert.group, { peer, cert, view, until: now + PENDING_CERT_MS })
    return true
  }

  /** A certificate of `term` for `group` proved: nothing to wait for (a higher term held stays). */
  settled (group: string, term: number): void {
    if (this.byGroup.get(group)?.cert.term === term) this.byGroup.delete(group)
  }

  /**
   * What to check now: held certificates whose view changed (`expired` false, `view` updated) and
   * those whose wait is over (`expired` true, dropped).
   */
  due (now: number, viewOf: (group: string) => string): Array<{ entry: PendingCertificate, expired: boolean }> {
    const out: Array<{ entry: PendingCertificate, expired: boolean }> = []
    for (const [group, p] of [...this.byGroup]) {
      if (now >= p.until) {
        this.byGroup.delete(group)
        out.push({ entry: p, expired: true })
        continue
      }
      const view = viewOf(group)
      if (view === p.view) continue
      p.view = view
      out.push({ entry: p, expired: false })
    }
    return out
  }
}
