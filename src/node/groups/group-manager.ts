import { EventEmitter } from 'node:events'
import type { PrivateKey } from '@libp2p/interface'
import { MAX_TERM, VoteService, isLeaderCertificate, requestVote, signVote, verifyVote, type CommandEnvelope, type LeaderCertificate, type Mesh, type VoteRequestFrame, type VoteResponseFrame } from '../../p2p/index.js'
import { createLogger } from '../../logger.js'
import { AUTHORITY_CODES, BadRequestError, storageError } from '../../errors.js'
import type { Store } from '../store.js'
import { AuditLimiter } from '../audit-limiter.js'
import { loadMembership, saveMembership } from './membership-store.js'
import { verifyCertificate, type CertificateVerdict } from './certificate.js'
import { PENDING_CERT_MS, PendingCertificates } from './pending-certificates.js'
import {
  initialGroupState, onCertificate, onMembers, onTick, onVoteRefused, onVoteReply, onVoteRequest, shownTerm,
  type ElectionTimings, type GroupState, type Step
} from './election.js'

export interface GroupMember {
  id: string
  name: string
  status: 'alive' | 'suspect' | 'dead' | 'left'
  self: boolean
}

export interface GroupView {
  name: string
  leader: string | null
  term: number
  /** Whether this node is a member. */
  joined: boolean
  members: GroupMember[]
}

export interface GroupManagerOptions extends ElectionTimings {
  /** No candidacy before this long after start, so a restarted node hears the current leader first. */
  startupGraceMs: number
  /**
   * A node that expects peers (it knows some, or has bootstrap addresses) waits until it has
   * heard one, or this long, before it may stand: a restarted node must not outbid a live leader
   * just because discovery was slow.
   */
  quietStartMs: number
  expectPeers: boolean
  tickMs: number
}

/** What the manager needs besides the store: who is a member, and the key its votes are signed with. */
export interface GroupAuthorityDeps {
  key: PrivateKey
  /** TrustPolicy.isMember: only members vote, stand, and count in certificates. */
  isMember: (peer: string) => boolean
}

export interface GroupEvents {
  /** Leadership of a group changed (as this node sees it). */
  leader: [group: string, leader: string | null, term: number]
}

export type AuthorityVerdict = { ok: true } | { ok: false, reason: string }

const ELECTION_KEY = (g: string): string => `election:${g}`
/** Where terms were kept before elections had votes: read once, as the floor of the term. */
const LEGACY_TERM_KEY = (g: string): string => `term:${g}`
/** Groups this node keeps election state for, its own included. */
const MAX_TRACKED_GROUPS = 256
const MAX_GROUPS = 32
/** A claim (peer, group, term, leader) whose proof was fetched is not fetched again this soon. */
const REFETCH_MS = 5000
/** Certificate fetches at once: heartbeats must not turn into a stream storm. */
const MAX_FETCHES = 8
/** One audit entry per (kind, peer, group) per window: a peer repeating a claim every heartbeat fills nothing. */
const AUDIT_WINDOW_MS = 10_000
const VOTE_TIMEOUT_MS = 2000
/**
 * A vote or certificate request unanswered this long is also sent on a new connection (see
 * `requestVote`): after a partition heals, the old connections may sit in TCP's retransmission
 * backoff for seconds. A LAN round trip is a few ms; a busy node answers well within this.
 */
const VOTE_HEDGE_MS = 600

interface Persisted { term: number, votedFor: string | null, cert: LeaderCertificate | null }

/**
 * Swarm groups and their leaders. Membership is gossiped (heartbeats carry each node's groups);
 * heartbeats also carry each node's view of its groups' leadership, but a view is only a hint:
 * this node adopts a leader from the certificate it fetches (`/shepherd/vote/1.0.0`) and checks.
 * Elections (election.ts) request votes over the same protocol. Every term, vote and certificate
 * is written (sync) before it is used or answered; a failed write leaves memory as it was.
 */
export class GroupManager extends EventEmitter<GroupEvents> {
  private readonly states = new Map<string, GroupState>()
  private readonly locks = new Map<string, Promise<unknown>>()
  private readonly fetched = new Map<string, number>()
  /** Per group this node is in: an unproven certificate waiting for its voters to be heard. */
  private readonly pending = new PendingCertificates()
  private readonly audits = new AuditLimiter(AUDIT_WINDOW_MS)
  private fetches = 0
  private timer?: NodeJS.Timeout
  private ticking = false
  private readonly startedAt = Date.now()
  private readonly log = createLogger('node:groups')
  private votes?: VoteService
  private mesh!: Mesh<any>

