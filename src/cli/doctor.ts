import fs from 'node:fs/promises'
import path from 'node:path'
import { ClassicLevel } from 'classic-level'
import { defaultOptions } from '../config/index.js'
import { Store } from '../node/index.js'
import { ShepherdError } from '../errors.js'
import { parse } from './args.js'
import { DOCTOR_HELP } from './help.js'
import { apiBase, getJson } from './client.js'
import type { DuplicateIdentity } from '../p2p/index.js'

type WithDuplicate = { id: string, name: string, duplicateIdentity?: DuplicateIdentity | null }

/**
 * A running node, through its API: names every duplicate peer id it sees (its own included).
 * Throws `duplicate_identity` when there is one, so scripts notice.
 */
async function checkRunningNode (base: string, out: (line: string) => void): Promise<void> {
  const self = await getJson<WithDuplicate>(base, '/api/node')
  const { peers } = await getJson<{ peers: WithDuplicate[] }>(base, '/api/peers')
  out(`node running: ${self.name} (${self.id}), ${peers.length} peers, API ${base}`)
  const found: string[] = []
  if (self.duplicateIdentity != null) {
    found.push(`this node's peer id ${self.id} is also used by another process (${self.duplicateIdentity.reportedBy.length > 0 ? `reported by ${self.duplicateIdentity.reportedBy.join(', ')}` : `incarnations ${self.duplicateIdentity.incarnations.join(', ')}`}): a copied data dir? Stop one of them and give it a new data dir (or 'doctor --reset' there).`)
  }
  for (const p of peers) {
    if (p.duplicateIdentity == null) continue
    found.push(`peer ${p.name} (${p.id}) runs as two processes (${p.duplicateIdentity.evidence.join(', ')}): not routed to until one stops.`)
  }
  if (found.length === 0) { out('no duplicate peer ids'); return }
  for (const line of found) out(`duplicate identity: ${line}`)
  throw new ShepherdError(`${found.length} duplicate peer id(s) found`, { code: 'duplicate_identity', status: 409 })
}

/**
 * `shepherd-mesh doctor`: the recovery path for a data dir that will not open. A corrupt store
 * is a clear report and a command to run, never a crash loop.
 */
export async function doctor (args: string[], out: (line: string) => void): Promise<void> {
  const { values } = parse(args, { 'data-dir': { type: 'string' }, api: { type: 'string' }, repair: { type: 'boolean' }, reset: { type: 'boolean' }, help: { type: 'boolean', short: 'h' } })
  if (values.help === true) { out(DOCTOR_HELP); return }
  const dataDir = path.resolve(String(values['data-dir'] ?? defaultOptions().dataDir))
  const storeDir = path.join(dataDir, 'store')
  // Opening a store creates it: a mistyped dir would be made, and called ok.
  if (!await exists(storeDir)) {
    throw new ShepherdError(`no store at ${storeDir}: ${await exists(dataDir) ? 'the node has not run with this data dir yet' : 'the data dir does not exist'} (is --data-dir right?)`, { code: 'store_missing', status: 404 })
  }
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
  if (/data_dir_locked/.test(problem)) {
    if (values.repair === true || values.reset === true) throw new ShepherdError('stop the running node first', { code: 'data_dir_locked', status: 409 })
    // The node holds its store: it is running, so ask it.
    out(`store in use by a running node: ${storeDir}`)
    await checkRunningNode(apiBase(values), out)
    return
  }
  out(`store problem: ${problem}`)
  if (values.repair === true) {
    // LevelDB's repair drops what it cannot read, the node's identity key included: keep a copy
    // first, so a repair that loses the key can be undone (and is said out loud, not found later).
    const backup = `${storeDir}.before-repair-${Date.now()}`
    await fs.cp(storeDir, backup, { recursive: true })
    out(`copied the store to ${backup} before repairing`)
    out(`repairing ${storeDir} ...`)
    const failed = await ClassicLevel.repair(storeDir).then(() => null, (err: Error) => err)
    if (failed != null) out(`repair failed: ${failed.message}`)
    problem = await check()
    if (problem == null) {
      if (!await hasIdentity(dataDir)) {
        out(`warning: the repaired store has no identity key: the next start makes a new peer id (members must admit it again). To keep the old one, stop here and restore ${backup}`)
        // With --reset the operator accepted a new identity already; without, the exit code says it.
        if (values.reset !== true) throw new ShepherdError('repaired, but the identity key was lost', { code: 'identity_lost', status: 500 })
        return
      }
      out('repaired (identity kept)')
      return
    }
    out(`the store still cannot be opened; the copy from before the repair is ${backup}`)
  }
  if (values.reset === true) {
    const aside = `${storeDir}.broken-${Date.now()}`
    await fs.rename(storeDir, aside)
    out(`moved the store aside to ${aside}; the next start creates a new store and a NEW peer id (members must admit this node again)`)
    return
  }
  throw new ShepherdError(`the store cannot be opened; run 'shepherd-mesh doctor --data-dir ${dataDir} --repair' (or --reset as a last resort)`, { code: 'store_corrupt', status: 500 })
}

async function exists (p: string): Promise<boolean> {
  return await fs.stat(p).then(() => true, () => false)
}

/** Whether the store of `dataDir` (openable) holds the node's identity key. */
async function hasIdentity (dataDir: string): Promise<boolean> {
  const store = await Store.open(dataDir)
  try {
    return await store.getMeta<string>('identity') != null
  } finally {
    await store.close()
  }
}
