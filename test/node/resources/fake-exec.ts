import type { ExecResult, ExecRunner } from '../../../src/node/resources/exec.js'

export interface FakeCall { file: string, args: readonly string[], timeoutMs: number }

export type FakeResponse = ExecResult | ((args: readonly string[]) => ExecResult)

/** The result of running a binary that does not exist. */
export const MISSING: ExecResult = { stdout: '', stderr: '', exitCode: null, errorCode: 'ENOENT' }

/**
 * An ExecRunner that answers from a table keyed by binary name (e.g. `nvidia-smi`), recording
 * every call; unknown binaries are missing.
 */
export function fakeExec (table: Record<string, FakeResponse>): ExecRunner & { calls: FakeCall[] } {
  const calls: FakeCall[] = []
  const run: ExecRunner = async (file, args, opts) => {
    calls.push({ file, args, timeoutMs: opts.timeoutMs })
    const name = file.split('/').pop() ?? file
    const r = table[name]
    if (r === undefined) return MISSING
    return typeof r === 'function' ? r(args) : r
  }
  return Object.assign(run, { calls })
}

export function ok (stdout: string, stderr = ''): ExecResult {
  return { stdout, stderr, exitCode: 0 }
}
