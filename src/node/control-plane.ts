import fs from 'node:fs/promises'
import type { PrivateKey } from '@libp2p/interface'
import { randomUUID } from 'node:crypto'
import { ModelNotFoundError, ShepherdError } from '../errors.js'
import { LlamaServerEngine } from './engines/index.js'
import { createLogger, recentLogLines, setLogLevel } from '../logger.js'
import type { NodeOptions } from '../config/index.js'
import { BLOB_PROTOCOL, COMMAND_PROTOCOL, createCommand, sendCommand, type CommandType, type Mesh, type SignedResult } from '../p2p/index.js'
import { CommandExecutor, CommandStore, type CommandAuditEntry, type CommandHandlers } from './commands/index.js'
import type { EngineHub } from './engine-hub.js'
import type { GroupManager } from './groups/index.js'
import { fetchModel, modelResolver } from './model-transfer.js'
import type { ModelFile, ResourceMonitor } from './resources/index.js'
import type { Store } from './store.js'

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
}

/**
 * The node's side of signed commands: the executor that checks and runs them (with this node's
 * handlers), the `/shepherd/cmd` and `/shepherd/blob` services, and sending commands to peers.
 */
export class ControlPlane {
  readonly commands: CommandStore
  readonly executor: CommandExecutor
  /** llama-server processes started by run_llamacpp, by process id. */
  private readonly processes = new Map<string, { engine: LlamaServerEngine, pid: number, model: string }>()
  private readonly log = createLogger('node:control')

  constructor (private readonly d: ControlPlaneDeps) {
    this.commands = new CommandStore(d.store.commandBackend())
    this.executor = new CommandExecutor({
      privateKey: d.key,
      store: this.commands,
      authority: env => {
        if (env.issuer === d.selfId()) return { ok: true }
        if (!d.mesh.groups.includes(env.group)) return { ok: false, reason: `this node is not in group '${env.group}'` }
        const { leader, term } = d.groups.leaderOf(env.group)
        if (leader === env.issuer && term === env.term) return { ok: true }
        return { ok: false, reason: `the issuer is not the leader of '${env.group}' at term ${env.term}` }
      },
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
    await Promise.allSettled([...this.processes.values()].map(async p => { await p.engine.close() }))
    this.processes.clear()
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
      load_model: async (p, ctx) => {
        let engine = d.hub.engineFor(p.model)
        if (engine == null && p.fingerprint != null && (p.sources?.length ?? 0) > 0) {
          ctx.output(`pulling ${p.model} from ${p.sources!.length} peer(s)`)
          await fs.mkdir(d.pullDir, { recursive: true })
          const got = await fetchModel(d.mesh.libp2p, p.sources!, {
            name: p.model,
            fingerprint: p.fingerprint,
            destDir: d.pullDir,
            signal: ctx.signal
          })
          ctx.output(`pulled ${got.transferredBytes} bytes from ${got.peer} (sha256 ${got.sha256.slice(0, 16)}…)`)
          await d.monitor.refresh()
          engine = d.hub.engineFor(p.model)
        }
        if (engine == null) throw new ModelNotFoundError(p.model)
        const started = performance.now()
        const m = await engine.load(p.model, { keepAliveMs: p.keepAliveMs, signal: ctx.signal })
        ctx.output(`loaded ${p.model} in ${(performance.now() - started).toFixed(0)} ms`)
        return { model: m.id, state: m.state }
      },
      unload_model: async (p) => {
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
      run_llamacpp: async (p, ctx) => {
        const builds = d.monitor.snapshot().resources.llamacpp
        if (builds.length === 0) throw new ShepherdError('No llama.cpp build (llama-server) found on this node', { code: 'no_llamacpp_build', status: 409 })
        const file = d.modelFiles().find(f => f.name === p.model)
        if (file == null) throw new ModelNotFoundError(p.model)
        const id = `run-${randomUUID().slice(0, 8)}`
        const engine = new LlamaServerEngine({
          id,
          builds,
          listModelFiles: () => [{ name: p.model, path: file.path, sizeBytes: file.sizeBytes, fingerprint: file.fingerprint, contextLength: file.contextLength }],
          extraArgs: p.args ?? [],
          // Started by an operator or leader: it runs until stop_process, never idles out.
          keepAliveMs: Infinity,
          ...(p.port != null ? { pickPort: async () => p.port! } : {}),
          ...(d.options.threads > 0 ? { threads: d.options.threads } : {})
        })
        await engine.load(p.model, { keepAliveMs: Infinity, signal: ctx.signal })
        const pid = engine.pid(p.model)
        if (pid == null) {
          await engine.close()
          throw new ShepherdError('llama-server did not start', { code: 'process_failed', status: 500 })
        }
        this.processes.set(id, { engine, pid, model: p.model })
        d.hub.add(engine)
        ctx.output(`llama-server for ${p.model} running, pid ${pid} (${engine.build?.backend ?? 'cpu'} build)`)
        return { processId: id, pid, model: p.model, backend: engine.build?.backend ?? null }
      },
      stop_process: async (p) => {
        const entry = 'processId' in p
          ? [...this.processes.entries()].find(([id]) => id === p.processId)
          : [...this.processes.entries()].find(([, v]) => v.pid === p.pid)
        // Only processes this node started through run_llamacpp: never an arbitrary pid.
        if (entry == null) throw new ShepherdError('No process started by this node has that id', { code: 'process_not_found', status: 404 })
        const [id, proc] = entry
        this.processes.delete(id)
        await d.hub.remove(proc.engine)
        return { processId: id, pid: proc.pid, stopped: true }
      },
      update_config: async (p) => {
        switch (p.key) {
          case 'logLevel': setLogLevel(p.value); break
          case 'maxConcurrency': d.hub.admission.setLimits(p.value, d.hub.admission.maxQueue); break
          case 'maxQueue': d.hub.admission.setLimits(d.hub.admission.maxConcurrent, p.value); break
          default: break
        }
        ;(d.options as unknown as Record<string, unknown>)[p.key] = p.value
        this.log.info('config updated', { key: p.key })
        return { key: p.key, value: p.value }
      }
    }
  }
}