  private constructor (
    private readonly store: Store,
    private readonly opts: GroupManagerOptions,
    private readonly self: () => string,
    private readonly selfName: string,
    private readonly auth: GroupAuthorityDeps
  ) {
    super()
  }

  /** Loads persisted election state and the groups joined or left through the API. */
  static async create (store: Store, configured: string[], opts: GroupManagerOptions, self: () => string, selfName: string, auth: GroupAuthorityDeps): Promise<{ manager: GroupManager, groups: string[] }> {
    const m = new GroupManager(store, opts, self, selfName, auth)
    const groups = await loadMembership(store, configured)
    for (const g of groups) await m.ensure(g)
    return { manager: m, groups }
  }

  /** Follows `mesh`, which must announce the groups `create` returned. */
  attach (mesh: Mesh<any>): void {
    this.mesh = mesh
  }

  async start (): Promise<void> {
    this.mesh.on('peer:lead', (peer, lead) => {
      for (const [group, term, leader] of lead) this.onView(peer, group, term, leader)
    })
    this.votes = new VoteService(this.mesh.libp2p)
    await this.votes.serve(async (req, peer) => await this.answer(req, peer), {
      onViolation: (peer, reason) => { this.audit('wire_violation', peer, '', `/shepherd/vote/1.0.0: ${reason}`) }
    })
    this.timer = setInterval(() => { void this.tick() }, this.opts.tickMs)
    this.timer.unref()
  }

  async stop (): Promise<void> {
    clearInterval(this.timer)
    await this.votes?.stop()
  }

  /** Runs `fn` alone for `group`: state changes wait on their writes, so they must not interleave. */
  private async locked<T> (group: string, fn: () => Promise<T>): Promise<T> {
    const prev = this.locks.get(group) ?? Promise.resolve()
    const run = prev.then(fn, fn)
    const tail = run.catch(() => {})
    this.locks.set(group, tail)
    void tail.then(() => { if (this.locks.get(group) === tail) this.locks.delete(group) })
    return await run
  }

  private async ensure (group: string): Promise<GroupState | undefined> {
    let s = this.states.get(group)
    if (s == null) {
      // Peers name groups freely; keep state for a bounded number (own groups always fit).
      if (this.states.size >= MAX_TRACKED_GROUPS && !(this.mesh?.groups.includes(group) ?? true)) return undefined
      const saved = await this.store.getMeta<any>(ELECTION_KEY(group)) as Persisted | undefined
      const legacy = saved == null ? (await this.store.getMeta<number>(LEGACY_TERM_KEY(group))) ?? 0 : 0
      const cert = saved?.cert != null && isLeaderCertificate(saved.cert) ? saved.cert : null
      s = this.states.get(group) ?? initialGroupState(group, { term: Math.min(MAX_TERM, saved?.term ?? legacy), votedFor: saved?.votedFor ?? null, cert }, Date.now())
      this.states.set(group, s)
    }
    return s
  }

  /**
   * Makes `step` current: persists first when it asks to (a failed write keeps the old state and
   * returns false), then announces a leader change. Call inside `locked`.
   */
  private async apply (prev: GroupState, step: Step): Promise<boolean> {
    if (step.state === prev && step.actions.length === 0) return true
    if (step.actions.some(a => a.type === 'persist')) {
      const s = step.state
      try {
        await this.store.putMeta(ELECTION_KEY(s.group), { term: s.term, votedFor: s.votedFor, cert: s.cert as any })
      } catch (err) {
        this.log.error('cannot persist election state; nothing changed', { group: s.group, err: storageError(err, 'election state') })
        return false
      }
    }
    this.states.set(step.state.group, step.state)
    for (const a of step.actions) {
      if (a.type === 'leader') {
        this.log.info('leader', { group: step.state.group, leader: a.leader, term: a.term })
        this.emit('leader', step.state.group, a.leader, a.term)
        this.mesh.heartbeatNow()
      } else if (a.type === 'request_votes') {
        void this.campaign(step.state.group, a.term, a.to).catch(err => { this.log.warn('campaign failed', { err }) })
      }
    }
    return true
  }

  /** Live members of `group` that are members of the mesh, self included when joined. */
  private members (group: string): string[] {
    const ids = this.mesh.peers().filter(p => p.status === 'alive' && p.groups.includes(group) && this.auth.isMember(p.id)).map(p => p.id)
    if (this.mesh.groups.includes(group)) ids.push(this.self())
    return ids
  }

