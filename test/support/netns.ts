/**
 * A private LAN built from Linux network namespaces, for tests and benchmarks that need real
 * multicast (mDNS), real TCP and real link failures without touching the machine's network.
 *
 * Topology, per run (the creating process's pid names everything, so leftovers of a crashed
 * run can be told apart from a run that is still going):
 *
 *   root ns:  bridge `shb<pid>` (mcast_snooping off, 10.213.<x>.254/24)
 *                ├─ `shv<pid>x<i>` ──veth── ns `shns-<pid>-<i>`: eth0 10.213.<x>.<i+1>/24, lo up,
 *                ...                                            224.0.0.0/4 dev eth0 (no default route)
 *
 * The bridge address lets the test process reach every node's API directly. Snooping is off so
 * the bridge floods multicast like a dumb switch: nothing in the namespaces sends IGMP joins.
 *
 * Teardown always runs: `destroy()` from an `after` hook, and a synchronous fallback on process
 * `exit`, SIGINT and SIGTERM for LANs still alive. `sweepStaleLans()` removes what crashed runs
 * (whose pid no longer exists) left behind. Nothing is skipped: without root or `ip`, creating a
 * LAN throws a `NetnsError` saying so, and the test that asked for it fails.
 */
import { execFile, execFileSync, spawn } from 'node:child_process'
import type { ChildProcess, SpawnOptions } from 'node:child_process'
import { accessSync, constants } from 'node:fs'
import { delimiter, join } from 'node:path'
import { promisify } from 'node:util'
import { ShepherdError } from '../../src/errors.js'

const execFileAsync = promisify(execFile)

/** Failure to build, drive or tear down the namespace LAN. */
export class NetnsError extends ShepherdError {
  constructor (message: string, code = 'netns_failed', cause?: unknown) {
    super(message, { code, cause })
  }
}

/** Name prefixes; the sweep only ever touches names built from these. */
const NS_PREFIX = 'shns-'
const BRIDGE_PREFIX = 'shb'
const VETH_PREFIX = 'shv'
const PEER_PREFIX = 'shp'
const SUBNET_PREFIX = '10.213'
const BRIDGE_HOST = 254
/** Interface names are at most 15 bytes (IFNAMSIZ - 1): `shv` + 7-digit pid + `x` + 3 digits fits. */
const MAX_NODES = 200

export interface LanOptions {
  /** How many namespaces (nodes). 1 to 200. */
  nodes: number
}

/** One namespace on the LAN. */
export interface LanNode {
  /** 0-based. */
  index: number
  /** Namespace name, for `ip netns exec`. */
  ns: string
  /** IPv4 address of the node's eth0. */
  ip: string
  /** The bridge-side end of the node's veth pair (in the root namespace). */
  hostVeth: string
}

export interface NsProcess {
  child: ChildProcess
  node: LanNode
}

/** Why the current process cannot build namespaces, or null when it can. */
export function netnsUnsupportedReason (): string | null {
  if (process.platform !== 'linux') return `network namespaces need Linux (platform is ${process.platform})`
  if (typeof process.getuid !== 'function' || process.getuid() !== 0) {
    return `network namespace tests must run as root (uid is ${process.getuid?.() ?? 'unknown'}); run them as root, as CI does`
  }
  if (findExecutable('ip') == null) return '`ip` (iproute2) is not on PATH; install the iproute2 package'
  return null
}

/** Throws a `NetnsError` with a clear message when namespaces cannot be built here. */
export function assertNetnsSupport (): void {
  const reason = netnsUnsupportedReason()
  if (reason != null) throw new NetnsError(reason, 'netns_unsupported')
}

function findExecutable (name: string): string | null {
  for (const dir of (process.env.PATH ?? '').split(delimiter).concat(['/usr/sbin', '/sbin'])) {
    if (dir === '') continue
    const file = join(dir, name)
    try {
      accessSync(file, constants.X_OK)
      return file
    } catch {}
  }
  return null
}

function isAlive (pid: number): boolean {
  try {
    process.kill(pid, 0)
    return true
  } catch (err) {
    // EPERM means it exists but is not ours; as root that does not happen, but be safe.
    return (err as NodeJS.ErrnoException).code === 'EPERM'
  }
}

