import type { PrivateKey } from '@libp2p/interface'
import { createIdentity, decodeIdentity, encodeIdentity } from '../p2p/index.js'
import type { Store } from './store.js'

const KEY = 'identity'

/** Loads the node's Ed25519 key from the store, creating it on first start, so the peer id is stable. */
export async function loadOrCreateIdentity (store: Store): Promise<{ key: PrivateKey, created: boolean }> {
  const saved = await store.getMeta<string>(KEY)
  if (saved != null) return { key: decodeIdentity(Buffer.from(saved, 'base64')), created: false }
  const key = await createIdentity()
  await store.putMeta(KEY, Buffer.from(encodeIdentity(key)).toString('base64'))
  return { key, created: true }
}
