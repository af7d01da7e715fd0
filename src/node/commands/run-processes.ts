/**
 * The processes `run_llamacpp` commands start (issue 11 item 4): at most `maxProcesses` at
 * once, starts under way included (twelve concurrent commands once started twelve servers);
 * the node's own flags win over the command's (see src/node/engines/llama-args.ts); a remote
 * issuer may not pick the port or the local-only flags. Each child is tied to the node (it dies
 * with it, kill -9 included) by the llama-server engine's spawn.
 */
import { randomUUID } from 'node:crypto'
import { CommandValueRefusedError, ModelNotFoundError, ProcessLimitError, ShepherdError } from '../../errors.js'
import { LlamaServerEngine } from '../engines/index.js'
import type { LlamacppBuild, ModelFile } from '../resources/index.js'
import type { HandlerContext } from './handlers.js'
import { checkLlamacppArgs, type RunLlamacppPayload, type StopProcessPayload } from './payloads.js'

export interface RunProcessesDeps {
  /** This node's peer id: a command from anyone else is remote. */
  selfId: () => string
  builds: () => LlamacppBuild[]
  modelFiles: () => ModelFile[]
  /** The most processes started by commands running (or starting) at once. */
  maxProcesses: () => number
  /** `--threads` of each child; 0 lets the engine choose. */
  threads: number
  /** Called once a child serves: its engine joins what the node serves. */
  onStarted: (engine: LlamaServerEngine) => void
  /** Called when a child is stopped: its engine leaves, and closes (which ends the child). */
  onStopped: (engine: LlamaServerEngine) => Promise<void>
  /** Audits a refusal (the executor audits the command's outcome too; this names why). */
  audit: (issuer: string, detail: string) => Promise<void>
}

export interface RunningCommandProcess { engine: LlamaServerEngine, pid: number, model: string }

/** The run_llamacpp and stop_process handlers' state: the processes commands started, capped. */
export class RunProcesses {
  private readonly processes = new Map<string, RunningCommandProcess>()
  /** Starts under way: they count against the cap before their child exists. */
  private starting = 0

  constructor (private readonly d: RunProcessesDeps) {}

  /** Processes running or starting: what counts against the cap. */
  get size (): number { return this.processes.size + this.starting }

  /** Starts llama-server for `p.model` (see the module comment for the checks); resolves once it serves. */
  async run (p: RunLlamacppPayload, ctx: HandlerContext): Promise<Record<string, unknown>> {
    const remote = ctx.issuer !== this.d.selfId()
    if (remote && p.port != null) await this.refuse(ctx.issuer, 'the port is chosen by this node, not by a remote issuer')
    const check = checkLlamacppArgs(p.args ?? [], { remote })
    if (!check.ok) await this.refuse(ctx.issuer, check.message)
    const limit = this.d.maxProcesses()
    if (this.size >= limit) {
      await this.d.audit(ctx.issuer, `run_llamacpp refused: ${this.size} of ${limit} command processes in use`)
      throw new ProcessLimitError(limit)
    }
    const builds = this.d.builds()
    if (builds.length === 0) throw new ShepherdError('No llama.cpp build (llama-server) found on this node', { code: 'no_llamacpp_build', status: 409 })
    const file = this.d.modelFiles().find(f => f.name === p.model)
    if (file == null) throw new ModelNotFoundError(p.model)
    this.starting++
    let engine: LlamaServerEngine | undefined
    try {
      const id = `run-${randomUUID().slice(0, 8)}`
      engine = new LlamaServerEngine({
        id,
        builds,
        listModelFiles: () => [{ name: p.model, path: file.path, sizeBytes: file.sizeBytes, fingerprint: file.fingerprint, contextLength: file.contextLength }],
        extraArgs: p.args ?? [],
        // Started by an operator or leader: it runs until stop_process, never idles out.
        keepAliveMs: Infinity,
        ...(p.port != null ? { pickPort: async () => p.port! } : {}),
        ...(this.d.threads > 0 ? { threads: this.d.threads } : {})
      })
      // No keep-alive here: one would pin the model, making it count as a deployment's replica;
      // the engine's own keep-alive (Infinity) already keeps it until stop_process.
      await engine.load(p.model, { signal: ctx.signal })
      const pid = engine.pid(p.model)
      if (pid == null) throw new ShepherdError('llama-server did not start', { code: 'process_failed', status: 500 })
      this.processes.set(id, { engine, pid, model: p.model })
      this.d.onStarted(engine)
      ctx.output(`llama-server for ${p.model} running, pid ${pid} (${engine.build?.backend ?? 'cpu'} build)`)
      return { processId: id, pid, model: p.model, backend: engine.build?.backend ?? null }
    } catch (err) {
      await engine?.close().catch(() => {})
      throw err
    } finally {
      this.starting--
    }
  }

  /** Stops one process this node started through run_llamacpp: never an arbitrary pid. */
  async stop (p: StopProcessPayload): Promise<Record<string, unknown>> {
    const entry = 'processId' in p
      ? [...this.processes.entries()].find(([id]) => id === p.processId)
      : [...this.processes.entries()].find(([, v]) => v.pid === p.pid)
    if (entry == null) throw new ShepherdError('No process started by this node has that id', { code: 'process_not_found', status: 404 })
    const [id, proc] = entry
    this.processes.delete(id)
    await this.d.onStopped(proc.engine)
    return { processId: id, pid: proc.pid, stopped: true }
  }

  /** Ends every process (the node is stopping). */
  async closeAll (): Promise<void> {
    const all = [...this.processes.values()]
    this.processes.clear()
    await Promise.allSettled(all.map(async p => { await p.engine.close() }))
  }

  private async refuse (issuer: string, message: string): Promise<never> {
    await this.d.audit(issuer, `run_llamacpp refused: ${message}`)
    throw new CommandValueRefusedError(message, 'llamacpp_flag_refused', 'args')
  }
}
