import { peerIdFromPrivateKey } from '@libp2p/peer-id'
import type { PrivateKey } from '@libp2p/interface'
import { InsufficientStorageError, ShepherdError } from '../../errors.js'
import { createLogger } from '../../logger.js'
import {
  COMMAND_TYPES, COMMAND_VERSION, isCommandEnvelope, isCommandType, signResult, verifyCommand,
  type CommandEnvelope, type CommandErrorInfo, type CommandType, type RejectCode, type SignedResult, type UnsignedResult
} from '../../p2p/index.js'
import { CommandRefusedError, type CommandContext, type CommandReceiver, type CommandReply } from '../../p2p/index.js'
import { canonicalJson } from '../../p2p/index.js'
import type { AuditInput, CommandStore } from './command-store.js'
import type { CommandHandlers } from './handlers.js'
import { checkPayload } from './payloads.js'

/**
 * `operator: true`: the issuer acts (or, refused, claimed to act) as an operator (this node's own,
 * or a proven member's: see ControlPlane), not as a group's leader. Such a command is neither fenced by the group's term
 * nor raises it, so an operator can never depose or fence out the real leader.
 */
export type AuthorityVerdict = { ok: true, operator?: boolean } | { ok: false, reason: string, operator?: boolean }

/**
 * Decides whether the issuer of an authenticated, unexpired command may give it: the group's
 * current leader at the command's term, or an operator (this node itself, or a member when this
 * node allows member operators).
 */
export type Authority = (env: CommandEnvelope) => AuthorityVerdict | Promise<AuthorityVerdict>

export interface CommandExecutorOptions {
  /** This node's key: it names the executor (`target` must be its peer id) and signs results. */
  privateKey: PrivateKey
  store: CommandStore
  authority: Authority
  /** Handlers by type; a type without one answers `not_supported`. */
  handlers: Partial<CommandHandlers>
  /** Types this node accepts at all. */
  allowlist?: readonly CommandType[]
  /** Commands run at once. */
  maxConcurrent?: number
  /** Accepted commands waiting for a slot; beyond this a command is rejected `overloaded`. */
  maxQueued?: number
  /** Run time allowed per type, from the moment its handler starts. */
  timeoutsMs?: Partial<Record<CommandType, number>>
  /** Now, in ms since the epoch; tests inject their own. */
  clock?: () => number
  /** How far in the future `issuedAt` may be (the issuer's clock may run ahead). */
  clockSkewMs?: number
  /** Longest `expiresAt - issuedAt` accepted: bounds how long a signed command stays usable. */
  maxLifetimeMs?: number
  /** After a timeout, how long the slot stays held while the aborted handler winds down. */
  abortGraceMs?: number
  /** Largest result (canonical JSON) kept and sent; a bigger one becomes a `result_too_large` error. */
  maxResultBytes?: number
}

export const COMMAND_EXECUTOR_DEFAULTS = {
  allowlist: COMMAND_TYPES,
  maxConcurrent: 4,
  maxQueued: 16,
  timeoutsMs: {
    load_model: 10 * 60_000,
    unload_model: 30_000,
    run_llamacpp: 10 * 60_000,
    stop_process: 30_000,
    scan_models: 30_000,
    collect_logs: 30_000,
    update_config: 30_000,
    serve_rpc: 60_000
  } satisfies Record<CommandType, number>,
  clockSkewMs: 30_000,
  maxLifetimeMs: 24 * 3600_000,
  abortGraceMs: 5000,
  maxResultBytes: 512 * 1024
} as const

/** Longest error message kept in a result or an audit entry. */
const MAX_MESSAGE_CHARS = 4096
const ERROR_CODE = /^[a-z][a-z0-9_]{0,63}$/

interface Who { id?: string, type?: string, issuer?: string, peer?: string, group?: string, term?: number }

export interface ExecutorStats {
  accepted: number
  completed: number
  rejected: Partial<Record<RejectCode, number>>
  running: number
  queued: number
}

/**
 * Checks and runs signed commands (seed 000 §1.4). In order: envelope shape → version → target
 * → issuer's signature → expiry → fencing term → authority → type allowlist → payload schema →
 * idempotency → concurrency → run under a timeout. Every verdict and every result is written to
 * the durable audit log. Refusals before the issuer is authenticated are unsigned `error`
 * replies; after, every answer is a result signed with this node's key.
 */
