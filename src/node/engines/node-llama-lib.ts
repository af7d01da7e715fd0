/**
 * node-llama-cpp, imported when a model is first loaded, not at start: it costs ~35 MB of RSS
 * and ~0.5 s, and a node that never serves a local model never needs it.
 */
type NodeLlamaCpp = typeof import('node-llama-cpp')

let lib: NodeLlamaCpp | undefined

/** Imports the library (once). */
export async function loadLib (): Promise<NodeLlamaCpp> {
  lib ??= await import('node-llama-cpp')
  return lib
}

/** The loaded library (every caller runs after a model load, which loaded it). */
export function nlc (): NodeLlamaCpp {
  if (lib === undefined) throw new Error('node-llama-cpp is not loaded yet')
  return lib
}

/** The library if it was loaded already (no import as a side effect). */
export function loadedLib (): NodeLlamaCpp | undefined {
  return lib
}
