/** The HTTP API (Fastify): inspection and, later, OpenAI routes. Depends on scheduler and node. */
export { buildApi, type ApiOptions } from './server.js'
export { toErrorBody, type ErrorBody } from './errors.js'
export { renderPrometheus } from './metrics.js'
