import type { PrivateKey } from '@libp2p/interface'
import { signObject, verifyObject } from '../p2p/index.js'
import { AUTHORITY_CODES } from '../errors.js'
import type { Deployment } from './deployments.js'

/**
 * Deployment records are signed statements (issue 11 item 2): the member that wrote a version
 * (its own API/CLI acting for its operator) signs it, and the record names it as `origin`. A
 * receiver takes a gossiped record only when the signature is `origin`'s, `origin` is a member,
 * and `updatedAt` is not beyond its own clock plus the allowed skew: last-writer-wins must not be
 * won for ever by a stamp from the future (a tombstone at 1e308 once deleted a deployment on
 * every node, and honest nodes kept re-gossiping it).
 */
export const DEPLOYMENT_SIGNING_DOMAIN = 'shepherd/deployment/1'
/** How far ahead of this node's clock a record may be stamped (the writer's clock may run ahead). */
export const DEPLOYMENT_CLOCK_SKEW_MS = 30_000

export async function signDeployment (key: PrivateKey, rec: Omit<Deployment, 'sig'>): Promise<Deployment> {
  return await signObject(key, DEPLOYMENT_SIGNING_DOMAIN, rec)
}

export type RecordVerdict = { ok: true } | { ok: false, code: typeof AUTHORITY_CODES.unsignedDeployment | typeof AUTHORITY_CODES.futureDeployment, reason: string }

/** Whether a gossiped record may be merged. `isMember`: TrustPolicy.isMember (this node counts as one). */
export async function checkDeployment (rec: Deployment, ctx: { isMember: (peer: string) => boolean, now: number, skewMs?: number }): Promise<RecordVerdict> {
  const limit = ctx.now + (ctx.skewMs ?? DEPLOYMENT_CLOCK_SKEW_MS)
  if (!Number.isSafeInteger(rec.updatedAt) || rec.updatedAt > limit) {
    return { ok: false, code: AUTHORITY_CODES.futureDeployment, reason: `stamped ${rec.updatedAt}, beyond now + skew (${limit})` }
  }
  if (typeof rec.sig !== 'string') return { ok: false, code: AUTHORITY_CODES.unsignedDeployment, reason: 'the record is not signed' }
  if (!ctx.isMember(rec.origin)) return { ok: false, code: AUTHORITY_CODES.unsignedDeployment, reason: `origin ${rec.origin.slice(0, 64)} is not a member` }
  if (!await verifyObject(rec.origin, DEPLOYMENT_SIGNING_DOMAIN, rec as Deployment & { sig: string })) {
    return { ok: false, code: AUTHORITY_CODES.unsignedDeployment, reason: 'the signature is not the origin\'s' }
  }
  return { ok: true }
}
