import type { FastifyInstance, FastifyPluginAsync } from 'fastify'
import type { MeshNode } from '../node/index.js'

const errorResponses = { '4xx': { $ref: 'ErrorBody#' }, '5xx': { $ref: 'ErrorBody#' } }
const ids = { type: 'array', maxItems: 256, items: { type: 'string', pattern: '^[A-Za-z0-9]{32,128}$' } }
const lists = { type: 'object', properties: { allow: { type: 'array', items: { type: 'string' } }, deny: { type: 'array', items: { type: 'string' } } } }
const member = {
  type: 'object',
  properties: {
    id: { type: 'string' },
    name: { type: 'string' },
    status: { type: 'string', enum: ['member', 'pending', 'revoked', 'denied'] },
    since: { type: ['string', 'null'] },
    by: { type: ['string', 'null'] },
    connected: { type: 'boolean' }
  }
}
/** A peer id or a node name (names are matched exactly; several matches answer 409). */
const refParams = { type: 'object', required: ['ref'], properties: { ref: { type: 'string', minLength: 1, maxLength: 128, pattern: '^[^\\u0000-\\u001f\\u007f]+$' } } }
const emptyBody = { type: ['object', 'null'], additionalProperties: false, properties: {} }
const changed = { type: 'object', properties: { id: { type: 'string' }, status: { type: 'string' } } }

/**
 * Membership (`/api/members`, `/api/invites`) and the trust lists (`/api/trust`: allow = admitted
 * here, deny = revoked and refused at connection).
 */
export function trustRoutes (node: MeshNode): FastifyPluginAsync {
  return async (app: FastifyInstance) => {
    app.get('/api/trust', { schema: { response: { 200: lists, ...errorResponses } } }, async () => node.trust.lists())
    app.post('/api/trust', {
      schema: {
        body: { type: 'object', additionalProperties: false, minProperties: 1, properties: { allow: ids, deny: ids, remove: ids } },
        response: { 200: lists, ...errorResponses }
      }
    }, async (req) => await node.updateTrust(req.body as { allow?: string[], deny?: string[], remove?: string[] }))

    app.get('/api/members', {
      schema: { response: { 200: { type: 'object', properties: { mesh: { type: ['string', 'null'] }, mode: { type: 'string' }, members: { type: 'array', items: member } } }, ...errorResponses } }
    }, async () => node.members())

    app.post('/api/members/:ref/admit', { schema: { params: refParams, body: emptyBody, response: { 200: changed, ...errorResponses } } }, async (req) => {
      const id = await node.admit((req.params as { ref: string }).ref)
      return { id, status: node.trust.state(id) }
    })

    app.post('/api/members/:ref/revoke', { schema: { params: refParams, body: emptyBody, response: { 200: changed, ...errorResponses } } }, async (req) => {
      const id = await node.revoke((req.params as { ref: string }).ref)
      return { id, status: node.trust.state(id) }
    })

    // The one answer that holds a credential: the invite, for the operator who asked for it.
    app.post('/api/invites', {
      schema: {
        body: { type: ['object', 'null'], additionalProperties: false, properties: { ttlMs: { type: 'integer', minimum: 1000, maximum: 7 * 24 * 3600_000 } } },
        response: { 200: { type: 'object', properties: { token: { type: 'string' }, expiresAt: { type: 'string' } } }, ...errorResponses }
      }
    }, async (req) => {
      const ttlMs = (req.body as { ttlMs?: number } | null)?.ttlMs ?? 3600_000
      return await node.membership.invite(ttlMs, node.mesh.addresses())
    })
  }
}