export class CommandExecutor implements CommandReceiver {
  readonly selfId: string
  private readonly log = createLogger('node:cmd')
  private readonly o: Required<Omit<CommandExecutorOptions, 'timeoutsMs' | 'handlers'>> & { timeoutsMs: Record<CommandType, number> }
  private readonly allowed: Set<string>
  private readonly inflight = new Map<string, Promise<SignedResult>>()
  private readonly controllers = new Set<AbortController>()
  private readonly waiters: Array<() => void> = []
  private running = 0
  /** Running plus waiting: the number held against `maxConcurrent + maxQueued`. */
  private admitted = 0
  private closed = false
  private readonly counts = { accepted: 0, completed: 0, rejected: {} as Partial<Record<RejectCode, number>> }

  constructor (private readonly opts: CommandExecutorOptions) {
    const d = COMMAND_EXECUTOR_DEFAULTS
    this.o = {
      privateKey: opts.privateKey,
      store: opts.store,
      authority: opts.authority,
      allowlist: opts.allowlist ?? d.allowlist,
      maxConcurrent: opts.maxConcurrent ?? d.maxConcurrent,
      maxQueued: opts.maxQueued ?? d.maxQueued,
      timeoutsMs: { ...d.timeoutsMs, ...opts.timeoutsMs },
      clock: opts.clock ?? Date.now,
      clockSkewMs: opts.clockSkewMs ?? d.clockSkewMs,
      maxLifetimeMs: opts.maxLifetimeMs ?? d.maxLifetimeMs,
      abortGraceMs: opts.abortGraceMs ?? d.abortGraceMs,
      maxResultBytes: opts.maxResultBytes ?? d.maxResultBytes
    }
    if (this.o.maxConcurrent < 1) throw new ShepherdError('maxConcurrent must be at least 1', { code: 'invalid_option' })
    this.allowed = new Set(this.o.allowlist)
    this.selfId = peerIdFromPrivateKey(opts.privateKey).toString()
  }

  stats (): ExecutorStats {
    return { ...this.counts, rejected: { ...this.counts.rejected }, running: this.running, queued: this.admitted - this.running }
  }

  /** Checks and runs one frame from `ctx.peer`. Never throws. */
  async receive (frame: unknown, ctx: CommandContext): Promise<CommandReply> {
    try {
      return await this.decide(frame, ctx)
    } catch (err) {
      this.log.error('command executor failed', { err })
      if (err instanceof ShepherdError) return { t: 'error', code: err.code, message: err.message }
      return { t: 'error', code: 'internal_error', message: 'the executor failed to process the command' }
    }
  }

  /** Audits a stream that carried no decodable frame. */
  async malformed (peer: string, detail: string): Promise<void> {
    this.count('malformed')
    await this.audit({ verdict: 'rejected', reason: 'malformed', peer, detail: cut(detail, 256) })
  }

  /**
   * Runs a command given locally (the node's own operator, through the API): the same checks
   * and audit as one from the wire. Resolves with the signed result; throws
   * `CommandRefusedError` for a command refused before its issuer was authenticated.
   */
  async execute (env: CommandEnvelope, opts: { onOutput?: (line: string) => void } = {}): Promise<SignedResult> {
    const reply = await this.receive(env, { peer: this.selfId, onOutput: opts.onOutput ?? (() => {}) })
    if (reply.t === 'result') return reply.result
    // A store fault is the node's own state, not a refusal: the operator gets 507/503, not 403.
    if (reply.code === 'insufficient_storage') throw new InsufficientStorageError(reply.message)
    if (reply.code === 'store_unavailable') throw new ShepherdError(reply.message, { code: 'store_unavailable', status: 503 })
    throw new CommandRefusedError(reply.code, reply.message)
  }

  /** Stops taking commands and aborts the running ones; resolves when they wound down (or the grace ran out). */
  async close (): Promise<void> {
    this.closed = true
    for (const ac of this.controllers) ac.abort(new ShepherdError('the node is shutting down', { code: 'shutting_down', status: 503 }))
    const pending = [...this.inflight.values()].map(async p => await p.catch(() => {}))
    await Promise.race([Promise.all(pending), sleep(this.o.abortGraceMs)])
  }