/** Absolute path of `ip`, so a PATH without the sbin directories still works. */
let ipPath: string | null = null
function ipBin (): string {
  ipPath ??= findExecutable('ip')
  if (ipPath == null) throw new NetnsError('`ip` (iproute2) is not on PATH; install the iproute2 package', 'netns_unsupported')
  return ipPath
}

function ipSync (args: string[]): string {
  return execFileSync(ipBin(), args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] })
}

function ipSyncQuiet (args: string[]): void {
  try { ipSync(args) } catch {}
}

async function ip (args: string[]): Promise<string> {
  try {
    const { stdout } = await execFileAsync(ipBin(), args, { encoding: 'utf8' })
    return stdout
  } catch (err) {
    const stderr = (err as { stderr?: string }).stderr?.trim() ?? ''
    throw new NetnsError(`ip ${args.join(' ')} failed: ${stderr !== '' ? stderr : (err as Error).message}`, 'netns_command_failed', err)
  }
}

async function tc (args: string[]): Promise<void> {
  const bin = findExecutable('tc')
  if (bin == null) throw new NetnsError('`tc` (iproute2) is not on PATH; install the iproute2 package', 'netns_unsupported')
  try {
    await execFileAsync(bin, args, { encoding: 'utf8' })
  } catch (err) {
    const stderr = (err as { stderr?: string }).stderr?.trim() ?? ''
    const hint = /qdisc kind is unknown/i.test(stderr) ? ' (the kernel lacks sch_netem)' : ''
    throw new NetnsError(`tc ${args.join(' ')} failed: ${stderr}${hint}`, 'netns_command_failed', err)
  }
}

/** Pids of every process inside a namespace (all of them, not only ours). */
function nsPidsSync (ns: string): number[] {
  try {
    return ipSync(['netns', 'pids', ns]).split(/\s+/).filter(s => s !== '').map(Number)
  } catch {
    return []
  }
}

function linkExistsSync (name: string): boolean {
  try {
    ipSync(['link', 'show', 'dev', name])
    return true
  } catch {
    return false
  }
}

function killPidsSync (pids: number[]): void {
  for (const pid of pids) {
    try { process.kill(pid, 'SIGKILL') } catch {}
  }
}

/**
 * Deletes namespaces, bridges and veths that earlier runs left behind, i.e. those whose
 * creating pid no longer exists. Runs that are still going are left alone.
 * Returns the names it removed.
 */
export function sweepStaleLans (): string[] {
  const removed: string[] = []
  let namespaces: string[] = []
  try {
    namespaces = ipSync(['netns', 'list']).split('\n').map(l => l.split(' ')[0]).filter(n => n !== '')
  } catch {}
  for (const ns of namespaces) {
    const m = new RegExp(`^${NS_PREFIX}(\\d+)-\\d+$`).exec(ns)
    if (m == null || isAlive(Number(m[1]))) continue
    killPidsSync(nsPidsSync(ns))
    ipSyncQuiet(['netns', 'del', ns])
    removed.push(ns)
  }
  let links: string[] = []
  try {
    links = ipSync(['-o', 'link', 'show']).split('\n')
      .map(l => /^\d+:\s+([^:@\s]+)/.exec(l)?.[1])
      .filter((n): n is string => n != null)
  } catch {}
  const ours = new RegExp(`^(?:${BRIDGE_PREFIX}(\\d+)|(?:${VETH_PREFIX}|${PEER_PREFIX})(\\d+)x\\d+)$`)
  for (const link of links) {
    const m = ours.exec(link)
    if (m == null) continue
    if (isAlive(Number(m[1] ?? m[2]))) continue
    ipSyncQuiet(['link', 'del', link])
    removed.push(link)
  }
  return removed
}

/** Third octet of 10.213.x.0/24 not used by any address in the root namespace. */
function pickSubnetOctet (pid: number): number {
  let used = ''
  try { used = ipSync(['-4', '-o', 'addr', 'show']) } catch {}
  for (let k = 0; k < 250; k++) {
    const octet = 1 + ((pid + k) % 250)
    if (!used.includes(` ${SUBNET_PREFIX}.${octet}.`)) return octet
  }
  throw new NetnsError(`no free ${SUBNET_PREFIX}.x.0/24 subnet in the root namespace`)
}

const liveLans = new Set<NetnsLan>()
let exitHooksInstalled = false

