import { createHash, timingSafeEqual } from 'node:crypto'
import type { FastifyInstance, FastifyRequest } from 'fastify'
import { UnauthorizedError } from '../errors.js'

const digest = (s: string): Buffer => createHash('sha256').update(s).digest()

declare module 'fastify' {
  interface FastifyRequest {
    /**
     * Which API key this request presented: a digest of it (never the key), or null on a node
     * without keys. Node-local state a client creates (stored responses) belongs to it.
     */
    apiKeyOwner: string | null
  }
}

/**
 * Requires `Authorization: Bearer KEY` (or `x-api-key`) on every route but `/healthz` (and what
 * `isPublic` names) when keys are configured. Keys are compared as SHA-256 digests with a
 * constant-time compare, so neither length nor content leaks through timing; they are never logged.
 */
export function installApiKeys (app: FastifyInstance, keys: string[], opts: { isPublic?: (request: FastifyRequest) => boolean } = {}): void {
  app.decorateRequest('apiKeyOwner', null)
  if (keys.length === 0) return
  const digests = keys.map(digest)
  app.addHook('onRequest', async (request) => {
    if (request.url === '/healthz') return
    // The console's static files (api/console.ts): a browser cannot put a key on a navigation; the page asks for it.
    if (opts.isPublic?.(request) === true) return
    const header = request.headers.authorization
    const presented = typeof header === 'string' && /^Bearer\s+/i.test(header)
      ? header.replace(/^Bearer\s+/i, '').trim()
      : typeof request.headers['x-api-key'] === 'string' ? request.headers['x-api-key'] : undefined
    if (presented == null || presented === '') throw new UnauthorizedError('Missing API key: send Authorization: Bearer <key>')
    const d = digest(presented)
    let ok = false
    for (const k of digests) ok = timingSafeEqual(d, k) || ok
    if (!ok) throw new UnauthorizedError('Incorrect API key provided')
    request.apiKeyOwner = d.toString('hex', 0, 16)
  })
}
