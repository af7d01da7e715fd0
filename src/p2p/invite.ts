import { createHash, randomBytes } from 'node:crypto'
import { compileSchema } from './schemas.js'
import type { PrivateKey } from '@libp2p/interface'
import { INVITE_DOMAIN } from './admission-messages.js'
import { signObject, verifyObject } from './signing.js'

/**
 * Invite tokens: single-use, expiring, signed by a member (the inviter). A token names the mesh,
 * the inviter's peer id and reachable addresses, a random secret and its expiry. The joiner dials
 * the inviter and presents it; the inviter checks it, marks the secret used (durably) and signs an
 * admit; the joiner checks the ledger it gets against the inviter named in the token. A token is
 * a credential: it never reaches logs or API output other than the `invite` answer itself.
 */

const PREFIX = 'shm1.'
/** Longest invite lifetime (a week): an invite is for joining a machine now, not a standing key. */
export const MAX_INVITE_TTL_MS = 7 * 24 * 3600_000

export interface InviteToken {
  v: 1
  mesh: string
  inviter: string
  addrs: string[]
  secret: string
  expiresAt: number
  sig: string
  /** The token as given (what `join` presents). */
  raw: string
}

const validToken = compileSchema<unknown>({
  type: 'object',
  additionalProperties: false,
  required: ['v', 'mesh', 'inviter', 'addrs', 'secret', 'expiresAt', 'sig'],
  properties: {
    v: { const: 1 },
    mesh: { type: 'string', pattern: '^[0-9a-f]{32}$' },
    inviter: { type: 'string', pattern: '^[1-9A-HJ-NP-Za-km-z]{32,128}$' },
    addrs: { type: 'array', maxItems: 16, items: { type: 'string', maxLength: 256 } },
    secret: { type: 'string', pattern: '^[A-Za-z0-9_-]{43}$' },
    expiresAt: { type: 'integer', minimum: 0 },
    sig: { type: 'string', maxLength: 88 }
  }
}, { strict: false })

/** A new invite from `inviter` (whose key signs it) to `mesh`, valid for `ttlMs`. */
export async function createInvite (key: PrivateKey, opts: { mesh: string, inviter: string, addrs: string[], ttlMs: number, now?: number }): Promise<string> {
  const body = { v: 1 as const, mesh: opts.mesh, inviter: opts.inviter, addrs: opts.addrs.slice(0, 16), secret: randomBytes(32).toString('base64url'), expiresAt: (opts.now ?? Date.now()) + Math.min(opts.ttlMs, MAX_INVITE_TTL_MS) }
  const signed = await signObject(key, INVITE_DOMAIN, body)
  return PREFIX + Buffer.from(JSON.stringify(signed)).toString('base64url')
}

/** Decodes a token (no signature check): undefined when it is not one. */
export function decodeInvite (raw: string): InviteToken | undefined {
  if (typeof raw !== 'string' || !raw.startsWith(PREFIX) || raw.length > 4096) return undefined
  try {
    const obj = JSON.parse(Buffer.from(raw.slice(PREFIX.length), 'base64url').toString('utf8'))
    return validToken(obj) ? { ...(obj as Omit<InviteToken, 'raw'>), raw } : undefined
  } catch {
    return undefined
  }
}

export type InviteCheck =
  | { ok: true, token: InviteToken, secretHash: string }
  | { ok: false, code: 'invalid_invite' | 'invite_expired' | 'wrong_inviter', message: string }

/** The inviter's checks: well formed, its own signature, its mesh, not expired (single use is the caller's). */
export async function checkInvite (raw: string, opts: { self: string, mesh?: string, now: number }): Promise<InviteCheck> {
  const token = decodeInvite(raw)
  if (token == null) return { ok: false, code: 'invalid_invite', message: 'not an invite token' }
  const { raw: _raw, ...signed } = token
  if (token.inviter !== opts.self || token.mesh !== opts.mesh) return { ok: false, code: 'wrong_inviter', message: 'this invite is not from this node of this mesh' }
  if (!await verifyObject(token.inviter, INVITE_DOMAIN, signed)) return { ok: false, code: 'invalid_invite', message: 'the invite signature does not hold' }
  if (token.expiresAt <= opts.now) return { ok: false, code: 'invite_expired', message: 'the invite has expired' }
  return { ok: true, token, secretHash: createHash('sha256').update(token.secret).digest('hex') }
}
