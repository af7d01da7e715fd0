/**
 * Child processes that die with their node, kill -9 included (issue 11 item 4).
 *
 * Node has no `prctl(PR_SET_PDEATHSIG)`, and a child of a process killed with SIGKILL is simply
 * re-parented: nothing in the node can run then. So a child is tied to the node from outside:
 * - `setpriv --pdeathsig KILL` (util-linux) when it is there: it sets the death signal on itself,
 *   checks the node is still its parent (a node killed before that leaves no signal to come) and
 *   execs the binary, so the child keeps its pid and the kernel kills it when the node dies.
 * - Otherwise a watchdog: a `sh` that reads the stdin pipe the node holds open; the node dying
 *   closes the pipe, `read` returns, and the watchdog kills the child's process group.
 * Either way the child leads its own process group, and stopping it signals the whole group, so
 * anything it forked goes with it.
 */
import { spawn, spawnSync, type ChildProcess, type SpawnOptions } from 'node:child_process'

/** How a child is tied to its node: `auto` picks setpriv when it supports `--pdeathsig`, else the watchdog. */
export type TieMode = 'auto' | 'setpriv' | 'watchdog'

export interface TiedChild {
  child: ChildProcess
  /** The child's pid (also its process group id); -1 when it could not be started. */
  pid: number
  /** How it is tied: what `auto` resolved to. */
  tie: 'setpriv' | 'watchdog'
  /** Signals the child's process group (the child and anything it forked); ignores a group already gone. */
  kill: (signal?: NodeJS.Signals) => void
}

let setprivWorks: boolean | undefined

/**
 * Run between setpriv's prctl and the binary: the death signal only covers a parent that dies
 * after it is set, so a node killed in the first instants after the spawn would leave the child
 * re-parented and alive. The shell checks that its parent is still the node (`$1`) and then
 * execs the binary (`$0`) with the rest, keeping the pid.
 */
const PARENT_CHECK = '[ "$PPID" = "$1" ] || exit 1; shift; exec "$0" "$@"'

/** Whether `setpriv` is installed and knows `--pdeathsig` (util-linux 2.33+; none on macOS). */
export function hasSetprivPdeathsig (): boolean {
  if (setprivWorks === undefined) {
    if (process.platform !== 'linux') return (setprivWorks = false)
    const r = spawnSync('setpriv', ['--help'], { encoding: 'utf8', timeout: 5000 })
    setprivWorks = r.status === 0 && `${r.stdout}${r.stderr}`.includes('--pdeathsig')
  }
  return setprivWorks
}

/** Every tied child still running, killed (by group) if this process exits without stopping them. */
const live = new Set<TiedChild>()
let exitHookInstalled = false

function installExitHook (): void {
  if (exitHookInstalled) return
  exitHookInstalled = true
  process.once('exit', () => {
    for (const t of live) t.kill('SIGKILL')
  })
}

/**
 * Spawns `command args` as the leader of its own process group, tied to this process so it
 * dies when this process dies, however it dies. `options.detached` is forced (a new group);
 * `options.stdio` is kept as given.
 */
export function spawnTied (command: string, args: readonly string[], options: SpawnOptions = {}, mode: TieMode = 'auto'): TiedChild {
  const tie = mode === 'auto' ? (hasSetprivPdeathsig() ? 'setpriv' : 'watchdog') : mode
  const child = tie === 'setpriv'
    ? spawn('setpriv', ['--pdeathsig', 'KILL', '--', 'sh', '-c', PARENT_CHECK, command, String(process.pid), ...args], { ...options, detached: true })
    : spawn(command, [...args], { ...options, detached: true })
  const pid = child.pid ?? -1
  let exited = false
  const t: TiedChild = {
    child,
    pid,
    tie,
    kill: (signal = 'SIGTERM') => {
      if (pid <= 0 || exited) return
      try {
        process.kill(-pid, signal)
      } catch {
        // The group is gone (or never formed): signal the child itself as a last resort.
        try { child.kill(signal) } catch {}
      }
    }
  }
  if (pid <= 0) return t
  live.add(t)
  installExitHook()
  let watchdog: ChildProcess | undefined
  if (tie === 'watchdog') watchdog = startWatchdog(pid)
  child.once('exit', () => {
    exited = true
    live.delete(t)
    // The child is gone: its watchdog must not outlive it (the group id could be reused).
    if (watchdog !== undefined) { try { watchdog.kill('SIGKILL') } catch {} }
  })
  child.once('error', () => {
    exited = true
    live.delete(t)
    if (watchdog !== undefined) { try { watchdog.kill('SIGKILL') } catch {} }
  })
  return t
}

/**
 * A `sh` that waits for EOF on the pipe from this process, then kills group `pgid`. The pipe
 * ends only when this process dies (or the watchdog is killed when the child exits first).
 */
function startWatchdog (pgid: number): ChildProcess {
  const w = spawn('sh', ['-c', 'read -r _ ; kill -9 -"$1" 2>/dev/null', 'shepherd-watchdog', String(pgid)], {
    stdio: ['pipe', 'ignore', 'ignore'],
    detached: true
  })
  w.on('error', () => {})
  w.stdin?.on('error', () => {})
  // Neither the watchdog nor its pipe may keep this process alive.
  w.unref()
  ;(w.stdin as unknown as { unref?: () => void } | null)?.unref?.()
  return w
}
