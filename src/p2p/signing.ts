import { peerIdFromString } from '@libp2p/peer-id'
import type { PrivateKey, PublicKey } from '@libp2p/interface'
import { ShepherdError } from '../errors.js'

/**
 * Detached Ed25519 signatures over canonical JSON, made with a node's libp2p key and checked
 * against the key embedded in the signer's peer id, so no key distribution is needed.
 *
 * What is signed is `domain` + "\n" + the canonical JSON of the object without its `sig`
 * field. The domain keeps a signature made for one kind of message (a command) from being
 * valid for another (a result).
 */

/** A value cannot be signed or checked: not plain JSON, too deep, or a signer with no usable key. */
export class SigningError extends ShepherdError {
  constructor (message: string, code = 'unsignable') {
    super(message, { code, status: 400 })
  }
}

/** Nesting deeper than this is refused: canonicalisation recurses, and no message needs more. */
export const MAX_CANONICAL_DEPTH = 32

/** Length of an Ed25519 signature in bytes. */
export const ED25519_SIGNATURE_BYTES = 64

const encoder = new TextEncoder()

/**
 * Canonical JSON (RFC 8785 style): object keys sorted by UTF-16 code units, no whitespace,
 * numbers in ECMAScript form, `undefined` object members left out as `JSON.stringify` does.
 * Two parties holding equal JSON values always produce the same bytes.
 */
export function canonicalJson (value: unknown): string {
  return encode(value, 0)
}

function encode (value: unknown, depth: number): string {
  if (depth > MAX_CANONICAL_DEPTH) throw new SigningError(`value nests deeper than ${MAX_CANONICAL_DEPTH} levels`, 'too_deep')
  if (value === null) return 'null'
  switch (typeof value) {
    case 'boolean':
      return value ? 'true' : 'false'
    case 'string':
      return JSON.stringify(value)
    case 'number':
      if (!Number.isFinite(value)) throw new SigningError('non-finite numbers have no JSON form')
      return JSON.stringify(value)
    case 'object': {
      if (Array.isArray(value)) {
        return '[' + value.map(v => {
          if (v === undefined) throw new SigningError('arrays cannot hold undefined')
          return encode(v, depth + 1)
        }).join(',') + ']'
      }
      const proto = Object.getPrototypeOf(value)
      if (proto !== Object.prototype && proto !== null) throw new SigningError('only plain objects can be signed')
      const obj = value as Record<string, unknown>
      const keys = Object.keys(obj).filter(k => obj[k] !== undefined).sort()
      return '{' + keys.map(k => JSON.stringify(k) + ':' + encode(obj[k], depth + 1)).join(',') + '}'
    }
    default:
      throw new SigningError(`a ${typeof value} has no JSON form`)
  }
}

/** The bytes a signature covers: the domain, a newline, and the canonical JSON of `value` minus `sig`. */
export function signedBytes (domain: string, value: object): Uint8Array {
  const { sig: _sig, ...rest } = value as Record<string, unknown>
  return encoder.encode(domain + '\n' + canonicalJson(rest))
}

/**
 * The public key a peer id carries. Only Ed25519 ids embed their key (RSA ids are hashes), and
 * only Ed25519 is accepted for signing here.
 */
export function publicKeyOfPeer (peerId: string): PublicKey {
  let id
  try {
    id = peerIdFromString(peerId)
  } catch (err) {
    throw new SigningError('not a peer id', 'bad_signer').withCause(err)
  }
  if (id.type !== 'Ed25519' || id.publicKey == null) throw new SigningError('the signer is not an Ed25519 peer id', 'bad_signer')
  return id.publicKey
}

/** Signs `value` (its `sig` field, if any, excluded) and returns the base64 signature. */
export async function signDetached (key: PrivateKey, domain: string, value: object): Promise<string> {
  const sig = await key.sign(signedBytes(domain, value))
  return Buffer.from(sig).toString('base64')
}

/** Returns `value` with a `sig` field: the signature of the rest of it. */
export async function signObject<T extends object> (key: PrivateKey, domain: string, value: T): Promise<T & { sig: string }> {
  const sig = await signDetached(key, domain, value)
  return { ...value, sig }
}

/**
 * True when `value.sig` is `signer`'s signature of `value` under `domain`. Never throws:
 * a malformed signature, an unsignable value or a signer with no Ed25519 key is simply false.
 */
export async function verifyObject<T extends { sig: string }> (signer: string, domain: string, value: T): Promise<boolean> {
  try {
    const key = publicKeyOfPeer(signer)
    const sig = decodeSignature(value.sig)
    if (sig == null) return false
    return await key.verify(signedBytes(domain, value), sig)
  } catch {
    return false
  }
}

/** Strict base64 of exactly one Ed25519 signature; `Buffer.from` alone would accept junk. */
function decodeSignature (b64: unknown): Uint8Array | undefined {
  if (typeof b64 !== 'string' || !/^[A-Za-z0-9+/]{86}==$/.test(b64)) return undefined
  const bytes = Buffer.from(b64, 'base64')
  return bytes.byteLength === ED25519_SIGNATURE_BYTES ? new Uint8Array(bytes) : undefined
}
