import type { FastifyInstance, FastifyPluginAsync } from 'fastify'
import { ModelNotFoundError, NotFoundError, ShepherdError } from '../errors.js'
import type { MeshNode } from '../node/index.js'
import type { Reconciler, Router } from '../scheduler/index.js'
import { pinnedHosts } from '../scheduler/model-registry.js'
import { deploymentProgress } from './deployment-progress.js'

const errorResponses = { '4xx': { $ref: 'ErrorBody#' }, '5xx': { $ref: 'ErrorBody#' } }
const STRATEGIES = ['resource-fit', 'least-loaded', 'locality', 'round-robin', 'weighted', 'random', 'label-cost']

const createBody = {
  type: 'object',
  required: ['model'],
  additionalProperties: false,
  properties: {
    model: { type: 'string', minLength: 1, maxLength: 256 },
    replicas: { type: 'integer', minimum: 1, maximum: 1024, default: 1 },
    group: { type: 'string', minLength: 1, maxLength: 64, pattern: '^[A-Za-z0-9._-]+$', default: 'default' },
    strategy: { type: 'string', enum: STRATEGIES },
    /** The file meant (sha256, or a unique prefix of at least 12 hex digits); default: the one this node resolves the name to. */
    fingerprint: { type: 'string', minLength: 12, maxLength: 64, pattern: '^[0-9a-fA-F]+$' },
    constraints: {
      type: 'object',
      additionalProperties: false,
      properties: {
        gpuRequired: { type: 'boolean' },
        minVramBytes: { type: 'integer', minimum: 0 },
        labels: { type: 'object', maxProperties: 32, additionalProperties: { type: 'string', maxLength: 128 } },
        split: { type: 'boolean' }
      }
    }
  }
}

/** Deployments: desired state per model (`/api/deployments`), reconciled by each group's leader. */
export function deploymentRoutes (node: MeshNode, router: Router, reconciler: Reconciler): FastifyPluginAsync {
  const view = (model: string): Record<string, unknown> | undefined => {
    const d = node.deployments.get(model)
    if (d == null) return undefined
    const status = reconciler.status(d)
    return { ...d, status, progress: deploymentProgress(d, status, node.progressRows()) }
  }
  return async (app: FastifyInstance) => {
    app.get('/api/deployments', {
      schema: { response: { 200: { type: 'object', additionalProperties: true }, ...errorResponses } }
    }, async () => ({ deployments: node.deployments.list().map(d => view(d.model)) }))

    app.post('/api/deployments', {
      schema: { body: createBody, response: { 201: { type: 'object', additionalProperties: true }, ...errorResponses } }
    }, async (req, reply) => {
      const body = req.body as { model: string, replicas: number, group: string, strategy?: string, constraints?: Record<string, unknown>, fingerprint?: string }
      const entry = router.models().get(body.model)
      if (entry == null) throw new ModelNotFoundError(body.model)
      // The deployment names one file, so that routing and copies never follow another of the same name.
      const fingerprint = body.fingerprint != null ? pinnedHosts(entry, body.fingerprint)[0].fingerprint : entry.fingerprint
      if (fingerprint == null) {
        throw new ShepherdError(`Members hold different files named '${body.model}'; say which with "fingerprint"`, { code: 'model_ambiguous', status: 409, param: 'fingerprint' })
      }
      await node.deployments.put({ ...body, fingerprint })
      void reply.status(201)
      return view(body.model)
    })

    app.delete('/api/deployments/*', {
      schema: { response: { 200: { type: 'object', additionalProperties: true }, ...errorResponses } }
    }, async (req) => {
      const model = (req.params as { '*': string })['*']
      const removed = await node.deployments.remove(model)
      if (removed == null) throw new NotFoundError(`No deployment of '${model}'`, 'deployment_not_found')
      return removed
    })
  }
}