  private inGroup (peer: string, group: string): boolean {
    if (peer === this.self()) return this.mesh.groups.includes(group)
    return this.mesh.table.get(peer)?.groups.includes(group) === true
  }

  private async tick (): Promise<void> {
    if (this.ticking) return
    this.ticking = true
    try {
      const now = Date.now()
      for (const p of this.mesh.peers()) for (const g of p.groups) if (!this.states.has(g)) await this.ensure(g)
      const elapsed = now - this.startedAt
      // Heard a member (a peer still being admitted does not count): until then this node would only elect itself alone.
      const heard = this.mesh.peers().some(p => this.auth.isMember(p.id))
      const canStand = elapsed >= this.opts.startupGraceMs && (!this.opts.expectPeers || heard || elapsed >= this.opts.quietStartMs)
      await this.recheckPending(now)
      for (const group of [...this.states.keys()]) {
        await this.locked(group, async () => {
          const s0 = this.states.get(group)!
          const s = onMembers(s0, this.members(group), now)
          if (s !== s0) this.states.set(group, s)
          await this.apply(s, onTick(s, this.self(), now, this.opts, canStand))
        })
      }
    } catch (err) {
      this.log.warn('election tick failed', { err })
    } finally {
      this.ticking = false
    }
  }

  /** Asks `to` for votes at `term`, counting this node's own vote first. */
  private async campaign (group: string, term: number, to: string[]): Promise<void> {
    const self = this.self()
    this.log.info('standing for election', { group, term, electorate: to.length + 1 })
    const own = await signVote(this.auth.key, self, { group, term, candidate: self })
    await this.locked(group, async () => { const s = this.states.get(group)!; await this.apply(s, onVoteReply(s, self, own)) })
    await Promise.all(to.map(async peer => {
      try {
        const reply = await requestVote(this.mesh.libp2p, peer, { v: 1, t: 'vote', group, term }, { timeoutMs: VOTE_TIMEOUT_MS, hedgeMs: VOTE_HEDGE_MS })
        if (reply.t !== 'vote') {
          await this.refusedBy(group, term, peer)
          return
        }
        const v = reply.vote
        if (v.voter !== peer || v.group !== group || v.term !== term || v.candidate !== self || !await verifyVote(v)) {
          this.audit(AUTHORITY_CODES.invalidCertificate, peer, group, 'a vote reply that is not the voter\'s signed vote for this election')
          await this.refusedBy(group, term, peer)
          return
        }
        await this.locked(group, async () => { const s = this.states.get(group)!; await this.apply(s, onVoteReply(s, self, v)) })
      } catch (err) {
        this.log.debug('no vote', { group, peer, err })
        await this.refusedBy(group, term, peer).catch(() => {})
      }
    }))
  }

  private async refusedBy (group: string, term: number, voter: string): Promise<void> {
    await this.locked(group, async () => {
      const s = this.states.get(group)!
      await this.apply(s, onVoteRefused(s, this.self(), { term, voter }, Date.now(), this.opts))
    })
  }

  /** Answers a vote or certificate request from `peer`. */
  private async answer (req: VoteRequestFrame, peer: string): Promise<VoteResponseFrame> {
    try {
      if (req.t === 'cert') return { t: 'cert', cert: this.states.get(req.group)?.cert ?? null }
      if (!this.mesh.groups.includes(req.group)) return { t: 'refused', code: 'not_in_group', message: `this node is not in group '${req.group}'` }
      return await this.locked(req.group, async () => {
        const s = await this.ensure(req.group)
        if (s == null) return { t: 'refused' as const, code: 'not_in_group', message: 'unknown group' }
        const d = onVoteRequest(s, this.self(), { term: req.term, candidate: peer, candidateOk: this.auth.isMember(peer) && this.inGroup(peer, req.group) })
        if (!d.grant) {
          this.audit(AUTHORITY_CODES.voteRefused, peer, req.group, `${d.code}: ${d.reason}`)
          return { t: 'refused' as const, code: d.code!, message: d.reason! }
        }
        // The vote is on disk before it leaves: a restart can never vote twice in one term.
        if (!await this.apply(s, d)) return { t: 'refused' as const, code: 'insufficient_storage', message: 'this node cannot record its vote' }
        this.log.info('voted', { group: req.group, term: req.term, candidate: peer })
        return { t: 'vote' as const, vote: await signVote(this.auth.key, this.self(), { group: req.group, term: req.term, candidate: peer }) }
      })
    } catch (err) {
      this.log.warn('vote request failed', { err })
      return { t: 'refused', code: 'internal_error', message: 'the vote could not be decided' }
    }
  }

