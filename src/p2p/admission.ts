import { EventEmitter } from 'node:events'
import { randomBytes } from 'node:crypto'
import { peerIdFromString } from '@libp2p/peer-id'
import type { Connection, PrivateKey, Stream } from '@libp2p/interface'
import { ShepherdError, WireError } from '../errors.js'
import { createLogger } from '../logger.js'
import {
  ADMISSION_PROTOCOL, ADMISSION_READ_TIMEOUT_MS, ADMISSION_RESYNC_MS, ADMISSION_VERSION, MAX_ADMISSION_FRAME_BYTES, MAX_ADMISSION_STREAMS,
  cleanName, isAdmissionRequest, isAdmissionResponse, signStatement,
  type AdmissionRequest, type AdmissionResponse, type HelloFrame, type Statement
} from './admission-messages.js'
import { FramedStream } from './framing.js'
import type { Host } from './host.js'
import { TOFU_WINDOW_MS, adoption, applyStatements, withValidSignatures, type LedgerState } from './ledger.js'
import { TokenBuckets } from './token-buckets.js'
import type { TrustPolicy } from './trust.js'
import { checkInvite, type InviteToken } from './invite.js'

/** What the admission service needs from the node: durable storage and the audit log. */
export interface AdmissionBackend {
  /** Writes `next` durably before it takes effect; throws a typed error when it cannot (nothing changes then). */
  save: (next: LedgerState, prev: LedgerState | undefined) => Promise<void>
  /** Records a refused or suspicious admission event (rate-limited by the caller). */
  audit: (peer: string, detail: string) => void
  /** Marks an invite secret used, durably; false when it was used already. */
  useInvite: (secretHash: string, expiresAt: number) => Promise<boolean>
}

export interface AdmissionOptions {
  key: PrivateKey
  selfId: string
  name: () => string
  trust: TrustPolicy
  backend: AdmissionBackend
}

export interface AdmissionEvents {
  /** The ledger changed (merged, adopted or a statement of ours): peers may need fresh snapshots. */
  changed: [how: 'merged' | 'adopted' | 'own']
}

/** A new mesh with `selfId` as its founder and only member (first start, nothing stored). */
export async function foundMesh (key: PrivateKey, selfId: string, name: string): Promise<LedgerState> {
  const mesh = randomBytes(16).toString('hex')
  const s = await signStatement(key, { v: ADMISSION_VERSION, t: 'found', mesh, subject: selfId, issuer: selfId, name: cleanName(name), at: Date.now() })
  const next = adoption(undefined, selfId, [s])
  if (next == null) throw new AdmissionError('could not found a mesh', 'found_failed', 500)
  return next
}

/** The node cannot sign statements for its mesh: it is no member of it (revoked). */
export class AdmissionError extends ShepherdError {
  constructor (message: string, code = 'not_a_member', status = 409) {
    super(message, { code, status })
  }
}

/**
 * `/shepherd/admission/1.0.0`: one request frame and one response frame per stream. On every new
 * connection both ends say hello (mesh id, name, ledger digest); members of one mesh pull what
 * they miss; a peer that is no member is recorded as pending. Statements made here are pushed to
 * connected members (and to the subject of an admit), whole ledger at a time: idempotent, and
 * checked statement by statement by every receiver.
 */
export class AdmissionService extends EventEmitter<AdmissionEvents> {
  private chain: Promise<unknown> = Promise.resolve()
  /**
   * Admission streams per peer: hellos, pulls and pushes (a burst of admits included) fit well
   * inside; a flood is reset.
   */
  private readonly flood = new TokenBuckets(5, 30)
  private resync?: NodeJS.Timeout
  private readonly log = createLogger('p2p:admission')
  private started = false

  constructor (private readonly host: Host, private readonly opts: AdmissionOptions) {
    super()
  }

  get ledger (): LedgerState | undefined {
    return this.opts.trust.ledger
  }

