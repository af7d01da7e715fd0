/**
 * Network partitions on the namespace LAN: a second bridge that a set of nodes is moved to, so
 * that each side keeps talking within itself (unicast and mDNS multicast) and hears nothing
 * from the other side, while the test process (root namespace) still reaches every node.
 *
 *   root ns:  bridge shb<pid> (10.213.x.254/24) ── veths of side A
 *             bridge shv<pid>x999 (same MAC, no address of its own) ── veths of side B
 *             route 10.213.x.<b>/32 dev shv<pid>x999 src 10.213.x.254, one per side-B node
 *
 * The second bridge takes the first one's MAC so the nodes' ARP entries for the test process's
 * address (10.213.x.254) stay right across a split and a heal; nodes on different sides cannot
 * reach each other: the root namespace answers ARP only for its own addresses and nothing in
 * the namespaces routes beyond the /24. No packet is dropped on the way (no RST, no FIN): each
 * side must notice the other by silence, as with a pulled cable between two switches.
 *
 * The second bridge's name fits the harness's veth pattern (`shv<pid>x<n>`, n ≥ 200 never used
 * by a node), so `sweepStaleLans()` removes it if this process dies without tearing down.
 */
import { execFile, execFileSync } from 'node:child_process'
import { accessSync, constants } from 'node:fs'
import { delimiter, join } from 'node:path'
import { promisify } from 'node:util'
import { NetnsError, type NetnsLan } from '../support/netns.js'

const execFileAsync = promisify(execFile)

/** Index part of the second bridge's name; far above any node index (nodes are < 200). */
const SIDE_B_INDEX = 999

/** Absolute path of a system tool (PATH, then the sbin directories), or the bare name. */
export function systemTool (name: string): string {
  for (const dir of (process.env.PATH ?? '').split(delimiter).concat(['/usr/sbin', '/sbin'])) {
    if (dir === '') continue
    try {
      accessSync(join(dir, name), constants.X_OK)
      return join(dir, name)
    } catch {}
  }
  return name
}

async function ip (args: string[]): Promise<string> {
  try {
    const { stdout } = await execFileAsync(systemTool('ip'), args, { encoding: 'utf8' })
    return stdout
  } catch (err) {
    const stderr = (err as { stderr?: string }).stderr?.trim() ?? ''
    throw new NetnsError(`ip ${args.join(' ')} failed: ${stderr !== '' ? stderr : (err as Error).message}`, 'netns_command_failed', err)
  }
}

const live = new Set<LanPartitioner>()
let exitHookInstalled = false

/** Splits a `NetnsLan` into two sides and heals it. Create with `LanPartitioner.create()`; `destroy()` it. */
export class LanPartitioner {
  /** Name of the second bridge (side B). */
  readonly bridge: string
  private isolated: number[] = []
  private destroyed = false

  private constructor (private readonly lan: NetnsLan) {
    this.bridge = `shv${lan.runId}x${SIDE_B_INDEX}`
  }

  /** Builds the (empty) second bridge next to the LAN's own. */
  static async create (lan: NetnsLan): Promise<LanPartitioner> {
    const p = new LanPartitioner(lan)
    live.add(p)
    if (!exitHookInstalled) {
      exitHookInstalled = true
      process.on('exit', () => { for (const x of live) x.destroySync() })
    }
    try {
      const mac = JSON.parse(await ip(['-j', 'link', 'show', 'dev', lan.bridge]))[0]?.address as string | undefined
      if (mac == null) throw new NetnsError(`no MAC address on ${lan.bridge}`, 'netns_command_failed')
      await ip(['link', 'add', p.bridge, 'type', 'bridge', 'forward_delay', '0'])
      await ip(['link', 'set', p.bridge, 'type', 'bridge', 'mcast_snooping', '0'])
      await ip(['link', 'set', p.bridge, 'address', mac])
      await ip(['link', 'set', p.bridge, 'up'])
    } catch (err) {
      p.destroySync()
      throw err
    }
    return p
  }

  /** Node indices currently cut off on side B (empty when healed). */
  get sideB (): number[] { return [...this.isolated] }

  /**
   * Moves `nodes` to side B. Everyone else stays on side A. Both sides keep their links up,
   * so nodes on the same side still reach each other.
   */
  async split (nodes: number[]): Promise<void> {
    if (this.isolated.length > 0) throw new NetnsError('the LAN is already split; heal() first', 'netns_busy')
    if (nodes.length === 0 || nodes.length >= this.lan.nodes.length) throw new NetnsError(`side B must have between 1 and ${this.lan.nodes.length - 1} nodes`, 'netns_bad_option')
    this.isolated = [...nodes]
    for (const i of nodes) {
      const n = this.lan.nodes[i]
      // Route first: the test process keeps reaching the node the moment its port moves.
      await ip(['route', 'replace', `${n.ip}/32`, 'dev', this.bridge, 'src', this.lan.bridgeIp])
    }
    await Promise.all(nodes.map(async i => { await ip(['link', 'set', this.lan.nodes[i].hostVeth, 'master', this.bridge]) }))
  }

  /** Puts every node back on the LAN's own bridge: one LAN again. */
  async heal (): Promise<void> {
    const nodes = this.isolated
    await Promise.all(nodes.map(async i => { await ip(['link', 'set', this.lan.nodes[i].hostVeth, 'master', this.lan.bridge]) }))
    for (const i of nodes) await ip(['route', 'del', `${this.lan.nodes[i].ip}/32`, 'dev', this.bridge]).catch(() => {})
    this.isolated = []
  }

  /** Removes the second bridge (after moving any node back). Idempotent; never throws. */
  async destroy (): Promise<void> {
    if (this.destroyed) return
    await this.heal().catch(() => {})
    this.destroySync()
  }

  /** Synchronous teardown for `exit` handlers: deleting the bridge frees its ports. */
  destroySync (): void {
    if (this.destroyed) return
    this.destroyed = true
    live.delete(this)
    try { execFileSync(systemTool('ip'), ['link', 'del', this.bridge], { stdio: 'ignore' }) } catch {}
  }
}
