/**
 * Checks `start` runs before the node starts, so that a setting that can only fail later (at the
 * first request, or never visibly) fails now with one line that names it. Each check is a pure
 * function of what was found (`PreflightFacts`); `gatherFacts` does the I/O.
 */
import fs from 'node:fs/promises'
import type { NodeOptions } from '../config/index.js'
import { detectGpus, findLlamacppBuilds } from '../node/resources/index.js'
import { cachedLlamaServerDirs } from '../node/engine-setup.js'

/** What the checks look at; gathered once by `gatherFacts` (tests build it by hand). */
export interface PreflightFacts {
  /** Each models dir: whether it exists and is a directory. */
  modelsDirs: Array<{ dir: string, state: 'dir' | 'missing' | 'not_dir' | 'unreadable' }>
  /** llama-server builds found (only looked for with `--engine llama-server`). */
  llamacppBuilds: number | null
  /** GPUs by vendor (only looked for when `--gpu` names a backend). */
  gpus: Array<{ name: string, vendor: string }> | null
  platform: NodeJS.Platform
  /** API key options given as command-line flags (visible in `ps`). */
  keysOnArgv: string[]
}

export interface PreflightResult {
  /** Each one stops the start (exit code 2). */
  errors: string[]
  /** Printed, the node starts anyway: the setting may become valid. */
  warnings: string[]
}

/** The verdict on `opts` given `facts`. */
export function preflight (opts: NodeOptions, facts: PreflightFacts): PreflightResult {
  const errors: string[] = []
  const warnings: string[] = []
  for (const m of facts.modelsDirs) {
    // A mistyped dir used to be created (the README's example made /models at the root), and the
    // node then served nothing without saying why.
    if (m.state === 'missing') errors.push(`models dir ${m.dir} does not exist (--models-dir / models.paths): create it or fix the path`)
    else if (m.state === 'not_dir') errors.push(`models dir ${m.dir} is not a directory (--models-dir / models.paths)`)
    else if (m.state === 'unreadable') errors.push(`models dir ${m.dir} cannot be read by this user (--models-dir / models.paths)`)
  }
  if (opts.engine === 'llama-server' && facts.llamacppBuilds === 0) {
    // The engine picks its build once, when it is made: without one every request would be a 503.
    errors.push(`--engine llama-server: no llama-server build found on PATH or in the build cache${opts.llamacppPaths.length > 0 ? ` or in ${opts.llamacppPaths.join(', ')}` : ''} (build one with scripts/build-llama-server.sh and pass --llamacpp DIR, or use --engine embedded)`)
  }
  // `auto` may pick either local engine; `--gpu` names what the operator expects from both.
  if (opts.engine !== 'none' && facts.gpus != null) {
    const has = (vendor: string): boolean => facts.gpus!.some(g => g.vendor === vendor)
    if (opts.gpu === 'cuda' && !has('nvidia')) errors.push('--gpu cuda: no NVIDIA GPU found (nvidia-smi lists none); use --gpu auto or off')
    if (opts.gpu === 'vulkan' && facts.gpus.length === 0) warnings.push('--gpu vulkan: no GPU found; loads will fail unless a Vulkan device appears (use --gpu auto to fall back to the CPU)')
  }
  if (opts.engine !== 'none' && opts.gpu === 'metal' && facts.platform !== 'darwin') errors.push(`--gpu metal: Metal exists on macOS only (this is ${facts.platform}); use --gpu auto`)
  if (facts.keysOnArgv.length > 0) {
    warnings.push(`${facts.keysOnArgv.join(', ')} on the command line: other local users may see it (ps, shell history) before it is masked; prefer --api-key-file FILE or SHEPHERD_API_KEYS / SHEPHERD_JOIN`)
  }
  return { errors, warnings }
}

async function dirState (dir: string): Promise<PreflightFacts['modelsDirs'][number]['state']> {
  try {
    const st = await fs.stat(dir)
    if (!st.isDirectory()) return 'not_dir'
    await fs.access(dir, fs.constants.R_OK | fs.constants.X_OK)
    return 'dir'
  } catch (err: any) {
    return err?.code === 'ENOENT' || err?.code === 'ENOTDIR' ? 'missing' : 'unreadable'
  }
}

/** Looks at this machine for what `opts` needs; the slow probes run only when an option asks for them. */
export async function gatherFacts (opts: NodeOptions, flags: Record<string, unknown>): Promise<PreflightFacts> {
  const needGpus = opts.engine !== 'none' && (opts.gpu === 'cuda' || opts.gpu === 'vulkan')
  const [modelsDirs, builds, gpus] = await Promise.all([
    Promise.all(opts.modelsDirs.map(async dir => ({ dir, state: await dirState(dir) }))),
    // The same places the node searches: --llamacpp, PATH, and the cache scripts/build-llama-server.sh fills.
    opts.engine === 'llama-server' ? findLlamacppBuilds([...opts.llamacppPaths, ...cachedLlamaServerDirs()]).then(b => b.length, () => 0) : Promise.resolve(null),
    needGpus ? detectGpus().then(d => d.gpus.map(g => ({ name: g.name, vendor: g.vendor })), () => []) : Promise.resolve(null)
  ])
  const keysOnArgv = [flags['api-key'] != null ? '--api-key' : null, flags.join != null ? '--join' : null].filter((f): f is string => f != null)
  return { modelsDirs, llamacppBuilds: builds, gpus, platform: process.platform, keysOnArgv }
}