  private async decide (frame: unknown, ctx: CommandContext): Promise<CommandReply> {
    const receivedAt = this.o.clock()
    if (!isCommandEnvelope(frame)) {
      const detail = 'not a command envelope'
      this.count('malformed')
      await this.audit({ verdict: 'rejected', reason: 'malformed', peer: ctx.peer, ...looseWho(frame), detail })
      return { t: 'reset', code: 'malformed', message: detail }
    }
    const env = frame
    const who: Who = { id: env.id, type: env.type, issuer: env.issuer, peer: ctx.peer, group: env.group, term: env.term }
    if (this.closed) return { t: 'error', code: 'shutting_down', message: 'the node is shutting down' }
    if (env.v !== COMMAND_VERSION) return await this.refuse(who, 'unsupported_version', `command version ${env.v} is not supported (${COMMAND_VERSION} is)`)
    if (env.target !== this.selfId) return await this.refuse(who, 'wrong_target', 'the command is for another node')
    if (!await verifyCommand(env)) return await this.refuse(who, 'bad_signature', 'the signature does not match the issuer\'s key')

    // The issuer is authenticated: from here every answer is a signed result.
    const now = this.o.clock()
    if (now > env.expiresAt) return await this.reject(who, receivedAt, 'expired', `the command expired ${now - env.expiresAt} ms ago`)
    if (env.issuedAt > now + this.o.clockSkewMs) return await this.reject(who, receivedAt, 'expired', 'the command is issued in the future')
    if (env.expiresAt - env.issuedAt > this.o.maxLifetimeMs) return await this.reject(who, receivedAt, 'expired', 'the command lives longer than allowed')

    let verdict: AuthorityVerdict
    try {
      verdict = await this.o.authority(env)
    } catch (err) {
      this.log.warn('authority check failed', { err })
      verdict = { ok: false, reason: 'the authority check failed' }
    }
    // An operator (this node's own, or a member's) is not a leader: its commands are neither
    // fenced nor raise a term. A leader's are, checked before the verdict as always (stale first).
    const fenced = env.issuer !== this.selfId && verdict.operator !== true
    if (fenced) {
      const seen = await this.o.store.termOf(env.group)
      if (env.term < seen) return await this.reject(who, receivedAt, 'stale_term', `term ${env.term} is older than term ${seen} of group '${env.group}'`)
    }
    if (!verdict.ok) return await this.reject(who, receivedAt, 'not_authorized', verdict.reason)
    // Only an authorised command may raise the term: anyone can sign a huge one.
    if (fenced && !await this.o.store.admitTerm(env.group, env.term).catch(storeUnavailable)) {
      return await this.reject(who, receivedAt, 'stale_term', `a newer term of group '${env.group}' was seen meanwhile`)
    }
    if (!isCommandType(env.type) || !this.allowed.has(env.type)) return await this.reject(who, receivedAt, 'type_not_allowed', `command type '${env.type}' is not allowed on this node`)
    const type = env.type
    const check = checkPayload(type, env.payload)
    if (!check.ok) return await this.reject(who, receivedAt, 'invalid_payload', check.message)

    const replay = await this.replay(env, who)
    if (replay != null) return { t: 'result', result: replay }
    // From this check until `accept` registers the id nothing awaits, so a twin arriving now waits on this run.
    const twin = this.inflight.get(env.id)
    if (twin != null) return { t: 'result', result: await this.answerReplay(who, twin) }
    if (this.admitted >= this.o.maxConcurrent + this.o.maxQueued) {
      return await this.reject(who, receivedAt, 'overloaded', `${this.admitted} commands are running or waiting; retry later`)
    }
    return { t: 'result', result: await this.accept(env, type, who, ctx) }
  }

  /** The stored result of a command id seen before, or of one running now; undefined for a new id. */
  private async replay (env: CommandEnvelope, who: Who): Promise<SignedResult | undefined> {
    const running = this.inflight.get(env.id)
    if (running != null) return await this.answerReplay(who, running)
    const stored = await this.o.store.getRun(env.id)
    if (stored == null) return undefined
    if (stored.state === 'done' && stored.result != null) return await this.answerReplay(who, stored.result)
    const again = this.inflight.get(env.id)
    return await this.answerReplay(who, again ?? this.settleInterrupted(env.id))
  }

  /**
   * A `running` record that no run of this process owns was accepted before a crash or restart
   * and never finished: it must not run twice, so it is answered (and stored) as interrupted.
   * Registered as in flight at once, so concurrent replays share one verdict.
   */
  private settleInterrupted (id: string): Promise<SignedResult> {
    const settling = (async () => {
      // Read again: a run of this process may have finished since the first read.
      const record = await this.o.store.getRun(id)
      if (record == null) throw new ShepherdError('the run record vanished', { code: 'store_unavailable', status: 503 })
      if (record.state === 'done' && record.result != null) return record.result
      const result = await this.sign({ id, status: 'error', error: { code: 'interrupted', message: 'the node stopped while the command ran' }, startedAt: record.acceptedAt, finishedAt: this.o.clock() })
      await this.o.store.putRun({ ...record, state: 'done', result })
      return result
    })()
    this.inflight.set(id, settling)
    const forget = (): void => { if (this.inflight.get(id) === settling) this.inflight.delete(id) }
    settling.then(forget, forget)
    return settling
  }

