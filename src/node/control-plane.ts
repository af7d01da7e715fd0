import fs from 'node:fs/promises'
import type { PrivateKey } from '@libp2p/interface'
import { AUTHORITY_CODES, MODEL_FINGERPRINT_MISMATCH, ModelNotFoundError, SOURCE_NOT_MEMBER, SPLIT_CODES, ShepherdError } from '../errors.js'
import { createLogger, recentLogLines, setLogLevel } from '../logger.js'
import type { NodeOptions } from '../config/index.js'
import { BLOB_PROTOCOL, COMMAND_PROTOCOL, createCommand, sendCommand, type CommandEnvelope, type CommandType, type MembershipMode, type Mesh, type SignedResult } from '../p2p/index.js'
import { CommandExecutor, CommandStore, type AuthorityVerdict, type CommandAuditEntry, type CommandHandlers } from './commands/index.js'
import { updateConfigHandler } from './commands/config-update.js'
import { RunProcesses } from './commands/run-processes.js'
import type { EngineHub } from './engine-hub.js'
import type { GroupManager } from './groups/index.js'
import { modelResolver } from './model-transfer.js'
import { pullModel } from './model-pull.js'
import type { TransferTracker } from './transfers.js'
import type { ModelFile, ResourceMonitor } from './resources/index.js'
import type { Store } from './store.js'
import { isSplitCapable, type SplitNode } from './split/split-node.js'

export interface ControlPlaneDeps {
  key: PrivateKey
  selfId: () => string
  store: Store
  mesh: Mesh<any>
  hub: EngineHub
  monitor: ResourceMonitor
  groups: GroupManager
  options: NodeOptions
  modelFiles: () => ModelFile[]
  /** Where pulled model files are written (a scanned models dir). */
  pullDir: string
  /** Whether a peer is a member of this node's mesh: only members are pulled from. */
  isMember: (peer: string) => boolean
  /** This node's model work in progress (pulls, loads), shown with deployments. */
  transfers: TransferTracker
  /** Membership mode: in `open` mode membership is only claimed, so it gives no operator authority. */
  mode: MembershipMode
  /** Split replicas (issue 16): `serve_rpc` and `load_model`'s `split`; absent, both are refused. */
  split?: SplitNode
}

/**
 * Who may give a command (issue 15: operator commands from any member). Three issuers:
 * - this node itself: its local operator (API/CLI on this machine);
 * - a member acting as an operator: the command says so with term 0 (no leader ever issues at
 *   term 0, and the term is signed), and the issuer must be a member by proof: in the signed
 *   ledger (admission) or a swarm key holder. Never in `open` mode, where anyone who connects is
 *   a "member": nobody gains authority by claiming it;
 * - the proven leader of the command's group at exactly its term (checked certificate).
 * A deposed leader's commands keep their term, so they stay fenced and refused as before.
 */
export function operatorAuthority (env: Pick<CommandEnvelope, 'issuer' | 'group' | 'term'>, ctx: { selfId: string, mode: MembershipMode, isMember: (peer: string) => boolean, authorizeLeader: (env: Pick<CommandEnvelope, 'issuer' | 'group' | 'term'>) => AuthorityVerdict }): AuthorityVerdict {
  if (env.issuer === ctx.selfId) return { ok: true, operator: true }
  if (env.term === MEMBER_OPERATOR_TERM) {
    if (ctx.mode === 'open') return { ok: false, operator: true, reason: `${AUTHORITY_CODES.notMemberOperator}: member commands are off in an open mesh (membership there is only claimed); send it from the group's leader` }
    if (!ctx.isMember(env.issuer)) return { ok: false, operator: true, reason: `${AUTHORITY_CODES.notMemberOperator}: the issuer is not a member of this mesh` }
    return { ok: true, operator: true }
  }
  return ctx.authorizeLeader(env)
}

/**
 * Runs a load_model body, recording its end on `transfers`. A retirement (keep-alive change of a
 * loaded replica) is no load worth showing: only commands that start from a model not yet loaded
 * leave a row (`begin`/`loading` inside the body), and only such rows are closed here.
 */
async function trackLoad<T> (transfers: TransferTracker, model: string, _fingerprint: string | null, run: () => Promise<T>): Promise<T> {
  const before = transfers.list().find(r => r.model === model)?.at
  try {
    const out = await run()
    const row = transfers.list().find(r => r.model === model)
    if (row != null && row.at !== before && row.phase !== 'loaded') transfers.loaded(model)
    return out
  } catch (err) {
    const row = transfers.list().find(r => r.model === model)
    if (row != null && row.at !== before) transfers.failed(model, err)
    throw err
  }
}

/** The term of a command a member sends as an operator, not as a leader (see operatorAuthority). */
export const MEMBER_OPERATOR_TERM = 0

