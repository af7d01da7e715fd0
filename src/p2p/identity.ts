import { generateKeyPair, privateKeyFromProtobuf, privateKeyToProtobuf } from '@libp2p/crypto/keys'
import { peerIdFromPrivateKey } from '@libp2p/peer-id'
import type { PrivateKey } from '@libp2p/interface'

/** A node's Ed25519 key: its peer id, and the key that signs its gossip and commands. */
export async function createIdentity (): Promise<PrivateKey> {
  return await generateKeyPair('Ed25519')
}

export function encodeIdentity (key: PrivateKey): Uint8Array {
  return privateKeyToProtobuf(key)
}

export function decodeIdentity (bytes: Uint8Array): PrivateKey {
  return privateKeyFromProtobuf(bytes)
}

export function peerIdOf (key: PrivateKey): string {
  return peerIdFromPrivateKey(key).toString()
}