  private async answerReplay (who: Who, result: SignedResult | Promise<SignedResult>): Promise<SignedResult> {
    this.count('replay')
    await this.audit({ verdict: 'rejected', reason: 'replay', ...who, detail: 'answered with the stored result' })
    return await result
  }

  private async accept (env: CommandEnvelope, type: CommandType, who: Who, ctx: CommandContext): Promise<SignedResult> {
    this.admitted++
    let settle!: { resolve: (r: SignedResult) => void, reject: (e: unknown) => void }
    const done = new Promise<SignedResult>((resolve, reject) => { settle = { resolve, reject } })
    // Replays wait on this; marked handled so a failure with no one waiting is not an unhandled rejection.
    done.catch(() => {})
    this.inflight.set(env.id, done)
    const acceptedAt = this.o.clock()
    const record = { id: env.id, type, issuer: env.issuer, group: env.group, term: env.term, acceptedAt, expiresAt: env.expiresAt }
    try {
      try {
        // Durable before anything runs: a crash from here on can never lead to a second run.
        await this.o.store.putRun({ ...record, state: 'running' }, { verdict: 'accepted', ...who })
      } catch (err) {
        this.admitted--
        storeUnavailable(err)
      }
      this.counts.accepted++
      const result = await this.run(env, type, ctx)
      const completed: AuditInput = { verdict: 'completed', ...who, status: result.status, error: result.error, durationMs: result.finishedAt - result.startedAt }
      try {
        await this.o.store.putRun({ ...record, state: 'done', result }, completed)
      } catch (err) {
        this.log.error('cannot store a command result; a replay will read it as interrupted', { err, id: env.id })
        await this.audit(completed)
      }
      this.counts.completed++
      settle.resolve(result)
      return result
    } catch (err) {
      settle.reject(err)
      throw err
    } finally {
      this.inflight.delete(env.id)
    }
  }

  private async run (env: CommandEnvelope, type: CommandType, ctx: CommandContext): Promise<SignedResult> {
    await this.acquire()
    const ac = new AbortController()
    this.controllers.add(ac)
    let open = true
    let holdSlot: Promise<unknown> = Promise.resolve()
    const startedAt = this.o.clock()
    let outcome: Pick<UnsignedResult, 'status' | 'result' | 'error'>
    try {
      const handler = this.opts.handlers[type] as ((p: unknown, c: unknown) => Promise<unknown>) | undefined
      if (this.closed) {
        // Queued before the node began to shut down: never started.
        outcome = { status: 'error', error: { code: 'shutting_down', message: 'the node shut down before the command could start' } }
      } else if (handler == null) {
        outcome = { status: 'error', error: { code: 'not_supported', message: `this node has no handler for '${type}'` } }
      } else {
        const limit = this.o.timeoutsMs[type]
        const work = Promise.resolve().then(async () => await handler(env.payload, {
          signal: ac.signal,
          output: (line: string) => { if (open) ctx.onOutput(String(line)) },
          id: env.id,
          issuer: env.issuer
        }))
        const settled = work.then(value => ({ value }), (error: unknown) => ({ error }))
        let timer: NodeJS.Timeout | undefined
        const timedOut = new Promise<'timeout'>(resolve => { timer = setTimeout(() => { resolve('timeout') }, limit) })
        const first = await Promise.race([settled, timedOut])
        clearTimeout(timer)
        if (first === 'timeout') {
          ac.abort(new ShepherdError(`the command ran past its ${limit} ms limit`, { code: 'timeout', status: 504 }))
          outcome = { status: 'error', error: { code: 'timeout', message: `the command ran past its ${limit} ms limit` } }
          // The slot stays taken until the aborted handler really stops, within a grace period.
          holdSlot = Promise.race([settled, sleep(this.o.abortGraceMs)])
        } else if ('error' in first) {
          outcome = { status: 'error', error: errorInfo(first.error, ac.signal.aborted) }
        } else {
          outcome = this.okOutcome(first.value)
        }
      }
    } finally {
      open = false
      this.controllers.delete(ac)
      void holdSlot.then(() => { this.release() })
    }
    return await this.sign({ id: env.id, ...outcome, startedAt, finishedAt: this.o.clock() })
  }

