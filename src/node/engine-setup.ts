import { readdirSync } from 'node:fs'
import { homedir } from 'node:os'
import path from 'node:path'
import type { NodeOptions } from '../config/index.js'
import { createLogger } from '../logger.js'
import { EmbeddedEngine, LlamaServerEngine, UpstreamEngine, selectLlamacppBuild, type Engine } from './engines/index.js'
import type { LlamacppBuild, ModelFile } from './resources/index.js'

const MiB = 1024 * 1024
const log = createLogger('node:engines')

type Entry = { name: string, path: string, sizeBytes: number, fingerprint: string, contextLength: number | null }

/** The local engine a node runs, and why (printed at start-up). */
export interface EngineChoice {
  kind: 'embedded' | 'llama-server' | 'none'
  reason: string
}

/**
 * Which local engine `--engine` means on this node. `auto` (the default) picks llama-server
 * when a build of it was found, else the embedded engine: llama-server decodes concurrent
 * requests in one batch and measured 131 vs 85 tok/s for one client and 340 vs 102 tok/s for 8
 * on a 2-core machine (issue 12), which node-llama-cpp's per-token JavaScript cannot reach. Pure.
 */
export function chooseLocalEngine (engine: NodeOptions['engine'], builds: readonly LlamacppBuild[]): EngineChoice {
  if (engine === 'none') return { kind: 'none', reason: '--engine none' }
  if (engine === 'embedded') return { kind: 'embedded', reason: '--engine embedded' }
  if (engine === 'llama-server') return { kind: 'llama-server', reason: '--engine llama-server' }
  const build = selectLlamacppBuild(builds)
  if (build === undefined) return { kind: 'embedded', reason: 'auto: no llama-server build found (scripts/build-llama-server.sh, or --llamacpp DIR)' }
  return { kind: 'llama-server', reason: `auto: llama-server ${build.version} (${build.backend}) at ${build.path}` }
}

/**
 * Folders holding llama-server builds made by scripts/build-llama-server.sh, in its cache
 * (`$SHEPHERD_CACHE`, default ~/.cache/shepherd-mesh): where `--engine auto` and `--engine llama-server` look besides
 * `--llamacpp` and PATH. The same variable the script reads, so both agree on the place.
 */
export function cachedLlamaServerDirs (env: NodeJS.ProcessEnv = process.env): string[] {
  const root = path.join(env.SHEPHERD_CACHE ?? path.join(homedir(), '.cache', 'shepherd-mesh'), 'llama-server')
  try {
    return readdirSync(root, { withFileTypes: true }).filter(d => d.isDirectory()).map(d => path.join(root, d.name)).sort().reverse()
  } catch {
    return []
  }
}

/**
 * Builds the engines a node's options ask for: the local engine for the GGUF files the resource
 * monitor found (embedded node-llama-cpp, loaded only when a model is first used; or a managed
 * llama-server from the best llama.cpp build found; `auto` picks, see `chooseLocalEngine`), and
 * one engine per upstream URL.
 */
export function createEngines (options: NodeOptions, deps: { modelFiles: () => ModelFile[], builds: LlamacppBuild[] }): Engine[] {
  const engines: Engine[] = []
  const entries = (): Entry[] =>
    deps.modelFiles().map(f => ({ name: f.name, path: f.path, sizeBytes: f.sizeBytes, fingerprint: f.fingerprint, contextLength: f.contextLength }))
  const resolveModel = (name: string): string | undefined => deps.modelFiles().find(f => f.name === name)?.path
  const tuning = {
    ...(options.threads > 0 ? { threads: options.threads } : {}),
    ...(options.contextSize > 0 ? { contextSize: options.contextSize } : {}),
    keepAliveMs: options.keepAliveMs,
    ...(options.maxLoadedMb > 0 ? { maxLoadedBytes: options.maxLoadedMb * MiB } : {}),
    ...(options.memoryReserveMb > 0 ? { memoryReserveBytes: options.memoryReserveMb * MiB } : {})
  }
  const slots = options.parallel > 0 ? options.parallel : undefined
  const choice = chooseLocalEngine(options.engine, deps.builds)
  if (choice.kind !== 'none') log.info('local engine chosen', { engine: choice.kind, reason: choice.reason })
  if (choice.kind === 'embedded') {
    engines.push(new EmbeddedEngine({ id: 'embedded', listModelFiles: entries, resolveModel, gpu: options.gpu, ...tuning, ...(slots !== undefined ? { maxSequences: slots } : {}) }))
  } else if (choice.kind === 'llama-server') {
    engines.push(new LlamaServerEngine({ id: 'llama-server', builds: deps.builds, listModelFiles: entries, resolveModel, ...tuning, ...(slots !== undefined ? { parallel: slots } : {}) }))
  }
  options.upstreams.forEach((url, i) => {
    engines.push(new UpstreamEngine({ id: `upstream-${i}`, baseUrl: url.replace(/\/+$/, ''), apiKey: process.env.SHEPHERD_UPSTREAM_API_KEY }))
  })
  return engines
}
