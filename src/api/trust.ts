import type { FastifyInstance, FastifyPluginAsync } from 'fastify'
import type { MeshNode } from '../node/index.js'

const errorResponses = { '4xx': { $ref: 'ErrorBody#' }, '5xx': { $ref: 'ErrorBody#' } }
const ids = { type: 'array', maxItems: 256, items: { type: 'string', pattern: '^[A-Za-z0-9]{32,128}$' } }
const lists = { type: 'object', properties: { allow: { type: 'array', items: { type: 'string' } }, deny: { type: 'array', items: { type: 'string' } } } }

/** Trust lists (`/api/trust`): which peer ids may talk to this node. */
export function trustRoutes (node: MeshNode): FastifyPluginAsync {
  return async (app: FastifyInstance) => {
    app.get('/api/trust', { schema: { response: { 200: lists, ...errorResponses } } }, async () => node.trust.lists())
    app.post('/api/trust', {
      schema: {
        body: { type: 'object', additionalProperties: false, minProperties: 1, properties: { allow: ids, deny: ids, remove: ids } },
        response: { 200: lists, ...errorResponses }
      }
    }, async (req) => await node.updateTrust(req.body as { allow?: string[], deny?: string[], remove?: string[] }))
  }
}
