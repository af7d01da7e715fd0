/**
 * Keeps the host node on cores of its own during the routing bench. On a LAN the entry node is
 * another machine; on one small box the entry node, the client and the host would otherwise take
 * CPU from each other, and the hop would be charged for the host's engine waiting for a core.
 * Linux `taskset` only; `BENCH_PIN=0` runs everything unpinned.
 */
import { execFileSync } from 'node:child_process'
import { cpus } from 'node:os'

export interface PinPlan {
  /** Cores of the host node, as a taskset list. */
  host: string
  /** Cores of everything else (the bench process, the entry node). */
  rest: string
}

/** The split: the last core for the host, the others for the rest; none with one core, no taskset, or BENCH_PIN=0. */
export function pinPlan (): PinPlan | undefined {
  const n = cpus().length
  if (process.env.BENCH_PIN === '0' || n < 2) return undefined
  try {
    execFileSync('taskset', ['-p', String(process.pid)], { stdio: 'ignore' })
  } catch {
    return undefined
  }
  return { host: String(n - 1), rest: n === 2 ? '0' : `0-${n - 2}` }
}

/** Pins every thread of `pid` to `cores`; threads it starts later inherit the mask. */
export function pin (pid: number | undefined, cores: string): void {
  if (pid === undefined) return
  execFileSync('taskset', ['-a', '-p', '-c', cores, String(pid)], { stdio: 'ignore' })
}
