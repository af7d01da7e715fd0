import type { FastifyInstance, FastifyPluginAsync } from 'fastify'
import { BadRequestError, PeerNotFoundError } from '../errors.js'
import { COMMAND_TYPES, type CommandType } from '../p2p/index.js'
import type { MeshNode } from '../node/index.js'

const errorResponses = { '4xx': { $ref: 'ErrorBody#' }, '5xx': { $ref: 'ErrorBody#' } }

/** Signed commands: the audit log (`GET /api/commands`) and issuing one as this node's operator. */
export function commandRoutes (node: MeshNode): FastifyPluginAsync {
  return async (app: FastifyInstance) => {
    app.get('/api/commands', {
      schema: {
        // Query values are strings (no type coercion anywhere in this API).
        querystring: { type: 'object', additionalProperties: false, properties: { limit: { type: 'string', pattern: '^(?:[1-9][0-9]{0,2}|1000)$' }, before: { type: 'string', maxLength: 128 } } },
        response: { 200: { type: 'object', additionalProperties: true }, ...errorResponses }
      }
    }, async (req) => {
      const q = req.query as { limit?: string, before?: string }
      const limit = q.limit != null ? Number(q.limit) : 100
      const [commands, wire] = await Promise.all([node.control.audit({ limit, before: q.before }), node.store.auditLog(limit)])
      return { commands, wire }
    })

    app.post('/api/commands', {
      schema: {
        body: {
          type: 'object',
          required: ['target', 'type'],
          additionalProperties: false,
          properties: {
            target: { type: 'string', minLength: 1, maxLength: 128 },
            type: { type: 'string', enum: [...COMMAND_TYPES] },
            payload: { type: 'object', default: {} },
            group: { type: 'string', minLength: 1, maxLength: 64 }
          }
        },
        response: { 200: { type: 'object', additionalProperties: true }, ...errorResponses }
      }
    }, async (req) => {
      const body = req.body as { target: string, type: CommandType, payload: Record<string, unknown>, group?: string }
      const target = body.target === 'self' ? node.id : resolvePeer(node, body.target)
      const group = body.group ?? node.mesh.groups[0]
      if (group == null) throw new BadRequestError('this node is in no group; name one', 'group')
      const output: string[] = []
      const result = await node.control.send(target, body.type, body.payload, { group, term: node.groups.leaderOf(group).term, onOutput: line => { if (output.length < 10_000) output.push(line) } })
      return { ...result, output }
    })
  }
}

/** Accepts a full peer id, a unique suffix of one, or a peer name. */
function resolvePeer (node: MeshNode, ref: string): string {
  if (ref === node.id || ref === node.name) return node.id
  const peers = node.peers()
  const hits = peers.filter(p => p.id === ref || p.name === ref || p.id.endsWith(ref))
  if (hits.length !== 1) throw new PeerNotFoundError(ref)
  return hits[0].id
}