  async start (): Promise<void> {
    this.started = true
    await this.host.handle(ADMISSION_PROTOCOL, (stream, conn) => { void this.onStream(stream, conn) }, { maxInboundStreams: MAX_ADMISSION_STREAMS, maxOutboundStreams: MAX_ADMISSION_STREAMS })
    this.host.addEventListener('peer:connect', evt => { void this.greet(evt.detail.toString()) })
    // Peers met while the node was starting (bootstrap dials) get their hello now.
    for (const p of this.host.getPeers()) void this.greet(p.toString())
    // A push can be lost (a reset stream, a peer busy restarting): a periodic hello to one random
    // peer compares digests and pulls what is missing (anti-entropy, memberlist's push-pull), so
    // members converge without a reconnect; a statement one member holds spreads in O(log n)
    // rounds. A hello to every peer each round made each node's cost grow with the mesh.
    this.resync = setInterval(() => {
      const peers = this.host.getPeers()
      if (peers.length > 0) void this.greet(peers[Math.floor(Math.random() * peers.length)].toString())
    }, ADMISSION_RESYNC_MS)
    this.resync.unref()
  }

  async stop (): Promise<void> {
    this.started = false
    clearInterval(this.resync)
    await this.host.unhandle(ADMISSION_PROTOCOL).catch(() => {})
  }

  /** Runs ledger changes one at a time: each is saved before the next reads the state. */
  private async serial<T> (fn: () => Promise<T>): Promise<T> {
    const run = this.chain.then(fn, fn)
    this.chain = run.catch(() => {})
    return await run
  }

  /** Signs and applies an admit of `subject` (idempotent: a member stays one), then pushes it. */
  async admit (subject: string, name: string): Promise<Statement | undefined> {
    const s = await this.sign('admit', subject, name)
    if (s != null) void this.pushAll([subject])
    return s
  }

  /** Signs and applies a revoke of `subject`, then pushes it to the remaining members. */
  async revoke (subject: string): Promise<Statement | undefined> {
    const s = await this.sign('revoke', subject, '')
    if (s != null) void this.pushAll([])
    return s
  }

  private async sign (t: 'admit' | 'revoke', subject: string, name: string): Promise<Statement | undefined> {
    return await this.serial(async () => {
      const own = this.ledger
      if (own == null || !own.members.has(this.opts.selfId)) throw new AdmissionError('this node is no member of its mesh (revoked): it cannot admit or revoke')
      if (t === 'admit' && own.members.has(subject)) return undefined
      if (t === 'revoke' && !own.members.has(subject) && own.revoked.has(subject)) return undefined
      // Later than every statement about the subject, so the replay order says what was meant.
      let at = Date.now()
      for (const x of own.statements.values()) if (x.subject === subject && x.at >= at) at = x.at + 1
      const base = { v: ADMISSION_VERSION, mesh: own.mesh, subject, issuer: this.opts.selfId, at } as const
      const s = await signStatement(this.opts.key, t === 'admit' ? { ...base, t, name: cleanName(name) } : { ...base, t })
      const res = applyStatements(own, [s], Date.now())
      if (res.added.length === 0) return undefined
      await this.commit(res.state, 'own')
      return s
    })
  }

  /** Saves, then applies, a new ledger. */
  private async commit (next: LedgerState, how: 'merged' | 'adopted' | 'own'): Promise<void> {
    const prev = this.ledger
    await this.opts.backend.save(next, prev)
    this.opts.trust.setLedger(next, this.host.getPeers().map(p => p.toString()))
    this.emit('changed', how)
  }

