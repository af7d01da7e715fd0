import fs from 'node:fs/promises'
import path from 'node:path'
import { ClassicLevel } from 'classic-level'
import { defaultOptions } from '../config/index.js'
import { Store } from '../node/index.js'
import { ShepherdError } from '../errors.js'
import { parse } from './args.js'
import { DOCTOR_HELP } from './help.js'

/**
 * `shepherd-mesh doctor`: the recovery path for a data dir that will not open. A corrupt store
 * is a clear report and a command to run, never a crash loop.
 */
export async function doctor (args: string[], out: (line: string) => void): Promise<void> {
  const { values } = parse(args, { 'data-dir': { type: 'string' }, repair: { type: 'boolean' }, reset: { type: 'boolean' }, help: { type: 'boolean', short: 'h' } })
  if (values.help === true) { out(DOCTOR_HELP); return }
  const dataDir = path.resolve(String(values['data-dir'] ?? defaultOptions().dataDir))
  const storeDir = path.join(dataDir, 'store')
  const check = async (): Promise<string | null> => {
    try {
      const store = await Store.open(dataDir)
      const peers = (await store.knownPeers()).length
      await store.close()
      out(`store ok: ${storeDir} (${peers} known peers)`)
      return null
    } catch (err: any) {
      return err instanceof ShepherdError ? `${err.code}: ${err.message}` : String(err?.message ?? err)
    }
  }
  let problem = await check()
  if (problem == null) return
  out(`store problem: ${problem}`)
  if (/data_dir_locked/.test(problem)) throw new ShepherdError('stop the running node first', { code: 'data_dir_locked', status: 409 })
  if (values.repair === true) {
    out(`repairing ${storeDir} ...`)
    await ClassicLevel.repair(storeDir).catch((err: Error) => { out(`repair failed: ${err.message}`) })
    problem = await check()
    if (problem == null) { out('repaired'); return }
  }
  if (values.reset === true) {
    const aside = `${storeDir}.broken-${Date.now()}`
    await fs.rename(storeDir, aside)
    out(`moved the store aside to ${aside}; the next start creates a new store (and a new peer id)`)
    return
  }
  throw new ShepherdError(`the store cannot be opened; run 'shepherd-mesh doctor --data-dir ${dataDir} --repair' (or --reset as a last resort)`, { code: 'store_corrupt', status: 500 })
}