  /** A heartbeat's claim: never adopted as is; its proof is fetched from the announcer and checked. */
  private onView (peer: string, group: string, term: number, leader: string): void {
    if (!Number.isSafeInteger(term) || term > MAX_TERM) {
      this.audit(AUTHORITY_CODES.termOutOfBounds, peer, group, `announced term ${term} for leader ${leader.slice(0, 64)}; terms stop at ${MAX_TERM}`)
      return
    }
    const s = this.states.get(group)
    if (s != null) {
      const held = shownTerm(s)
      if (term < held || (term === held && (leader === s.leader || (s.leader != null && leader > s.leader)))) return
    } else if (this.states.size >= MAX_TRACKED_GROUPS) return
    const key = `${peer}|${group}|${term}|${leader}`
    const now = Date.now()
    if ((this.fetched.get(key) ?? 0) > now - REFETCH_MS || this.fetches >= MAX_FETCHES) return
    if (this.fetched.size > 4096) this.fetched.clear()
    this.fetched.set(key, now)
    this.fetches++
    void this.fetchProof(peer, group).catch(err => { this.log.debug('certificate fetch failed', { peer, group, err }) }).finally(() => { this.fetches-- })
  }

  private async fetchProof (peer: string, group: string): Promise<void> {
    const reply = await requestVote(this.mesh.libp2p, peer, { v: 1, t: 'cert', group }, { timeoutMs: VOTE_TIMEOUT_MS, hedgeMs: VOTE_HEDGE_MS })
    if (reply.t !== 'cert') return
    if (reply.cert == null) {
      this.audit(AUTHORITY_CODES.invalidCertificate, peer, group, 'a leadership claim with no certificate')
      return
    }
    await this.consider(peer, reply.cert)
  }

  /** Whose votes count, as this node sees `group` now (a string, so a change is cheap to notice). */
  private viewKey (group: string): string {
    return this.members(group).sort().join(',')
  }

  private async check (cert: LeaderCertificate): Promise<CertificateVerdict> {
    const group = cert.group
    return await verifyCertificate(cert, {
      isMember: p => p === this.self() || this.auth.isMember(p),
      knownInGroup: p => this.inGroup(p, group),
      viewSize: this.members(group).length
    })
  }

  /** Held certificates are checked again when their group's view changed; expired ones are audited. */
  private async recheckPending (now: number): Promise<void> {
    for (const { entry: p, expired } of this.pending.due(now, g => this.viewKey(g))) {
      const group = p.cert.group
      const verdict = await this.check(p.cert)
      if (verdict.ok) {
        // By term: a higher one held while this check ran stays held.
        this.pending.settled(group, p.cert.term)
        await this.locked(group, async () => {
          const s = this.states.get(group)!
          await this.apply(s, onCertificate(s, p.cert, { proven: true, rival: false }, Date.now()))
        })
      } else if (expired) {
        this.audit(AUTHORITY_CODES.invalidCertificate, p.peer, group, `term ${p.cert.term}, leader ${p.cert.leader}: ${verdict.reason} (after ${PENDING_CERT_MS} ms)`)
      }
    }
  }

  /** Checks a certificate against this node's view and feeds the verdict to the state machine. */
  async consider (peer: string, cert: LeaderCertificate): Promise<void> {
    const group = cert.group
    if (await this.ensure(group) == null) return
    // The view is read before the (async) check: a member heard during it changes the key, so the check runs again.
    const view = this.viewKey(group)
    const verdict = await this.check(cert)
    // Some voters are not in this node's view yet: wait for them rather than refuse an honest leader.
    const unheardVoters = !verdict.ok && verdict.code === 'no_quorum' && verdict.voters.length < cert.votes.length
    if (unheardVoters && this.mesh.groups.includes(group) && cert.term > shownTerm(this.states.get(group)!) && this.pending.hold(peer, cert, view, Date.now())) return
    if (verdict.ok) this.pending.settled(group, cert.term)
    if (!verdict.ok) {
      const code = verdict.code === 'term_out_of_bounds' ? AUTHORITY_CODES.termOutOfBounds : AUTHORITY_CODES.invalidCertificate
      this.audit(code, peer, group, `term ${cert.term}, leader ${cert.leader}: ${verdict.reason}`)
    }
    const rival = !verdict.ok && verdict.code === 'no_quorum' && verdict.voters.length > 0 && verdict.voters.length === cert.votes.length
    await this.locked(group, async () => {
      const s = this.states.get(group)!
      await this.apply(s, onCertificate(s, cert, { proven: verdict.ok, rival }, Date.now()))
    })
  }

