/**
 * `npx shepherd-mesh start` runs this process as npm → sh → node. A SIGTERM sent to npm (systemd,
 * docker, `kill $!` all signal the process they started) ends npm but reaches neither sh nor this
 * process, which kept running with its ports held. Under npx this process therefore watches the
 * npm process it runs under and stops cleanly once it is gone. Linux reads the ancestry from /proc;
 * elsewhere the direct parent is watched.
 */
import fs from 'node:fs'

/** How often the npm process is looked for; a stop follows within this much. */
export const NPX_PARENT_POLL_MS = 500

function readProc (pid: number): { ppid: number, state: string, cmd: string } | null {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8')
    // `pid (comm) state ppid ...`; comm may hold spaces and parentheses: split after the last ')'.
    const rest = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
    const cmd = fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').replace(/\0/g, ' ')
    return { state: rest[0], ppid: Number(rest[1]), cmd }
  } catch {
    return null
  }
}

/** The pid of the npm (`npm exec` / npx) process this one runs under, or null. */
export function npmAncestor (start = process.ppid, read = readProc): number | null {
  let pid = start
  for (let depth = 0; depth < 4 && pid > 1; depth++) {
    const p = read(pid)
    if (p == null) return null
    if (/(^|[/\s])(npm|npx)(-cli\.js)?(\s|$)|npm-cli\.js|npx-cli\.js/.test(p.cmd)) return pid
    pid = p.ppid
  }
  return null
}

function gone (pid: number): boolean {
  try {
    process.kill(pid, 0)
  } catch (err: any) {
    return err?.code === 'ESRCH'
  }
  // A zombie (exited, not yet reaped) still answers signal 0.
  return readProc(pid)?.state === 'Z'
}

/**
 * Calls `onGone` once when the npm process this node was started under exits. Does nothing unless
 * npm runs it (`npm_command` is `exec`). Returns the stop function.
 */
export function watchNpxParent (onGone: () => void, env: NodeJS.ProcessEnv = process.env): () => void {
  if (env.npm_command !== 'exec') return () => {}
  const pid = (process.platform === 'linux' ? npmAncestor() : null) ?? process.ppid
  if (pid <= 1) return () => {}
  const timer = setInterval(() => {
    if (!gone(pid)) return
    clearInterval(timer)
    onGone()
  }, NPX_PARENT_POLL_MS)
  timer.unref()
  return () => { clearInterval(timer) }
}