  /**
   * Takes statements from `from`: those of this node's mesh that check out are merged; a ledger
   * of another mesh that admits this node is adopted when this node is alone in its own (trust
   * on first use), or, with `inviter`, when the inviter's admit of this node is in it.
   */
  async receive (from: string, statements: Statement[], opts: { inviter?: string, mesh?: string } = {}): Promise<'merged' | 'adopted' | 'ignored'> {
    const { valid, forged } = await withValidSignatures(statements)
    if (forged.length > 0) this.opts.backend.audit(from, `${forged.length} ledger statement(s) with a forged signature`)
    const how = await this.serial(async () => {
      const own = this.ledger
      if (own != null && opts.inviter == null) {
        const mine = valid.filter(s => s.mesh === own.mesh)
        if (mine.length > 0) {
          const res = applyStatements(own, mine, Date.now())
          const bad = res.refused.filter(r => r.reason !== 'duplicate' && r.reason !== 'no_effect')
          if (bad.length > 0) this.opts.backend.audit(from, `ledger statements refused: ${[...new Set(bad.map(b => b.reason))].join(', ')} (${bad.length})`)
          if (res.added.length === 0) return 'ignored'
          await this.commit(res.state, 'merged')
          return 'merged'
        }
      }
      const adopted = adoption(own, this.opts.selfId, valid, { ...opts, now: Date.now() })
      if (adopted == null) {
        // Refused only because trust on first use has ended: say so (an operator may be waiting for it).
        const late = opts.inviter == null ? adoption(own, this.opts.selfId, valid, opts) : undefined
        if (late != null) {
          this.log.warn(`not joining the mesh that admits this node: trust on first use ends ${TOFU_WINDOW_MS / 60_000} min after this node founded its own mesh; join it with an invite (shepherd-mesh invite, then start --join)`, { mesh: late.mesh, from })
          this.opts.backend.audit(from, `offered mesh ${late.mesh}: not adopted (trust on first use ended)`)
        }
        return 'ignored'
      }
      await this.commit(adopted, 'adopted')
      this.log.info('joined a mesh', { mesh: adopted.mesh, from, members: adopted.members.size, invited: opts.inviter != null })
      return 'adopted'
    })
    if (how !== 'ignored') void this.pushAll([], from)
    if (how === 'adopted') for (const p of this.host.getPeers()) void this.greet(p.toString())
    return how
  }

  private hello (): HelloFrame {
    const l = this.ledger
    return { v: 1, t: 'hello', mesh: l?.mesh ?? '0'.repeat(32), name: cleanName(this.opts.name()), digest: l?.digest ?? '0'.repeat(64), count: l?.statements.size ?? 0 }
  }

  /** Says hello to `peer`; pulls its ledger when it holds statements of this mesh we lack, or one that admits us. */
  async greet (peer: string): Promise<void> {
    if (!this.started || peer === this.opts.selfId) return
    try {
      const res = await this.request(peer, this.hello())
      if (res.t !== 'hello') return
      this.opts.trust.hello(peer, res.name, res.mesh)
      const own = this.ledger
      const sameMesh = own != null && res.mesh === own.mesh
      if ((sameMesh && res.digest !== own.digest && this.opts.trust.isMember(peer)) || (!sameMesh && res.member === true)) {
        const ledger = await this.request(peer, { v: 1, t: 'pull' })
        if (ledger.t === 'ledger') await this.receive(peer, ledger.statements)
      }
    } catch (err) {
      this.log.debug('admission hello failed', { peer, err })
    }
  }

  /** Pushes the whole ledger to connected members and `extra` peers (not to `except`). */
  async pushAll (extra: string[], except?: string): Promise<void> {
    const l = this.ledger
    if (l == null) return
    const statements = [...l.statements.values()]
    const targets = new Set([...this.host.getPeers().map(p => p.toString()).filter(p => this.opts.trust.isMember(p)), ...extra])
    targets.delete(this.opts.selfId)
    if (except != null) targets.delete(except)
    await Promise.all([...targets].map(async p => {
      try {
        if (this.host.getConnections(peerIdFromString(p)).length === 0) return
        await this.request(p, { v: 1, t: 'push', statements })
      } catch (err) {
        // Best effort: a member that missed it pulls the ledger at its next hello.
        this.log.debug('ledger push failed', { peer: p, err })
      }
    }))
  }

  /** Presents an invite to its inviter and adopts the ledger it returns, checked against the token. */
  async join (token: InviteToken): Promise<'adopted' | 'ignored'> {
    const res = await this.request(token.inviter, { v: 1, t: 'join', token: token.raw, name: cleanName(this.opts.name()) }, 10_000)
    if (res.t === 'error') throw new AdmissionError(`the inviter refused the invite: ${res.message}`, res.code, 403)
    if (res.t !== 'ledger') throw new AdmissionError('the inviter answered the invite with no ledger', 'invalid_answer', 502)
    const how = await this.receive(token.inviter, res.statements, { inviter: token.inviter, mesh: token.mesh })
    return how === 'adopted' ? 'adopted' : 'ignored'
  }