function installExitHooks (): void {
  if (exitHooksInstalled) return
  exitHooksInstalled = true
  process.on('exit', () => {
    for (const lan of liveLans) lan.destroySync()
  })
  for (const signal of ['SIGINT', 'SIGTERM'] as const) {
    process.once(signal, () => {
      for (const lan of liveLans) lan.destroySync()
      // Re-raise so the exit status still says which signal ended us.
      process.kill(process.pid, signal)
    })
  }
}

/** A built LAN. Create with `NetnsLan.create()`; always `destroy()` it. */
export class NetnsLan {
  readonly bridge: string
  readonly bridgeIp: string
  readonly subnet: string
  readonly nodes: LanNode[] = []
  private readonly namespaces: string[] = []
  private readonly links: string[] = []
  private readonly processes = new Set<ChildProcess>()
  private destroyed = false

  private constructor (readonly runId: number, octet: number) {
    this.bridge = `${BRIDGE_PREFIX}${runId}`
    this.subnet = `${SUBNET_PREFIX}.${octet}`
    this.bridgeIp = `${this.subnet}.${BRIDGE_HOST}`
  }

  /**
   * Builds the bridge and `opts.nodes` namespaces. Sweeps leftovers of crashed runs first.
   * On any failure it tears down what it built and throws.
   */
  static async create (opts: LanOptions): Promise<NetnsLan> {
    assertNetnsSupport()
    if (!Number.isInteger(opts.nodes) || opts.nodes < 1 || opts.nodes > MAX_NODES) {
      throw new NetnsError(`nodes must be an integer in [1, ${MAX_NODES}], got ${opts.nodes}`, 'netns_bad_option')
    }
    sweepStaleLans()
    // Names carry the pid and nothing else (IFNAMSIZ leaves no room for more), so one
    // process holds one LAN at a time: a bench building a second size destroys the first.
    for (const lan of liveLans) {
      if (lan.runId === process.pid) throw new NetnsError('destroy the previous NetnsLan of this process before creating another', 'netns_busy')
    }
    const lan = new NetnsLan(process.pid, pickSubnetOctet(process.pid))
    liveLans.add(lan)
    installExitHooks()
    try {
      await lan.build(opts.nodes)
    } catch (err) {
      await lan.destroy()
      throw err
    }
    return lan
  }

  private async build (count: number): Promise<void> {
    const br = this.bridge
    await ip(['link', 'add', br, 'type', 'bridge', 'forward_delay', '0'])
    this.links.push(br)
    await ip(['link', 'set', br, 'type', 'bridge', 'mcast_snooping', '0'])
    await ip(['addr', 'add', `${this.bridgeIp}/24`, 'dev', br])
    await ip(['link', 'set', br, 'up'])
    // Namespaces are independent; build them a few at a time to keep setup short.
    const indices = Array.from({ length: count }, (_, i) => i)
    for (let start = 0; start < count; start += 8) {
      await Promise.all(indices.slice(start, start + 8).map(async i => { await this.addNamespace(i) }))
    }
    this.nodes.sort((a, b) => a.index - b.index)
  }

  private async addNamespace (i: number): Promise<void> {
    const ns = `${NS_PREFIX}${this.runId}-${i}`
    const hostVeth = `${VETH_PREFIX}${this.runId}x${i}`
    const peer = `${PEER_PREFIX}${this.runId}x${i}`
    const addr = `${this.subnet}.${i + 1}`
    await ip(['netns', 'add', ns])
    this.namespaces.push(ns)
    await ip(['link', 'add', hostVeth, 'type', 'veth', 'peer', 'name', peer])
    this.links.push(hostVeth)
    await ip(['link', 'set', peer, 'netns', ns])
    await ip(['-n', ns, 'link', 'set', peer, 'name', 'eth0'])
    await ip(['-n', ns, 'addr', 'add', `${addr}/24`, 'dev', 'eth0'])
    await ip(['-n', ns, 'link', 'set', 'lo', 'up'])
    await ip(['-n', ns, 'link', 'set', 'eth0', 'up'])
    // No default route in the namespace; multicast (mDNS) needs a route of its own.
    await ip(['-n', ns, 'route', 'add', '224.0.0.0/4', 'dev', 'eth0'])
    await ip(['link', 'set', hostVeth, 'master', this.bridge])
    await ip(['link', 'set', hostVeth, 'up'])
    this.nodes.push({ index: i, ns, ip: addr, hostVeth })
  }

