import { peerIdFromString } from '@libp2p/peer-id'
import { multiaddr } from '@multiformats/multiaddr'
import type { PrivateKey } from '@libp2p/interface'
import {
  AdmissionService, TrustPolicy, changedLists, createInvite, decodeInvite, foundMesh, reachableAddresses, replay, stripControl,
  type Host, type LedgerState, type MembershipMode, type Statement, type TrustChange, type TrustLists
} from '../p2p/index.js'
import { BadRequestError, ShepherdError, storageError } from '../errors.js'
import { createLogger } from '../logger.js'
import { TokenBuckets } from '../p2p/token-buckets.js'
import type { Store } from './store.js'

/** One member, pending peer or revoked peer as the API shows it. */
export interface MemberView {
  id: string
  name: string
  status: 'member' | 'pending' | 'revoked' | 'denied'
  /** ISO 8601: admitted at (members), first hello (pending), revoked at. */
  since: string | null
  /** Who admitted it (members). */
  by: string | null
  connected: boolean
}

/** A name matched several peers: the caller must say which one (409, listing them). */
export class AmbiguousPeerError extends ShepherdError {
  constructor (name: string, readonly matches: Array<{ id: string, name: string }>) {
    super(`'${name}' names ${matches.length} peers: ${matches.map(m => `${m.id} (${m.name})`).join(', ')}; use the id`, { code: 'ambiguous_peer', status: 409 })
  }
}

/** The id is not a peer id at all (a typo, an injected string): 400, nothing applied. */
export function checkPeerId (id: string): void {
  try {
    peerIdFromString(id)
  } catch {
    throw new BadRequestError(`'${stripControl(id).slice(0, 80)}' is not a peer id`)
  }
}

const LEDGER_TABLE = 'ledger'
const INVITES_TABLE = 'invites_used'

/**
 * Membership of this node: the mode, the signed ledger (persisted in the `ledger` sublevel; the
 * current mesh id in `meta/membership` is the commit point of a change), the local allow/deny
 * lists, pending peers, admission and invites. Every change is written before it takes effect.
 */
export class Membership {
  service?: AdmissionService
  private readonly log = createLogger('node:membership')
  /** Audit entries per peer: a flood of bad frames or refused streams cannot fill the log. */
  private readonly auditGuard = new TokenBuckets(0.2, 5)
  /**
   * All peers together: fresh peer ids cost nothing, so a per-peer limit alone lets one machine
   * cycling ids write ~25 entries a second and wash the real ones out of the bounded audit log.
   * One every 5 s with a burst of 30 is at most ~17k a day (the log keeps 100k by default: days of
   * a flood); what is dropped is counted in the next entry.
   */
  private readonly auditAll = new TokenBuckets(0.2, 30)
  private auditSuppressed = 0
  /** Invite secrets (sha256) used or being used by this process: single use holds under concurrency. */
  private readonly invitesClaimed = new Set<string>()

  private constructor (readonly trust: TrustPolicy, readonly mode: MembershipMode, private readonly store: Store, private readonly key: PrivateKey, private readonly selfId: string, private readonly name: string) {}

  /** Loads (or, at first start, founds) the ledger and the saved lists; nothing is connected yet. */
  static async open (opts: { store: Store, key: PrivateKey, selfId: string, name: string, mode: MembershipMode, allow: string[], deny: string[] }): Promise<Membership> {
    const saved = await opts.store.getMeta<TrustLists>('trust')
    const trust = new TrustPolicy({ mode: opts.mode, allow: [...opts.allow, ...(saved?.allow ?? [])], deny: [...opts.deny, ...(saved?.deny ?? [])] })
    const m = new Membership(trust, opts.mode, opts.store, opts.key, opts.selfId, opts.name)
    const head = await opts.store.getMeta<{ mesh: string }>('membership')
    const statements = await opts.store.table<Statement>(LEDGER_TABLE).values()
    let ledger = head != null ? replay(statements, head.mesh) : undefined
    if (ledger == null) {
      ledger = await foundMesh(opts.key, opts.selfId, opts.name)
      await m.save(ledger, undefined)
      m.log.info('founded a new mesh', { mesh: ledger.mesh })
    }
    trust.setLedger(ledger)
    await m.pruneInvites()
    trust.on('refused', (peer, protocol) => { m.audit(peer, 'untrusted_peer', `${protocol}: stream refused (not a member)`) })
    return m
  }

