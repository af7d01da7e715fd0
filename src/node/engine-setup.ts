import type { NodeOptions } from '../config/index.js'
import { EmbeddedEngine, type Engine } from './engines/index.js'
import type { ModelFile } from './resources/index.js'

/**
 * Builds the engines a node's options ask for. The embedded engine serves the GGUF files the
 * resource monitor found; it loads node-llama-cpp only when a model is first used.
 */
export async function createEngines (options: NodeOptions, deps: { modelFiles: () => ModelFile[] }): Promise<Engine[]> {
  const engines: Engine[] = []
  const entries = (): Array<{ name: string, path: string, sizeBytes: number, fingerprint: string, contextLength: number | null }> =>
    deps.modelFiles().map(f => ({ name: f.name, path: f.path, sizeBytes: f.sizeBytes, fingerprint: f.fingerprint, contextLength: f.contextLength }))
  if (options.engine === 'embedded') {
    engines.push(new EmbeddedEngine({
      id: 'embedded',
      listModelFiles: entries,
      resolveModel: name => deps.modelFiles().find(f => f.name === name)?.path,
      gpu: options.gpu,
      ...(options.threads > 0 ? { threads: options.threads } : {}),
      ...(options.contextSize > 0 ? { contextSize: options.contextSize } : {}),
      keepAliveMs: options.keepAliveMs
    }))
  }
  return engines
}