  private node (i: number): LanNode {
    const node = this.nodes[i]
    if (node == null) throw new NetnsError(`no node ${i} on this LAN (it has ${this.nodes.length})`, 'netns_bad_option')
    return node
  }

  /**
   * Starts `command args...` inside node `i`'s namespace (`ip netns exec`, which execs, so
   * the child's pid is the command's own). The process is killed on teardown.
   */
  spawn (i: number, command: string, args: string[], opts: SpawnOptions = {}): NsProcess {
    const node = this.node(i)
    if (this.destroyed) throw new NetnsError('LAN already destroyed', 'netns_destroyed')
    const child = spawn(ipBin(), ['netns', 'exec', node.ns, command, ...args], { stdio: ['ignore', 'pipe', 'pipe'], ...opts })
    this.processes.add(child)
    child.once('exit', () => { this.processes.delete(child) })
    return { child, node }
  }

  /** Runs a command inside node `i`'s namespace and returns its stdout. */
  async exec (i: number, command: string, args: string[]): Promise<string> {
    return await ip(['netns', 'exec', this.node(i).ns, command, ...args])
  }

  /**
   * Takes node `i` off the LAN silently: its bridge-side veth goes down, so nothing it sends
   * arrives and nothing reaches it, while inside the namespace eth0 keeps its address and
   * routes (it only loses carrier). No FIN, no RST: peers must notice by silence.
   */
  async linkDown (i: number): Promise<void> {
    await ip(['link', 'set', this.node(i).hostVeth, 'down'])
  }

  /** Puts node `i` back on the LAN. */
  async linkUp (i: number): Promise<void> {
    await ip(['link', 'set', this.node(i).hostVeth, 'up'])
  }

  /**
   * Drops `percent`% of packets in both directions on node `i`'s link (netem on both veth
   * ends). Needs the kernel's sch_netem; throws a `NetnsError` saying so when it is missing.
   */
  async setLoss (i: number, percent: number, opts: { delayMs?: number } = {}): Promise<void> {
    if (!(percent >= 0 && percent <= 100)) throw new NetnsError(`loss percent must be in [0, 100], got ${percent}`, 'netns_bad_option')
    const node = this.node(i)
    const netem = ['netem', 'loss', `${percent}%`]
    if (opts.delayMs != null) netem.push('delay', `${opts.delayMs}ms`)
    await tc(['qdisc', 'replace', 'dev', node.hostVeth, 'root', ...netem])
    await ip(['netns', 'exec', node.ns, findExecutable('tc') ?? 'tc', 'qdisc', 'replace', 'dev', 'eth0', 'root', ...netem])
  }

  /** Removes what `setLoss` added. */
  async clearLoss (i: number): Promise<void> {
    const node = this.node(i)
    const tcBin = findExecutable('tc') ?? 'tc'
    await execFileAsync(tcBin, ['qdisc', 'del', 'dev', node.hostVeth, 'root']).catch(() => {})
    await execFileAsync(ipBin(), ['netns', 'exec', node.ns, tcBin, 'qdisc', 'del', 'dev', 'eth0', 'root']).catch(() => {})
  }

  /**
   * Kills every process in the namespaces (ours and anything they started), then deletes the
   * namespaces (taking their veths with them) and the bridge. Idempotent; never throws.
   */
  async destroy (): Promise<void> {
    const exits = [...this.processes].map(async child => {
      if (child.exitCode != null || child.signalCode != null) return
      await new Promise<void>(resolve => {
        child.once('exit', () => { resolve() })
        setTimeout(resolve, 2000).unref()
      })
    })
    this.destroySync()
    await Promise.all(exits)
  }

  /** Synchronous teardown, usable from an `exit` handler. Idempotent; never throws. */
  destroySync (): void {
    if (this.destroyed) return
    this.destroyed = true
    for (const child of this.processes) {
      try { child.kill('SIGKILL') } catch {}
    }
    for (const ns of this.namespaces) killPidsSync(nsPidsSync(ns))
    for (const ns of this.namespaces) ipSyncQuiet(['netns', 'del', ns])
    // Deleting a namespace takes its veth pair along; what remains is the bridge, and veths
    // that a failed build left in the root namespace.
    for (const link of this.links.reverse()) {
      if (linkExistsSync(link)) ipSyncQuiet(['link', 'del', link])
    }
    liveLans.delete(this)
  }
}
