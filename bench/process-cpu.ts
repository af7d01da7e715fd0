/**
 * CPU time a process has used, from /proc/<pid>/stat (Linux): user + system, in ms. On a shared
 * machine, CPU per request is steadier than latency, which also counts time spent waiting for a core.
 */
import { readFileSync } from 'node:fs'

/** Kernel clock ticks per second for /proc/<pid>/stat times; 100 on every Linux we run on. */
const CLK_TCK = 100

/** User + system CPU ms used by `pid` so far; NaN when unreadable (not Linux, process gone). */
export function cpuMs (pid: number | undefined): number {
  if (pid === undefined) return NaN
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8')
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
    return (Number(fields[11]) + Number(fields[12])) * 1000 / CLK_TCK
  } catch {
    return NaN
  }
}
