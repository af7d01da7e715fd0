import { storageError } from '../../errors.js'
import type { Store } from '../store.js'

/** Groups joined or left through the API, kept apart from the configured ones. */
const MEMBERSHIP_KEY = 'groups'
interface Saved { joined: string[], left: string[] }

/** The groups this node is in at start: configured ones plus those joined, less those left. */
export async function loadMembership (store: Store, configured: string[]): Promise<string[]> {
  const saved = await store.getMeta<Saved & Record<string, string[]>>(MEMBERSHIP_KEY)
  return [...new Set([...configured, ...(saved?.joined ?? [])])].filter(g => !(saved?.left ?? []).includes(g))
}

/**
 * Records a join or leave (sync). Callers change memory only after it resolves; a failure is a
 * typed error (507 `insufficient_storage` on a full disk), so the API never answers 500 for a
 * change that then lives in memory only and vanishes at restart.
 */
export async function saveMembership (store: Store, group: string, op: 'join' | 'leave'): Promise<void> {
  try {
    const saved = (await store.getMeta<Saved & Record<string, string[]>>(MEMBERSHIP_KEY)) ?? { joined: [], left: [] }
    const joined = new Set(saved.joined)
    const left = new Set(saved.left)
    if (op === 'join') { joined.add(group); left.delete(group) } else { left.add(group); joined.delete(group) }
    await store.putMeta(MEMBERSHIP_KEY, { joined: [...joined], left: [...left] })
  } catch (err) {
    throw storageError(err, `cannot ${op} group '${group}'`)
  }
}
