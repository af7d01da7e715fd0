/**
 * llama-server command lines: the node's own flags win (issue 11 item 4). llama.cpp's parser
 * lets a later flag override an earlier one, so extra flags appended after the node's could
 * raise `--ctx-size`, `--parallel` or `--threads` past what the node sized, or move `--host` off
 * loopback. Here every flag the node sets (and those it always owns) is dropped from the extras.
 */

/** Spellings of one llama-server flag, and whether it takes a value. */
interface FlagSpec { names: readonly string[], value: boolean }

const FLAGS: readonly FlagSpec[] = [
  { names: ['-m', '--model'], value: true },
  { names: ['-a', '--alias'], value: true },
  { names: ['--host'], value: true },
  { names: ['--port'], value: true },
  { names: ['--api-key'], value: true },
  { names: ['--api-key-file'], value: true },
  { names: ['-t', '--threads'], value: true },
  { names: ['-c', '--ctx-size'], value: true },
  { names: ['-np', '--parallel'], value: true },
  { names: ['-ngl', '--n-gpu-layers', '--gpu-layers'], value: true },
  { names: ['--embedding', '--embeddings'], value: false },
  { names: ['--pooling'], value: true },
  // Tool calling needs the Jinja template: an extra `--no-jinja` would silently turn it off.
  { names: ['--jinja', '--no-jinja'], value: false }
]

const BY_NAME = new Map<string, FlagSpec>(FLAGS.flatMap(f => f.names.map(n => [n, f] as const)))

/** Flags the node always chooses itself, whether or not a given command line sets them. */
export const NODE_OWNED_FLAGS: readonly string[] = ['-m', '-a', '--host', '--port', '--api-key', '--api-key-file', '-t', '-c', '-np']

/** The canonical (first) spelling of a flag, `--ctx-size=4096` read as `--ctx-size`; the flag itself when unknown. */
export function canonicalFlag (arg: string): string {
  const name = arg.startsWith('--') && arg.includes('=') ? arg.slice(0, arg.indexOf('=')) : arg
  return BY_NAME.get(name)?.names[0] ?? name
}

/**
 * `nodeArgs` followed by the items of `extraArgs` whose flags the node neither set in
 * `nodeArgs` nor always owns (each dropped flag with its value). Pure.
 */
export function mergeLlamaServerArgs (nodeArgs: readonly string[], extraArgs: readonly string[]): string[] {
  const owned = new Set(NODE_OWNED_FLAGS.map(canonicalFlag))
  for (const a of nodeArgs) if (a.startsWith('-') && BY_NAME.has(canonicalFlag(a))) owned.add(canonicalFlag(a))
  const out = [...nodeArgs]
  for (let i = 0; i < extraArgs.length; i++) {
    const a = extraArgs[i]
    const canon = canonicalFlag(a)
    if (!a.startsWith('-') || !owned.has(canon)) {
      out.push(a)
      continue
    }
    // Dropped, and its separate value with it.
    if (BY_NAME.get(canon)?.value === true && !a.includes('=')) i++
  }
  return out
}
