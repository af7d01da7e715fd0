import type { FastifyInstance } from 'fastify'
import { stripControlDeep } from '../p2p/index.js'

/**
 * Strips control characters and bidi overrides (see `stripControl` in src/p2p/text.ts) from every
 * string and key of every JSON answer, so a name a peer announced (node, GPU, label, model,
 * group) never reaches a client with terminal escapes in it, whichever route serializes it.
 *
 * Inference answers (`POST /v1/...`) are the model's own output and pass verbatim: a completion
 * may hold any character, and the client asked for exactly that text.
 */
export function installResponseSanitizer (app: FastifyInstance): void {
  app.addHook('preSerialization', async (request, _reply, payload) => {
    if (request.method === 'POST' && request.url.startsWith('/v1/')) return payload
    return stripControlDeep(payload)
  })
}