  /**
   * The executor's authority check for a remote command: its issuer must be a member and the
   * proven leader (a checked certificate) of the command's group at exactly the command's term.
   */
  authorize (env: Pick<CommandEnvelope, 'issuer' | 'group' | 'term'>): AuthorityVerdict {
    const code = AUTHORITY_CODES.notProvenLeader
    if (!this.mesh.groups.includes(env.group)) return { ok: false, reason: `${code}: this node is not in group '${env.group}'` }
    if (!this.auth.isMember(env.issuer)) return { ok: false, reason: `${code}: the issuer is not a member of the mesh` }
    const s = this.states.get(env.group)
    const cert = s?.cert
    if (s == null || cert == null || s.leader !== env.issuer || cert.leader !== env.issuer) return { ok: false, reason: `${code}: the issuer holds no proven leadership of '${env.group}'` }
    if (cert.term !== env.term) return { ok: false, reason: `${code}: the proven leadership of '${env.group}' is at term ${cert.term}, not ${env.term}` }
    return { ok: true }
  }

  /** Leadership entries for the heartbeat: this node's view of the groups it is in. */
  leadership (): Array<[string, number, string]> {
    const out: Array<[string, number, string]> = []
    for (const g of this.mesh.groups) {
      const s = this.states.get(g)
      if (s?.leader != null && s.cert != null) out.push([g, s.cert.term, s.leader])
    }
    return out
  }

  /** The current leader and its proven term, as this node sees it. */
  leaderOf (group: string): { leader: string | null, term: number } {
    const s = this.states.get(group)
    return { leader: s?.leader ?? null, term: s != null ? shownTerm(s) : 0 }
  }

  /** The certificate this node holds for `group`, if any. */
  certificate (group: string): LeaderCertificate | null {
    return this.states.get(group)?.cert ?? null
  }

  isLeader (group: string): boolean {
    const s = this.states.get(group)
    return s != null && s.leader === this.self() && s.cert?.leader === this.self() && s.members.includes(this.self())
  }

  /** Joins `group`: on disk first (507 `insufficient_storage` when the disk is full), then announced. */
  async join (group: string): Promise<void> {
    if (this.mesh.groups.includes(group)) return
    // Heartbeats carry at most MAX_GROUPS groups; one more would make this node invalid on the wire.
    if (this.mesh.groups.length >= MAX_GROUPS) throw new BadRequestError(`a node can be in at most ${MAX_GROUPS} groups`, 'name', 'too_many_groups')
    await saveMembership(this.store, group, 'join')
    await this.ensure(group)
    this.mesh.setGroups([...this.mesh.groups, group])
  }

  async leave (group: string): Promise<void> {
    if (!this.mesh.groups.includes(group)) return
    await saveMembership(this.store, group, 'leave')
    this.mesh.setGroups(this.mesh.groups.filter(g => g !== group))
  }

  /** A refusal worth keeping, at most once per (kind, peer, group) per window. */
  private audit (kind: string, peer: string, group: string, detail: string): void {
    if (!this.audits.take(`${kind}|${peer}|${group}`)) return
    this.log.warn('authority refused', { kind, peer, group, detail })
    void this.store.appendAudit({ kind, peer, detail: group !== '' ? `group '${group}': ${detail}` : detail, verdict: 'rejected' }).catch(() => {})
  }

  list (): GroupView[] {
    return [...this.states.keys()].sort().map(g => this.get(g)!).filter(v => v.joined || v.members.length > 0)
  }

  get (group: string): GroupView | undefined {
    const s = this.states.get(group)
    if (s == null) return undefined
    const joined = this.mesh.groups.includes(group)
    const members: GroupMember[] = this.mesh.peers()
      .filter(p => p.groups.includes(group))
      .map(p => ({ id: p.id, name: p.name, status: p.status, self: false }))
    if (joined) members.unshift({ id: this.self(), name: this.selfName, status: 'alive', self: true })
    return { name: group, leader: s.leader, term: shownTerm(s), joined, members }
  }
}