  /** Writes a new ledger: new statements, then the head (commit point), then the dropped ones. */
  async save (next: LedgerState, prev: LedgerState | undefined): Promise<void> {
    const table = this.store.table<Statement>(LEDGER_TABLE)
    try {
      for (const [id, s] of next.statements) if (prev?.statements.has(id) !== true) await table.put(id, s, { sync: true })
      if (prev?.mesh !== next.mesh) await this.store.putMeta('membership', { mesh: next.mesh })
      for (const id of prev?.statements.keys() ?? []) if (!next.statements.has(id)) await table.del(id)
    } catch (err) {
      throw storageError(err, 'the membership ledger could not be saved')
    }
  }

  /** Forgets used invites past their expiry (an expired token is refused before it is looked up). */
  async pruneInvites (now = Date.now()): Promise<number> {
    const used = this.store.table<{ expiresAt: number }>(INVITES_TABLE)
    let n = 0
    try {
      for (const [hash, rec] of await used.entries()) if (rec.expiresAt < now) { await used.del(hash); n++ }
    } catch (err) {
      this.log.warn('could not prune used invites', { err })
    }
    return n
  }

  /** Starts the admission protocol on the started host. */
  async start (host: Host): Promise<AdmissionService> {
    this.service = new AdmissionService(host, {
      key: this.key,
      selfId: this.selfId,
      name: () => this.name,
      trust: this.trust,
      backend: {
        save: async (next, prev) => { await this.save(next, prev) },
        audit: (peer, detail) => { this.audit(peer, 'admission', detail) },
        useInvite: async (hash, expiresAt) => {
          // Claimed in memory before the first await: two join streams presenting one token at
          // once would otherwise both read "unused" and both be admitted.
          if (this.invitesClaimed.has(hash)) return false
          this.invitesClaimed.add(hash)
          const used = this.store.table<{ expiresAt: number }>(INVITES_TABLE)
          try {
            if (await used.get(hash) != null) return false
            await used.put(hash, { expiresAt }, { sync: true })
          } catch (err) {
            // Not marked used: the token may be presented again once the store writes.
            this.invitesClaimed.delete(hash)
            throw storageError(err, 'the invite could not be marked used')
          }
          return true
        }
      }
    })
    await this.service.start()
    return this.service
  }

  async stop (): Promise<void> {
    await this.service?.stop()
  }

  /** Rate-limited audit entry (per peer, and for all peers together; see `auditAll`). */
  audit (peer: string, kind: string, detail: string): void {
    if (!this.auditGuard.take(peer)) return
    if (!this.auditAll.take('all')) { this.auditSuppressed++; return }
    const suppressed = this.auditSuppressed
    this.auditSuppressed = 0
    const note = suppressed > 0 ? ` (${suppressed} more refusals not recorded: audit rate limit)` : ''
    void this.store.appendAudit({ kind, peer, detail: detail + note, verdict: 'rejected' }).catch(() => {})
  }

  /** Members, pending and revoked peers, newest first within each. */
  list (connected: (id: string) => boolean): MemberView[] {
    const l = this.trust.ledger
    const out: MemberView[] = []
    for (const m of l?.members.values() ?? []) out.push({ id: m.id, name: m.name, status: this.trust.isMember(m.id) ? 'member' : 'denied', since: new Date(m.since).toISOString(), by: m.by, connected: m.id === this.selfId || connected(m.id) })
    for (const id of this.trust.lists().allow) if (l?.members.has(id) !== true) out.push({ id, name: '', status: this.trust.isMember(id) ? 'member' : 'denied', since: null, by: this.selfId, connected: connected(id) })
    for (const p of this.trust.pending.list()) if (!this.trust.isMember(p.id)) out.push({ id: p.id, name: p.name, status: 'pending', since: new Date(p.firstSeen).toISOString(), by: null, connected: connected(p.id) })
    for (const [id, at] of l?.revoked ?? []) out.push({ id, name: '', status: 'revoked', since: new Date(at).toISOString(), by: null, connected: connected(id) })
    return out
  }

