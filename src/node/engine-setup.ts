import type { NodeOptions } from '../config/index.js'
import { EmbeddedEngine, LlamaServerEngine, UpstreamEngine, type Engine } from './engines/index.js'
import type { LlamacppBuild, ModelFile } from './resources/index.js'

const MiB = 1024 * 1024

type Entry = { name: string, path: string, sizeBytes: number, fingerprint: string, contextLength: number | null }

/**
 * Builds the engines a node's options ask for: the local engine for the GGUF files the resource
 * monitor found (embedded node-llama-cpp, loaded only when a model is first used; or a managed
 * llama-server from the best llama.cpp build found), and one engine per upstream URL.
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
  if (options.engine === 'embedded') {
    engines.push(new EmbeddedEngine({ id: 'embedded', listModelFiles: entries, resolveModel, gpu: options.gpu, ...tuning }))
  } else if (options.engine === 'llama-server') {
    engines.push(new LlamaServerEngine({ id: 'llama-server', builds: deps.builds, listModelFiles: entries, resolveModel, ...tuning }))
  }
  options.upstreams.forEach((url, i) => {
    engines.push(new UpstreamEngine({ id: `upstream-${i}`, baseUrl: url.replace(/\/+$/, ''), apiKey: process.env.SHEPHERD_UPSTREAM_API_KEY }))
  })
  return engines
}