  private async request (peer: string, frame: AdmissionRequest, timeoutMs = 5000): Promise<AdmissionResponse> {
    const signal = AbortSignal.timeout(timeoutMs)
    const stream = await this.host.dialProtocol(peerIdFromString(peer), ADMISSION_PROTOCOL, { signal })
    try {
      const framed = new FramedStream(stream, MAX_ADMISSION_FRAME_BYTES)
      await framed.write(frame, signal)
      const res = await framed.read(signal, timeoutMs)
      if (!isAdmissionResponse(res)) throw new WireError('invalid admission answer', 'invalid_frame')
      await stream.close().catch(() => {})
      return res
    } catch (err: any) {
      stream.abort(err instanceof Error ? err : new Error(String(err)))
      throw err
    }
  }

  private async onStream (stream: Stream, conn: Connection): Promise<void> {
    const peer = conn.remotePeer.toString()
    if (!this.flood.take(peer)) {
      this.opts.backend.audit(peer, `${ADMISSION_PROTOCOL}: stream flood, reset`)
      stream.abort(new WireError('too many admission streams', 'rate_limited'))
      return
    }
    const framed = new FramedStream(stream, MAX_ADMISSION_FRAME_BYTES)
    let req: unknown
    try {
      req = await framed.read(undefined, ADMISSION_READ_TIMEOUT_MS)
      if (!isAdmissionRequest(req)) throw new WireError('not an admission request', 'invalid_frame')
    } catch (err: any) {
      this.opts.backend.audit(peer, `${ADMISSION_PROTOCOL}: ${err?.code ?? 'malformed'}: ${String(err?.message ?? err).slice(0, 200)}`)
      stream.abort(err instanceof Error ? err : new Error(String(err)))
      return
    }
    try {
      await framed.write(await this.answer(peer, req))
      await stream.close()
    } catch (err: any) {
      this.log.debug('admission answer failed', { peer, err })
      stream.abort(err instanceof Error ? err : new Error(String(err)))
    }
  }

  private async answer (peer: string, req: AdmissionRequest): Promise<AdmissionResponse> {
    const trust = this.opts.trust
    switch (req.t) {
      case 'hello':
        trust.hello(peer, req.name, req.mesh)
        return { ...this.hello(), member: trust.isMember(peer) }
      case 'pull':
        if (!trust.isMember(peer) || this.ledger == null) return { v: 1, t: 'error', code: 'not_a_member', message: 'only members get the ledger' }
        return { v: 1, t: 'ledger', statements: [...this.ledger.statements.values()] }
      case 'push':
        // Anyone may relay statements: each counts only if signed by a member of this mesh.
        await this.receive(peer, req.statements)
        return { v: 1, t: 'ok' }
      case 'join':
        return await this.answerJoin(peer, req.token, req.name)
    }
  }

  private async answerJoin (peer: string, raw: string, name: string): Promise<AdmissionResponse> {
    const own = this.ledger
    const checked = await checkInvite(raw, { self: this.opts.selfId, mesh: own?.mesh, now: Date.now() })
    if (!checked.ok) {
      this.opts.backend.audit(peer, `invite refused: ${checked.code}`)
      return { v: 1, t: 'error', code: checked.code, message: checked.message }
    }
    // Used before the admit is signed: a crash in between loses the invite, never reuses it.
    if (!await this.opts.backend.useInvite(checked.secretHash, checked.token.expiresAt)) {
      this.opts.backend.audit(peer, 'invite refused: invite_used')
      return { v: 1, t: 'error', code: 'invite_used', message: 'this invite was used already' }
    }
    await this.sign('admit', peer, name)
    const l = this.ledger
    if (l == null) return { v: 1, t: 'error', code: 'no_ledger', message: 'no ledger' }
    void this.pushAll([], peer)
    return { v: 1, t: 'ledger', statements: [...l.statements.values()] }
  }
}