  /** The peer a name or id names: an id as is; a name must match exactly one known peer. */
  resolve (nameOrId: string, known: Array<{ id: string, name: string }>): string {
    const all = new Map<string, string>()
    for (const p of known) all.set(p.id, p.name)
    for (const p of this.trust.pending.list()) all.set(p.id, p.name)
    for (const m of this.trust.ledger?.members.values() ?? []) all.set(m.id, m.name)
    if (all.has(nameOrId)) return nameOrId
    const matches = [...all].filter(([, name]) => name === nameOrId).map(([id, name]) => ({ id, name }))
    if (matches.length === 1) return matches[0].id
    if (matches.length > 1) throw new AmbiguousPeerError(nameOrId, matches)
    checkPeerId(nameOrId)
    return nameOrId
  }

  /** Admits a peer (signed, saved, pushed); also lifts a local deny. */
  async admit (id: string): Promise<void> {
    checkPeerId(id)
    if (this.trust.lists().deny.includes(id)) await this.updateLists({ remove: [id] })
    const name = this.trust.pending.get(id)?.name ?? ''
    await this.requireService().admit(id, name)
  }

  /** Revokes a peer: a signed revoke (pushed to members) and a local deny; it is cut off at once. */
  async revoke (id: string): Promise<void> {
    checkPeerId(id)
    if (id === this.selfId) throw new BadRequestError('a node cannot revoke itself; revoke it from another member')
    await this.updateLists({ deny: [id] })
    if (this.trust.ledger?.members.has(this.selfId) === true) await this.requireService().revoke(id)
  }

  /** Changes the local lists: every id checked first (400, nothing applied), saved, then applied. */
  async updateLists (change: TrustChange): Promise<TrustLists> {
    for (const id of [...change.allow ?? [], ...change.deny ?? [], ...change.remove ?? []]) checkPeerId(id)
    const next = changedLists(this.trust.lists(), change)
    try {
      await this.store.putMeta('trust', next)
    } catch (err) {
      throw storageError(err, 'the trust lists could not be saved')
    }
    this.trust.update(change)
    return this.trust.lists()
  }

  /** A single-use invite token to this mesh, signed by this node, valid for `ttlMs`. */
  async invite (ttlMs: number, addresses: string[]): Promise<{ token: string, expiresAt: string }> {
    const l = this.trust.ledger
    if (l == null || !l.members.has(this.selfId)) throw new ShepherdError('this node is no member of its mesh: it cannot invite', { code: 'not_a_member', status: 409 })
    const token = await createInvite(this.key, { mesh: l.mesh, inviter: this.selfId, addrs: reachableAddresses(addresses).slice(0, 16), ttlMs })
    return { token, expiresAt: new Date(decodeInvite(token)?.expiresAt ?? 0).toISOString() }
  }

  /**
   * Joins the mesh of an invite at start: dials the inviter at the token's addresses, presents the
   * token and adopts the ledger it answers with (checked against the inviter the token names).
   * A node that is a member of that mesh already (a restart with the same token) does nothing.
   * The token itself is never logged or put in an error.
   */
  async join (raw: string, host: Host, timeoutMs = 20_000): Promise<void> {
    const token = decodeInvite(raw.trim())
    if (token == null) throw new BadRequestError('the --join value is not an invite token (shepherd-mesh invite prints one)')
    const l = this.trust.ledger
    if (l?.mesh === token.mesh && l.members.has(this.selfId)) return
    const service = this.requireService()
    const deadline = Date.now() + timeoutMs
    let last: unknown
    while (Date.now() < deadline) {
      for (const a of token.addrs) {
        try {
          const addr = a.includes('/p2p/') ? a : `${a}/p2p/${token.inviter}`
          await host.dial(multiaddr(addr), { signal: AbortSignal.timeout(3000) })
          if (await service.join(token) === 'adopted') {
            this.log.info('joined a mesh with an invite', { mesh: token.mesh, inviter: token.inviter })
            return
          }
          throw new ShepherdError('the inviter answered with a ledger that does not admit this node', { code: 'invite_not_honoured', status: 502 })
        } catch (err) {
          // A refusal by the inviter (expired, used, not its invite) is final; a dial failure is retried.
          if (err instanceof ShepherdError && err.status < 500) throw err
          last = err
        }
      }
      await new Promise(resolve => setTimeout(resolve, 500))
    }
    throw new ShepherdError(`could not reach the inviter ${token.inviter} to join its mesh: ${String((last as Error)?.message ?? last)}`, { code: 'inviter_unreachable', status: 503 })
  }

  private requireService (): AdmissionService {
    if (this.service == null) throw new ShepherdError('the node is not started', { code: 'not_started', status: 503 })
    return this.service
  }
}
