import { createHash } from 'node:crypto'
import type { FastifyInstance } from 'fastify'
import { ShepherdError } from '../errors.js'

/**
 * Fixed-window rate limit per API key (or per client address when no key is sent): a client
 * over its budget gets 429 with `retry-after`, the others are unaffected. Windows are kept for
 * active clients only.
 */
export function installRateLimit (app: FastifyInstance, perMinute: number): void {
  if (perMinute <= 0) return
  const windows = new Map<string, { start: number, count: number }>()
  const sweep = setInterval(() => {
    const cutoff = Date.now() - 60_000
    for (const [k, w] of windows) if (w.start < cutoff) windows.delete(k)
  }, 60_000)
  sweep.unref()
  app.addHook('onClose', async () => { clearInterval(sweep) })
  app.addHook('onRequest', async (request, reply) => {
    if (request.url === '/healthz') return
    const auth = request.headers.authorization ?? request.headers['x-api-key']
    // Keyed by a digest of the key, so no secret is held in this table.
    const who = typeof auth === 'string' && auth !== '' ? `k:${createHash('sha256').update(auth).digest('base64')}` : `ip:${request.ip}`
    const now = Date.now()
    let w = windows.get(who)
    if (w == null || now - w.start >= 60_000) windows.set(who, w = { start: now, count: 0 })
    w.count++
    if (w.count > perMinute) {
      void reply.header('retry-after', String(Math.ceil((w.start + 60_000 - now) / 1000)))
      throw new ShepherdError(`Rate limit of ${perMinute} requests per minute reached`, { code: 'rate_limit_exceeded', status: 429, type: 'rate_limit_error' })
    }
  })
}

/** CORS is off unless origins are listed; then only those origins get the headers. */
export function installCors (app: FastifyInstance, origins: string[]): void {
  if (origins.length === 0) return
  const allowed = new Set(origins)
  app.addHook('onRequest', async (request, reply) => {
    const origin = request.headers.origin
    if (origin == null || (!allowed.has(origin) && !allowed.has('*'))) return
    void reply.header('access-control-allow-origin', origin)
    void reply.header('vary', 'origin')
    if (request.method === 'OPTIONS') {
      void reply.header('access-control-allow-methods', 'GET, POST, DELETE, OPTIONS')
      void reply.header('access-control-allow-headers', 'authorization, content-type, x-api-key, x-shepherd-model-fingerprint')
      void reply.header('access-control-max-age', '600')
      await reply.status(204).send()
    }
  })
}
