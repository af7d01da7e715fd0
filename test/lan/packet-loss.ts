/**
 * Random packet loss on a namespace node's link, without sch_netem (some kernels, this VM's
 * among them, lack it; they also lack the prio qdisc, u32/matchall and the gact action).
 *
 * What it uses instead: a `clsact` qdisc on the node's bridge-side veth with a classic-BPF
 * `cls_bpf` filter in direct-action mode on both hooks (egress: towards the node; ingress: from
 * the node). The program reads the kernel's per-packet random number (the `SKF_AD_RANDOM`
 * ancillary load) and returns TC_ACT_SHOT below a threshold, TC_ACT_OK otherwise:
 *
 *   ld  [SKF_AD_OFF + SKF_AD_RANDOM]   ; 0x20 0 0 0xfffff038
 *   jge #threshold, pass, drop         ; 0x35 0 1 threshold
 *   pass: ret #0                       ; TC_ACT_OK
 *   drop: ret #2                       ; TC_ACT_SHOT
 *
 * Needs only iproute2's `tc` and a kernel with CONFIG_NET_SCH_INGRESS (clsact) and
 * CONFIG_NET_CLS_BPF, which Debian's and Ubuntu's kernels have. When that fails, netem (the
 * harness's `setLoss`) is tried; when both fail, the error names both causes.
 */
import { execFile } from 'node:child_process'
import { promisify } from 'node:util'
import { NetnsError, type NetnsLan } from '../support/netns.js'
import { systemTool } from './partition.js'

const execFileAsync = promisify(execFile)

/** `SKF_AD_OFF + SKF_AD_RANDOM` (-0x1000 + 56) as an unsigned 32-bit constant. */
const SKF_AD_RANDOM = 0xfffff038
const TC_ACT_OK = 0
const TC_ACT_SHOT = 2

/** How the loss was made, for reports. */
export type LossMechanism = 'clsact+cls_bpf' | 'netem'

async function tc (args: string[]): Promise<void> {
  try {
    await execFileAsync(systemTool('tc'), args, { encoding: 'utf8' })
  } catch (err) {
    const stderr = (err as { stderr?: string }).stderr?.trim() ?? ''
    throw new NetnsError(`tc ${args.join(' ')} failed: ${stderr !== '' ? stderr : (err as Error).message}`, 'netns_command_failed', err)
  }
}

/** The classic-BPF program, in tc's `bytecode` notation, that drops `percent`% of packets. */
export function lossBytecode (percent: number): string {
  const threshold = Math.min(0xffffffff, Math.round((percent / 100) * 2 ** 32))
  return `4,32 0 0 ${SKF_AD_RANDOM},53 0 1 ${threshold},6 0 0 ${TC_ACT_OK},6 0 0 ${TC_ACT_SHOT}`
}

/**
 * Drops `percent`% of node `i`'s packets, each direction independently. Replaces any loss set
 * before on that node. Returns the mechanism used.
 */
export async function addPacketLoss (lan: NetnsLan, i: number, percent: number): Promise<LossMechanism> {
  if (!(percent >= 0 && percent <= 100)) throw new NetnsError(`loss percent must be in [0, 100], got ${percent}`, 'netns_bad_option')
  const dev = lan.nodes[i]?.hostVeth
  if (dev == null) throw new NetnsError(`no node ${i} on this LAN`, 'netns_bad_option')
  await clearPacketLoss(lan, i)
  try {
    await tc(['qdisc', 'add', 'dev', dev, 'clsact'])
    for (const hook of ['ingress', 'egress']) {
      await tc(['filter', 'add', 'dev', dev, hook, 'bpf', 'da', 'bytecode', lossBytecode(percent)])
    }
    return 'clsact+cls_bpf'
  } catch (bpfErr) {
    await clearPacketLoss(lan, i)
    try {
      await lan.setLoss(i, percent)
      return 'netem'
    } catch (netemErr) {
      await clearPacketLoss(lan, i)
      throw new NetnsError(`no way to drop packets here: ${(bpfErr as Error).message}; and ${(netemErr as Error).message}`, 'netns_unsupported', bpfErr)
    }
  }
}

/** Removes what `addPacketLoss` added on node `i`. Never throws. */
export async function clearPacketLoss (lan: NetnsLan, i: number): Promise<void> {
  const dev = lan.nodes[i]?.hostVeth
  if (dev == null) return
  await tc(['qdisc', 'del', 'dev', dev, 'clsact']).catch(() => {})
  await lan.clearLoss(i).catch(() => {})
}
