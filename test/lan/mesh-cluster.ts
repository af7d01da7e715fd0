/**
 * Real `shepherd-mesh start` processes, one per namespace of a `NetnsLan`, driven through
 * their HTTP API from the root namespace. Shared by the LAN tests and `bench/lan-mesh.ts`.
 *
 * Every node runs with the product's defaults except what a LAN run must pin: its own data
 * dir, `--api-host 0.0.0.0` (the test process reaches it through the bridge), api port 9190,
 * listen `/ip4/0.0.0.0/tcp/9191` and mDNS every 1000 ms. No `--bootstrap`: peers find each
 * other by mDNS alone.
 */
import { existsSync, readFileSync } from 'node:fs'
import { mkdir, mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { dirname, join, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'
import { setTimeout as sleep } from 'node:timers/promises'
import { NetnsLan } from '../support/netns.js'
import { membershipArgs, type MembershipHarness } from '../support/cluster.js'
import type { LanNode, NsProcess } from '../support/netns.js'

export const REPO_ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..')
export const BIN = join(REPO_ROOT, 'bin', 'shepherd-mesh.js')
export const API_PORT = 9190
export const P2P_PORT = 9191

export type ApiPeerStatus = 'alive' | 'suspect' | 'dead' | 'left'

/** A peer as `GET /api/peers` describes it (only the fields these tests read are typed). */
export interface ApiPeer {
  id: string
  name: string
  status: ApiPeerStatus
  lastSeen: string
  rttMs: number | null
  addresses: string[]
  groups: string[]
  resources: {
    cpu: { cores: number }
    memory: { totalBytes: number }
    disk: unknown
    gpus: unknown[]
    llamacpp: unknown[]
  } | null
  models: Array<{ name: string, sizeBytes: number, architecture: string | null, quantization: string | null }>
}

/** Throws with a clear message when the node has not been built. */
export function assertNodeBuilt (): void {
  if (!existsSync(BIN)) throw new Error(`${BIN} is missing: the shepherd-mesh CLI is not in this tree yet`)
  if (!existsSync(join(REPO_ROOT, 'dist'))) throw new Error('dist/ is missing: run `npm run build` before the LAN tests')
}

/** The environment for a node: ours, minus any SHEPHERD_* setting that would override flags. */
function nodeEnv (): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {}
  for (const [k, v] of Object.entries(process.env)) {
    if (k.startsWith('SHEPHERD_') && k !== 'SHEPHERD_LOG') continue
    env[k] = v
  }
  return env
}

/** One running (or stopped) node. */
export interface MeshNode {
  index: number
  lanNode: LanNode
  dataDir: string
  modelsDir: string | null
  apiUrl: string
  /** Set from the ready line; stable across restarts with the same data dir. */
  peerId: string
  /** The `api=` part of the ready line. */
  announcedApi: string
  proc: NsProcess | null
  /** performance.now() when the current process was spawned, and when it printed its ready line. */
  spawnedAt: number
  readyAt: number
  /** The last few KB of the current process's stderr, for failure messages. */
  stderr: string
  /** Resolves when the current process exits. */
  exited: Promise<{ code: number | null, signal: NodeJS.Signals | null }>
}

export interface ClusterOptions {
  nodes: number
  /** Node index → a directory to pass as `--models-dir` (created if missing). */
  modelsDirs?: Record<number, string>
  /** How long a node may take to print its ready line. */
  startTimeoutMs?: number
  /** Appended to every node's `start` flags (a later flag overrides an earlier one). */
  extraArgs?: string[]
  /** Node index → flags for that node only (after `extraArgs`). */
  nodeArgs?: Record<number, string[]>
  /**
   * How the nodes become members of one mesh (see `MembershipHarness` in test/support/cluster.ts):
   * by default they share one swarm key (unattended admission); a node whose flags name
   * `--swarm-key` or `--open` gets exactly those.
   */
  membership?: MembershipHarness
}

const READY_LINE = /^shepherd-mesh (\S+) api=(\S+)$/

export class MeshCluster {
  readonly nodes: MeshNode[] = []
  private constructor (readonly lan: NetnsLan, private readonly root: string, private readonly startTimeoutMs: number, private readonly extraArgs: string[], private readonly nodeArgs: Record<number, string[]> = {}, private readonly membership: MembershipHarness = 'swarm-key') {}

  /** Builds the LAN and starts every node in parallel; resolves when all printed their ready line. */
  static async start (opts: ClusterOptions): Promise<MeshCluster> {
    assertNodeBuilt()
    const lan = await NetnsLan.create({ nodes: opts.nodes })
    const root = await mkdtemp(join(tmpdir(), 'shepherd-lan-'))
    const cluster = new MeshCluster(lan, root, opts.startTimeoutMs ?? 20_000, opts.extraArgs ?? [], opts.nodeArgs ?? {}, opts.membership ?? 'swarm-key')
    try {
      for (const lanNode of lan.nodes) {
        const dataDir = join(root, `node-${lanNode.index}`)
        await mkdir(dataDir, { recursive: true })
        const modelsDir = opts.modelsDirs?.[lanNode.index] ?? null
        if (modelsDir != null) await mkdir(modelsDir, { recursive: true })
        cluster.nodes.push({
          index: lanNode.index,
          lanNode,
          dataDir,
          modelsDir,
          apiUrl: `http://${lanNode.ip}:${API_PORT}`,
          peerId: '',
          announcedApi: '',
          proc: null,
          spawnedAt: 0,
          readyAt: 0,
          stderr: '',
          exited: Promise.resolve({ code: null, signal: null })
        })
      }
      await Promise.all(cluster.nodes.map(async n => { await cluster.startNode(n.index) }))
    } catch (err) {
      await cluster.destroy()
      throw err
    }
    return cluster
  }

  /** Where this cluster keeps data dirs; models dirs may live here too. */
  get tempRoot (): string { return this.root }

  /**
   * (Re)starts node `i` with its data dir and waits for the ready line. A restart must keep
   * the peer id; that is checked by the caller, which sees `peerId` before and after.
   */
  async startNode (i: number): Promise<MeshNode> {
    const node = this.nodes[i]
    const args = [
      BIN, 'start',
      '--data-dir', node.dataDir,
      '--name', `lan-${i}`,
      '--api-host', '0.0.0.0',
      '--api-port', String(API_PORT),
      '--listen', `/ip4/0.0.0.0/tcp/${P2P_PORT}`,
      '--mdns-interval-ms', '1000'
    ]
    if (node.modelsDir != null) args.push('--models-dir', node.modelsDir)
    const own = [...this.extraArgs, ...(this.nodeArgs[i] ?? [])]
    // Embedded unless the test names an engine (the default, auto, follows what is cached here).
    args.push(...await membershipArgs(this.membership, own), ...(own.includes('--engine') ? [] : ['--engine', 'embedded']), ...own)
    node.stderr = ''
    node.spawnedAt = performance.now()
    const proc = this.lan.spawn(i, process.execPath, args, { stdio: ['ignore', 'pipe', 'pipe'], env: nodeEnv() })
    node.proc = proc
    node.exited = new Promise(resolve => {
      proc.child.once('exit', (code, signal) => { resolve({ code, signal }) })
    })
    proc.child.stderr?.on('data', d => { node.stderr = (node.stderr + String(d)).slice(-8192) })
    const ready = new Promise<{ id: string, api: string }>((resolve, reject) => {
      let out = ''
      const timer = setTimeout(() => {
        reject(new Error(`node ${i} printed no ready line in ${this.startTimeoutMs} ms; stdout: ${out.slice(0, 500)}; stderr: ${node.stderr}`))
      }, this.startTimeoutMs)
      proc.child.stdout?.on('data', d => {
        if (out.length > 65536) return
        out += String(d)
        for (const line of out.split('\n')) {
          const m = READY_LINE.exec(line.trim())
          if (m != null) { clearTimeout(timer); resolve({ id: m[1], api: m[2] }) }
        }
      })
      proc.child.once('exit', (code, signal) => {
        clearTimeout(timer)
        reject(new Error(`node ${i} exited (code ${code}, signal ${signal}) before its ready line; stdout: ${out.slice(0, 500)}; stderr: ${node.stderr}`))
      })
    })
    const { id, api } = await ready
    node.readyAt = performance.now()
    node.peerId = id
    node.announcedApi = api
    return node
  }

  /** Sends `signal` to node `i`'s process (no waiting). */
  kill (i: number, signal: NodeJS.Signals): void {
    const child = this.nodes[i].proc?.child
    if (child == null || child.exitCode != null || child.signalCode != null) throw new Error(`node ${i} is not running`)
    child.kill(signal)
  }

  /** Resolves with node `i`'s exit, or rejects after `timeoutMs`. */
  async waitExit (i: number, timeoutMs: number): Promise<{ code: number | null, signal: NodeJS.Signals | null }> {
    return await Promise.race([
      this.nodes[i].exited,
      sleep(timeoutMs).then(() => { throw new Error(`node ${i} did not exit within ${timeoutMs} ms`) })
    ])
  }

  async getJson<T> (i: number, path: string, timeoutMs = 2000): Promise<T> {
    const res = await fetch(this.nodes[i].apiUrl + path, { signal: AbortSignal.timeout(timeoutMs) })
    if (!res.ok) throw new Error(`GET ${path} on node ${i}: HTTP ${res.status} ${await res.text()}`)
    return await res.json() as T
  }

  async peers (i: number): Promise<ApiPeer[]> {
    const body = await this.getJson<{ peers: ApiPeer[] }>(i, '/api/peers')
    if (!Array.isArray(body?.peers)) throw new Error(`GET /api/peers on node ${i} has no peers array: ${JSON.stringify(body).slice(0, 300)}`)
    return body.peers
  }

  async metricsText (i: number, timeoutMs = 2000): Promise<string> {
    const res = await fetch(this.nodes[i].apiUrl + '/metrics', { signal: AbortSignal.timeout(timeoutMs) })
    if (!res.ok) throw new Error(`GET /metrics on node ${i}: HTTP ${res.status}`)
    return await res.text()
  }

  /** Subscribes to node `i`'s `GET /api/events` stream; `close()` it when done. */
  async events (i: number): Promise<EventStream> {
    const ctrl = new AbortController()
    const res = await fetch(this.nodes[i].apiUrl + '/api/events', { signal: ctrl.signal, headers: { accept: 'text/event-stream' } })
    if (!res.ok || res.body == null) throw new Error(`GET /api/events on node ${i}: HTTP ${res.status}`)
    const type = res.headers.get('content-type') ?? ''
    if (!type.startsWith('text/event-stream')) throw new Error(`GET /api/events on node ${i}: content-type ${type}`)
    return new EventStream(res.body, ctrl)
  }

  /** Resident set size of node `i` from /proc (its pid is visible: only the network is namespaced). */
  rssBytes (i: number): number | null {
    const pid = this.nodes[i].proc?.child.pid
    if (pid == null) return null
    try {
      const m = /^VmRSS:\s+(\d+) kB$/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))
      return m != null ? Number(m[1]) * 1024 : null
    } catch {
      return null
    }
  }

  /**
   * Polls each observer's `/api/peers` until `check` holds for its list, and returns the
   * time (ms after `t0`, a performance.now() value) at which each observer first satisfied it.
   * Rejects after `timeoutMs` naming the observers that never did and what they last saw.
   */
  async waitUntil (observers: number[], check: (peers: ApiPeer[], observer: number) => boolean, opts: { t0: number, timeoutMs: number, intervalMs?: number, what: string }): Promise<Map<number, number>> {
    const interval = opts.intervalMs ?? 50
    const seenAt = new Map<number, number>()
    const last = new Map<number, string>()
    await Promise.all(observers.map(async o => {
      while (performance.now() - opts.t0 < opts.timeoutMs) {
        try {
          const peers = await this.peers(o)
          if (check(peers, o)) { seenAt.set(o, performance.now() - opts.t0); return }
          last.set(o, peers.map(p => `${p.name}:${p.status}${p.resources == null ? '(no snapshot)' : ''}`).join(' '))
        } catch (err) {
          last.set(o, `error: ${(err as Error).message}`)
        }
        await sleep(interval)
      }
    }))
    const missing = observers.filter(o => !seenAt.has(o))
    if (missing.length > 0) {
      const detail = missing.map(o => `node ${o} saw [${last.get(o) ?? 'nothing'}]; stderr: ${this.nodes[o].stderr.slice(-600)}`).join('\n')
      throw new Error(`${opts.what}: not reached within ${opts.timeoutMs} ms by ${missing.map(o => `node ${o}`).join(', ')}\n${detail}`)
    }
    return seenAt
  }

  /** Time until every observer reports peer `target` with `status` (max over observers). */
  async waitForStatus (observers: number[], target: number, status: ApiPeerStatus, opts: { t0: number, timeoutMs: number, intervalMs?: number }): Promise<number> {
    const id = this.nodes[target].peerId
    const seen = await this.waitUntil(observers, peers => peers.some(p => p.id === id && p.status === status), {
      ...opts,
      what: `node ${target} (${id}) ${status}`
    })
    return Math.max(...seen.values())
  }

  /** Time until every observer sees every other member of `members` alive with a snapshot. */
  async waitForConverged (members: number[], opts: { t0: number, timeoutMs: number, intervalMs?: number }): Promise<number> {
    const seen = await this.waitUntil(members, (peers, o) => members.filter(m => m !== o).every(m => {
      const p = peers.find(p => p.id === this.nodes[m].peerId)
      return p != null && p.status === 'alive' && p.resources != null
    }), { ...opts, what: 'every node sees all others alive with a snapshot' })
    return Math.max(...seen.values())
  }

  /** Kills everything, removes the namespaces, the bridge and the temp dirs. Never throws. */
  async destroy (): Promise<void> {
    await this.lan.destroy()
    await rm(this.root, { recursive: true, force: true }).catch(() => {})
  }
}

