import type { FastifyInstance, FastifyPluginAsync } from 'fastify'
import { NotFoundError } from '../errors.js'
import type { MeshNode } from '../node/index.js'

const errorResponses = { '4xx': { $ref: 'ErrorBody#' }, '5xx': { $ref: 'ErrorBody#' } }
const nameParams = { type: 'object', required: ['name'], properties: { name: { type: 'string', minLength: 1, maxLength: 64, pattern: '^[A-Za-z0-9._-]+$' } } }
const groupSchema = {
  type: 'object',
  properties: {
    name: { type: 'string' },
    leader: { type: ['string', 'null'] },
    term: { type: 'integer' },
    joined: { type: 'boolean' },
    members: { type: 'array', items: { type: 'object', properties: { id: { type: 'string' }, name: { type: 'string' }, status: { type: 'string' }, self: { type: 'boolean' } } } }
  }
}

/** Swarm groups: membership and leadership (`/api/groups`). */
export function groupRoutes (node: MeshNode): FastifyPluginAsync {
  return async (app: FastifyInstance) => {
    app.get('/api/groups', {
      schema: { response: { 200: { type: 'object', properties: { groups: { type: 'array', items: groupSchema } } }, ...errorResponses } }
    }, async () => ({ groups: node.groups.list() }))

    app.get('/api/groups/:name', {
      schema: { params: nameParams, response: { 200: groupSchema, ...errorResponses } }
    }, async (req) => {
      const { name } = req.params as { name: string }
      const g = node.groups.get(name)
      if (g == null) throw new NotFoundError(`No group named '${name}'`, 'group_not_found')
      return g
    })

    app.post('/api/groups/:name/join', { schema: { params: nameParams, response: { 200: groupSchema, ...errorResponses } } }, async (req) => {
      const { name } = req.params as { name: string }
      await node.groups.join(name)
      return node.groups.get(name)
    })

    app.post('/api/groups/:name/leave', { schema: { params: nameParams, response: { 200: groupSchema, ...errorResponses } } }, async (req) => {
      const { name } = req.params as { name: string }
      await node.groups.leave(name)
      return node.groups.get(name) ?? { name, leader: null, term: 0, joined: false, members: [] }
    })
  }
}
