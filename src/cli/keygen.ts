import fs from 'node:fs/promises'
import path from 'node:path'
import { defaultOptions } from '../config/index.js'
import { generateSwarmKey } from '../p2p/index.js'
import { parse, UsageError } from './args.js'
import { KEYGEN_HELP } from './help.js'

/** `shepherd-mesh keygen [FILE]`: writes a new swarm key (mode 0600) for a private mesh. */
export async function keygen (args: string[], out: (line: string) => void): Promise<void> {
  const { values, positionals } = parse(args, { force: { type: 'boolean' }, help: { type: 'boolean', short: 'h' } })
  if (values.help === true) { out(KEYGEN_HELP); return }
  if (positionals.length > 1) throw new UsageError('keygen takes at most one FILE')
  // Not the current directory by default: a key written into a repository gets committed.
  const file = positionals[0] ?? path.join(defaultOptions().dataDir, 'swarm.key')
  try {
    await fs.mkdir(path.dirname(path.resolve(file)), { recursive: true, mode: 0o700 })
    await fs.writeFile(file, generateSwarmKey(), { mode: 0o600, flag: values.force === true ? 'w' : 'wx' })
  } catch (err: any) {
    if (err.code === 'EEXIST') throw new UsageError(`${file} exists; use --force to replace it (every node must then get the new key)`)
    throw new UsageError(`cannot write ${file}: ${err.code ?? err.message}`)
  }
  out(`wrote ${file}: copy it to every node of the mesh and start them with --swarm-key ${file}`)
}