  /** A handler's value as JSON, or the reason it cannot be a result. */
  private okOutcome (value: unknown): Pick<UnsignedResult, 'status' | 'result' | 'error'> {
    if (value === undefined) return { status: 'ok' }
    let json: unknown
    let size: number
    try {
      json = JSON.parse(JSON.stringify(value))
      size = Buffer.byteLength(canonicalJson(json))
    } catch {
      return { status: 'error', error: { code: 'result_unserializable', message: 'the handler returned a value with no JSON form' } }
    }
    if (size > this.o.maxResultBytes) return { status: 'error', error: { code: 'result_too_large', message: `the result has ${size} bytes; at most ${this.o.maxResultBytes} are kept` } }
    return { status: 'ok', result: json }
  }

  private async acquire (): Promise<void> {
    if (this.running < this.o.maxConcurrent) {
      this.running++
      return
    }
    await new Promise<void>(resolve => { this.waiters.push(resolve) })
  }

  private release (): void {
    this.admitted--
    const next = this.waiters.shift()
    // A waiter takes the slot over as is: the running count does not change.
    if (next != null) next()
    else this.running--
  }

  private async sign (r: Omit<UnsignedResult, 'executor'>): Promise<SignedResult> {
    const unsigned: UnsignedResult = { id: r.id, status: r.status, startedAt: r.startedAt, finishedAt: r.finishedAt, executor: this.selfId }
    if (r.result !== undefined) unsigned.result = r.result
    if (r.error !== undefined) unsigned.error = r.error
    return await signResult(this.o.privateKey, unsigned)
  }

  /** Refused before the issuer is authenticated: audited, answered unsigned. */
  private async refuse (who: Who, code: RejectCode, message: string): Promise<CommandReply> {
    this.count(code)
    await this.audit({ verdict: 'rejected', reason: code, ...who, detail: message })
    return { t: 'error', code, message }
  }

  /** Refused after the issuer is authenticated: audited, answered with a signed `rejected` result. */
  private async reject (who: Who, receivedAt: number, code: RejectCode, message: string): Promise<CommandReply> {
    this.count(code)
    await this.audit({ verdict: 'rejected', reason: code, ...who, detail: cut(message, MAX_MESSAGE_CHARS) })
    const result = await this.sign({ id: who.id!, status: 'rejected', error: { code, message: cut(message, MAX_MESSAGE_CHARS) }, startedAt: receivedAt, finishedAt: this.o.clock() })
    return { t: 'result', result }
  }

  private count (code: RejectCode): void {
    this.counts.rejected[code] = (this.counts.rejected[code] ?? 0) + 1
  }

  /** Appends to the audit log; a failing store is logged, never thrown into a verdict. */
  private async audit (entry: AuditInput): Promise<void> {
    try {
      await this.o.store.appendAudit(entry)
    } catch (err) {
      this.log.error('cannot write the command audit log', { err, verdict: entry.verdict, reason: entry.reason })
    }
  }
}

function storeUnavailable (err: unknown): never {
  // The store's own typed errors (507 `insufficient_storage` on a full disk) say more: kept as they are.
  if (err instanceof ShepherdError) throw err
  throw new ShepherdError('the command store is unavailable', { code: 'store_unavailable', status: 503 }).withCause(err)
}

function errorInfo (err: unknown, aborted: boolean): CommandErrorInfo {
  if (err instanceof ShepherdError && ERROR_CODE.test(err.code)) return { code: err.code, message: cut(err.message, MAX_MESSAGE_CHARS) }
  const message = err instanceof Error ? err.message : String(err)
  return { code: aborted ? 'aborted' : 'handler_failed', message: cut(message, MAX_MESSAGE_CHARS) }
}

/** What can be told of a frame that is not an envelope: its bounded string fields, cut short. */
function looseWho (frame: unknown): Who {
  if (frame == null || typeof frame !== 'object' || Array.isArray(frame)) return {}
  const f = frame as Record<string, unknown>
  const str = (v: unknown): string | undefined => typeof v === 'string' ? cut(v, 128) : undefined
  return { id: str(f.id), type: str(f.type), issuer: str(f.issuer), group: str(f.group) }
}

function cut (s: string, max: number): string {
  return s.length > max ? s.slice(0, max) + '…' : s
}

async function sleep (ms: number): Promise<void> {
  await new Promise<void>(resolve => { setTimeout(resolve, ms).unref() })
}
