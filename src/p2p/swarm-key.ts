import { randomBytes } from 'node:crypto'
import fs from 'node:fs/promises'
import { ShepherdError } from '../errors.js'

/** A swarm key file could not be read or is not a v1 PSK. */
export class SwarmKeyError extends ShepherdError {
  constructor (message: string) {
    super(message, { code: 'invalid_swarm_key', status: 400 })
  }
}

const HEADER = '/key/swarm/psk/1.0.0/'

/** A new swarm key in the libp2p v1 PSK format (the same as IPFS private networks use). */
export function generateSwarmKey (): string {
  return `${HEADER}\n/base16/\n${randomBytes(32).toString('hex')}\n`
}

/**
 * Reads and checks a swarm key file. The key itself never appears in errors or logs: a bad file
 * is reported by its path only.
 */
export async function readSwarmKey (file: string): Promise<Uint8Array> {
  let text: string
  try {
    text = await fs.readFile(file, 'utf8')
  } catch (err: any) {
    throw new SwarmKeyError(`cannot read swarm key file ${file}: ${err.code ?? 'error'}`)
  }
  const lines = text.split(/\r?\n/)
  if (lines[0] !== HEADER || lines[1] !== '/base16/' || !/^[0-9a-fA-F]{64}$/.test(lines[2] ?? '')) {
    throw new SwarmKeyError(`swarm key file ${file} is not a v1 PSK (create one with 'shepherd-mesh keygen')`)
  }
  return new TextEncoder().encode(text)
}
