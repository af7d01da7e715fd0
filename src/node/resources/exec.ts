/**
 * How the monitor runs external tools (nvidia-smi, rocm-smi, llama-server --version). One
 * injectable function so tests can replay recorded outputs instead of spawning anything.
 */
import { execFile } from 'node:child_process'

export interface ExecResult {
  stdout: string
  stderr: string
  /** Exit status; null when the process did not exit normally (killed, or never started). */
  exitCode: number | null
  /** Set when the run failed before or instead of exiting: `ENOENT` (no such binary), `EACCES`, `ETIMEDOUT`. */
  errorCode?: string
}

export interface ExecOptions {
  timeoutMs: number
  /** Output beyond this is an error (`ENOBUFS`). */
  maxBuffer?: number
}

/** Runs `file` with `args` and never rejects: every outcome is described by the result. */
export type ExecRunner = (file: string, args: readonly string[], opts: ExecOptions) => Promise<ExecResult>

/** The real runner, built on `child_process.execFile` (no shell). */
export const execRunner: ExecRunner = async (file, args, opts) => {
  return await new Promise<ExecResult>(resolve => {
    execFile(file, [...args], {
      timeout: opts.timeoutMs,
      maxBuffer: opts.maxBuffer ?? 8 * 1024 * 1024,
      encoding: 'utf8',
      windowsHide: true,
      // The tools print localized text otherwise, and the parsers read English.
      env: { ...process.env, LC_ALL: 'C' }
    }, (err, stdout, stderr) => {
      if (err === null) {
        resolve({ stdout, stderr, exitCode: 0 })
        return
      }
      const e = err as Error & { killed?: boolean, signal?: NodeJS.Signals | null, code?: string | number | null }
      const timedOut = e.killed === true && e.signal != null
      resolve({
        stdout: stdout ?? '',
        stderr: stderr ?? '',
        exitCode: typeof e.code === 'number' ? e.code : null,
        ...(timedOut ? { errorCode: 'ETIMEDOUT' } : typeof e.code === 'string' ? { errorCode: e.code } : {})
      })
    })
  })
}