/**
 * The node's side of signed commands: the executor that checks and runs them (with this node's
 * handlers), the `/shepherd/cmd` and `/shepherd/blob` services, and sending commands to peers.
 */
export class ControlPlane {
  readonly commands: CommandStore
  readonly executor: CommandExecutor
  /** llama-server processes started by run_llamacpp (capped, tied to this node). */
  private readonly processes: RunProcesses
  private readonly log = createLogger('node:control')

  constructor (private readonly d: ControlPlaneDeps) {
    this.commands = new CommandStore(d.store.commandBackend())
    this.processes = new RunProcesses({
      selfId: d.selfId,
      builds: () => d.monitor.snapshot().resources.llamacpp,
      modelFiles: d.modelFiles,
      maxProcesses: () => d.options.maxCommandProcesses,
      threads: d.options.threads,
      onStarted: engine => { d.hub.add(engine) },
      onStopped: async engine => { await d.hub.remove(engine) },
      audit: async (issuer, detail) => { await d.store.appendAudit({ kind: 'command_refused', peer: issuer, detail, verdict: 'rejected' }).catch(() => {}) }
    })
    this.executor = new CommandExecutor({
      privateKey: d.key,
      store: this.commands,
      authority: env => operatorAuthority(env, { selfId: d.selfId(), mode: d.mode, isMember: d.isMember, authorizeLeader: e => d.groups.authorize(e) }),
      handlers: this.handlers()
    })
  }

  async start (): Promise<void> {
    const audit = (protocol: string) => (peer: string, reason: string): void => {
      void this.d.store.appendAudit({ kind: 'wire_violation', peer, detail: `${protocol}: ${reason}`, verdict: 'rejected' }).catch(() => {})
    }
    await this.d.mesh.commands.serve(this.executor, { onViolation: audit(COMMAND_PROTOCOL) })
    await this.d.mesh.blob.serve(modelResolver(this.d.modelFiles), { onViolation: audit(BLOB_PROTOCOL) })
  }

  async stop (): Promise<void> {
    await this.executor.close()
    await this.processes.closeAll()
  }

  /**
   * Signs a command with this node's key and runs it on `target` (this node through the local
   * executor, or a peer over `/shepherd/cmd/1.0.0`). The result is signed by the executor.
   */
  async send (target: string, type: CommandType, payload: Record<string, unknown>, ctx: { group: string, term: number, ttlMs?: number, onOutput?: (line: string) => void, signal?: AbortSignal }): Promise<SignedResult> {
    const env = await createCommand(this.d.key, { type, payload, group: ctx.group, term: ctx.term, target, ttlMs: ctx.ttlMs ?? 60_000 })
    if (target === this.d.selfId()) return await this.executor.execute(env, { onOutput: ctx.onOutput })
    return await sendCommand(this.d.mesh.libp2p, target, env, { signal: ctx.signal, onOutput: ctx.onOutput })
  }

  async audit (opts: { limit?: number, before?: string } = {}): Promise<CommandAuditEntry[]> {
    return await this.commands.listAudit(opts)
  }