/** Sums every sample of a Prometheus metric (all label sets); null when absent. */
export function promSum (text: string, name: string, labels?: Record<string, string>): number | null {
  let sum: number | null = null
  for (const line of text.split('\n')) {
    if (line.startsWith('#')) continue
    const m = /^([a-zA-Z_:][\w:]*)(\{[^}]*\})?\s+(\S+)/.exec(line)
    if (m == null || m[1] !== name) continue
    if (labels != null) {
      const set = m[2] ?? ''
      if (!Object.entries(labels).every(([k, v]) => set.includes(`${k}="${v}"`))) continue
    }
    sum = (sum ?? 0) + Number(m[3])
  }
  return sum
}

export interface MeshEvent {
  event: string
  data: { id: string, name: string, status: ApiPeerStatus, at: string } & Record<string, unknown>
  /** performance.now() when it arrived. */
  receivedAt: number
}

/** A parsed Server-Sent Events stream of peer events. */
export class EventStream {
  readonly received: MeshEvent[] = []
  private readonly waiters = new Set<() => void>()
  private ended = false

  constructor (body: ReadableStream<Uint8Array>, private readonly ctrl: AbortController) {
    void this.pump(body)
  }

  private async pump (body: ReadableStream<Uint8Array>): Promise<void> {
    const decoder = new TextDecoder()
    let buf = ''
    try {
      for await (const chunk of body as unknown as AsyncIterable<Uint8Array>) {
        buf += decoder.decode(chunk, { stream: true }).replace(/\r\n/g, '\n')
        let sep: number
        while ((sep = buf.indexOf('\n\n')) >= 0) {
          const block = buf.slice(0, sep)
          buf = buf.slice(sep + 2)
          let event = 'message'
          const data: string[] = []
          for (const line of block.split('\n')) {
            if (line.startsWith('event:')) event = line.slice(6).trim()
            else if (line.startsWith('data:')) data.push(line.slice(5).replace(/^ /, ''))
          }
          if (data.length === 0) continue
          try {
            this.received.push({ event, data: JSON.parse(data.join('\n')), receivedAt: performance.now() })
          } catch {
            this.received.push({ event, data: { raw: data.join('\n') } as unknown as MeshEvent['data'], receivedAt: performance.now() })
          }
          for (const w of this.waiters) w()
        }
      }
    } catch {}
    this.ended = true
    for (const w of this.waiters) w()
  }

  /** Resolves with the first event (already received or future) matching `pred`. */
  async waitFor (pred: (e: MeshEvent) => boolean, timeoutMs: number, what: string): Promise<MeshEvent> {
    return await new Promise((resolve, reject) => {
      const check = (): boolean => {
        const hit = this.received.find(pred)
        if (hit != null) { done(); resolve(hit); return true }
        if (this.ended) { done(); reject(new Error(`event stream ended before ${what}; got ${this.describe()}`)); return true }
        return false
      }
      const timer = setTimeout(() => { done(); reject(new Error(`no ${what} within ${timeoutMs} ms; got ${this.describe()}`)) }, timeoutMs)
      const done = (): void => { clearTimeout(timer); this.waiters.delete(check) }
      if (!check()) this.waiters.add(check)
    })
  }

  private describe (): string {
    return '[' + this.received.map(e => `${e.event} ${e.data.name ?? ''}:${e.data.status ?? ''}`).join(', ') + ']'
  }

  close (): void {
    this.ctrl.abort()
  }
}
