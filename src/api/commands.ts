import type { FastifyInstance, FastifyPluginAsync } from 'fastify'
import { BadRequestError, PeerNotFoundError } from '../errors.js'
import { COMMAND_TYPES, type CommandType } from '../p2p/index.js'
import { AmbiguousPeerError, MEMBER_OPERATOR_TERM, type MeshNode } from '../node/index.js'

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
      // The group's leader signs at its term; any other member signs as an operator (term 0), which
      // the target accepts from a member by proof (not in an open mesh): see operatorAuthority.
      const term = node.groups.isLeader(group) ? node.groups.leaderOf(group).term : MEMBER_OPERATOR_TERM
      const result = await node.control.send(target, body.type, body.payload, { group, term, onOutput: line => { if (output.length < 10_000) output.push(line) } })
      return { ...result, output, target, issuedAs: term === MEMBER_OPERATOR_TERM && target !== node.id ? 'member' : target === node.id ? 'self' : 'leader' }
    })
  }
}

/**
 * Accepts a full peer id, a peer name or a unique id suffix (at least 6 characters), this node
 * included. A name or suffix that several nodes share is refused (409 `ambiguous_peer`, listing
 * them), never resolved to one silently (every Raspberry Pi is called "raspberrypi").
 */
export function resolvePeer (node: Pick<MeshNode, 'id' | 'name' | 'peers'>, ref: string): string {
  const all = [{ id: node.id, name: node.name }, ...node.peers().map(p => ({ id: p.id, name: p.name }))]
  const exact = all.find(p => p.id === ref)
  if (exact != null) return exact.id
  const byName = all.filter(p => p.name === ref)
  if (byName.length > 1) throw new AmbiguousPeerError(ref, byName)
  if (byName.length === 1) return byName[0].id
  const bySuffix = ref.length >= 6 ? all.filter(p => p.id.endsWith(ref)) : []
  if (bySuffix.length > 1) throw new AmbiguousPeerError(ref, bySuffix)
  if (bySuffix.length === 1) return bySuffix[0].id
  throw new PeerNotFoundError(ref)
}