  private handlers (): Partial<CommandHandlers> {
    const d = this.d
    return {
      // Progress (transfer, loading, loaded or failed) is tracked for the deployment views.
      load_model: async (p, ctx) => await trackLoad(d.transfers, p.model, p.fingerprint ?? null, async () => {
        let engine = d.hub.engineFor(p.model)
        // A command that names a file gets that file or nothing: never another file of the same name.
        const own = p.fingerprint != null ? d.modelFiles().find(f => f.name === p.model) : undefined
        if (own != null && own.fingerprint !== p.fingerprint) {
          void d.store.appendAudit({ kind: 'model_fingerprint_mismatch', peer: ctx.issuer, detail: `load_model ${p.model}: asked for ${p.fingerprint}, this node's file is ${own.fingerprint}`, verdict: 'rejected' }).catch(() => {})
          throw new ShepherdError(`This node's '${p.model}' is another file (fingerprint ${own.fingerprint.slice(0, 16)}…), not ${String(p.fingerprint).slice(0, 16)}…`, { code: MODEL_FINGERPRINT_MISMATCH, status: 409 })
        }
        // Sources the command names are dialed only when they are members: a command never makes
        // this node fetch from (and so reveal itself to) a peer outside the mesh.
        const sources = (p.sources ?? []).filter(peer => d.isMember(peer))
        if (engine == null && p.fingerprint != null && (p.sources?.length ?? 0) > 0 && sources.length === 0) {
          throw new ShepherdError(`None of the sources named for '${p.model}' is a member of this mesh`, { code: SOURCE_NOT_MEMBER, status: 403 })
        }
        if (engine == null && p.fingerprint != null && sources.length > 0) {
          ctx.output(`pulling ${p.model} from ${sources.length} peer(s)`)
          await fs.mkdir(d.pullDir, { recursive: true })
          d.transfers.begin(p.model, p.fingerprint)
          const got = await pullModel(d, p.model, p.fingerprint, sources, { ...ctx, onProgress: (got, total) => { d.transfers.progress(p.model, got, total) } })
          ctx.output(`pulled ${got.transferredBytes} bytes from ${got.peer} (sha256 ${got.sha256.slice(0, 16)}…)`)
          await d.monitor.refresh()
          engine = d.hub.engineFor(p.model)
        }
        if (engine == null) throw new ModelNotFoundError(p.model)
        const started = performance.now()
        // A model loaded already (a keep-alive change, a retirement) is no load to show.
        if (!d.hub.models().some(x => x.id === p.model && x.state === 'loaded')) d.transfers.loading(p.model, p.fingerprint ?? null, d.modelFiles().find(f => f.name === p.model)?.sizeBytes ?? null)
        if (p.split != null) {
          // A split replica's head: tunnels to the workers first, then llama-server with --rpc.
          const path = d.modelFiles().find(f => f.name === p.model)?.path
          if (d.split == null || !isSplitCapable(engine) || path == null) throw new ShepherdError(`This node cannot head a split of '${p.model}' (it needs the llama-server engine and the file)`, { code: SPLIT_CODES.notSupported, status: 501 })
          const shards = await d.split.prepareHead(p.model, path, p.split, engine)
          ctx.output(`split over ${shards.length} nodes: ${shards.map(s => `${s.nodeId.slice(-6)} ${s.layers == null ? '-' : s.layers.join('..')}`).join(', ')}`)
        }
        let m
        try {
          m = await engine.load(p.model, { keepAliveMs: p.keepAliveMs, signal: ctx.signal })
        } catch (err) {
          if (p.split != null) await d.split?.releaseHead(p.model, true)
          throw err
        }
        ctx.output(`loaded ${p.model} in ${(performance.now() - started).toFixed(0)} ms`)
        return { model: m.id, state: m.state }
      }),
      serve_rpc: async (p, ctx) => {
        if (d.split == null) throw new ShepherdError('This node serves no split replicas', { code: SPLIT_CODES.notSupported, status: 501 })
        // A worker serves only what a leader assigned (or its own operator): a member's mere ask
        // would open its rpc-server, which has no authentication, to that member.
        const leader = ctx.issuer === d.selfId() || d.mesh.groups.some(g => d.groups.leaderOf(g).leader === ctx.issuer)
        if (!leader) throw new ShepherdError('serve_rpc is taken from a group leader only', { code: AUTHORITY_CODES.notProvenLeader, status: 403, type: 'permission_error' })
        if (!d.isMember(p.head)) throw new ShepherdError('the head of a split must be a member of this mesh', { code: SOURCE_NOT_MEMBER, status: 403, type: 'permission_error' })
        return await d.split.serveRpc(p.model, p.head, p.stop === true)
      },
      unload_model: async (p) => {
        await d.split?.releaseHead(p.model, false)
        const engine = d.hub.engineFor(p.model)
        if (engine == null) throw new ModelNotFoundError(p.model)
        return { unloaded: await engine.unload(p.model) }
      },
      scan_models: async () => {
        await d.monitor.refresh()
        return { models: d.hub.models().map(m => ({ id: m.id, state: m.state })) }
      },
      collect_logs: async (p, ctx) => {
        const lines = recentLogLines(p.lines ?? 200).filter(l => p.since == null || Date.parse(JSON.parse(l).t) >= p.since)
        for (const l of lines) ctx.output(l)
        return { lines: lines.length }
      },
      // A managed llama-server for one model, started on request (seed 000's run_llamacpp): its
      // model joins what this node serves, and stop_process ends it.
      run_llamacpp: async (p, ctx) => await this.processes.run(p, ctx),
      stop_process: async (p) => await this.processes.stop(p),
      update_config: updateConfigHandler({
        selfId: d.selfId,
        options: d.options as unknown as Record<string, unknown>,
        apply: u => {
          if (u.key === 'logLevel') setLogLevel(u.value)
          else if (u.key === 'maxConcurrency') d.hub.admission.setLimits(u.value, d.hub.admission.maxQueue)
          else if (u.key === 'maxQueue') d.hub.admission.setLimits(d.hub.admission.maxConcurrent, u.value)
          // Engines copied it when built: told again, or the change would reach nothing.
          else if (u.key === 'keepAliveMs') d.hub.setKeepAlive(u.value)
        },
        audit: async e => { await d.store.appendAudit(e) },
        log: this.log
      })
    }
  }
}
