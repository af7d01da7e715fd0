import Fastify, { type FastifyInstance } from 'fastify'
import type { MeshNode } from '../node/index.js'
import { Scheduler } from '../scheduler/index.js'
import { deploymentRoutes } from './deployments.js'
import { commandRoutes } from './commands.js'
import { trustRoutes } from './trust.js'
import { installCors, installRateLimit } from './limits.js'
import http from 'node:http'
import { installApiKeys } from './auth.js'
import { installBrowserGuards } from './browser-guards.js'
import { installResponseSanitizer } from './sanitize.js'
import { installBodyDepthLimit } from './body-depth.js'
import { errorSchema, installErrorHandler } from './errors.js'
import { inspectionRoutes } from './inspection.js'
import { groupRoutes } from './groups.js'
import { openaiRoutes } from './openai.js'
import { ollamaRoutes } from './ollama.js'
import { anthropicRoutes } from './anthropic.js'
import { responsesRoutes } from './responses.js'
import { consoleRoutes, isConsoleRequest, loadConsole, sendConsolePage, wantsHtml } from './console.js'
import { peerSchema } from './schemas.js'

export interface ApiOptions {
  node: MeshNode
  /** Largest accepted request body. */
  bodyLimitBytes?: number
  /** Fastify's own request logging (off: our logger is quiet by default). */
  logRequests?: boolean
  /** The node's scheduler (router, reconciler); by default one is built and not started. */
  scheduler?: Scheduler
}

/** Builds the HTTP API of a node: inspection routes under `/api`, OpenAI routes under `/v1`. */
export async function buildApi (opts: ApiOptions): Promise<FastifyInstance> {
  const app = Fastify({
    logger: opts.logRequests === true,
    // Bounded headers and a deadline to send them: a stalled or bloated client is cut off.
    // requireHostHeader off: a missing Host gets our 400 in the OpenAI shape (browser-guards.ts), not Node's empty one.
    serverFactory: handler => http.createServer({ maxHeaderSize: 16 * 1024, headersTimeout: 15_000, requestTimeout: 120_000, requireHostHeader: false }, handler),
    bodyLimit: opts.bodyLimitBytes ?? 8 * 1024 * 1024,
    // A client that stalls its request (slowloris) is cut off; streams are unaffected once started.
    requestTimeout: 120_000,
    connectionTimeout: 0,
    keepAliveTimeout: 72_000,
    // Requests the router or the HTTP parser refuses still get the OpenAI error shape.
    frameworkErrors: (err, _req, reply: any) => {
      void reply.status(400).send({ error: { message: `Bad request: ${err.message}`, type: 'invalid_request_error', param: null, code: 'bad_request' } })
    },
    clientErrorHandler: (err: NodeJS.ErrnoException, socket) => {
      if (!socket.writable) { socket.destroy(); return }
      const status = err.code === 'HPE_HEADER_OVERFLOW' ? 431 : 400
      const body = JSON.stringify({ error: { message: status === 431 ? 'Request headers too large' : 'Malformed HTTP request', type: 'invalid_request_error', param: null, code: status === 431 ? 'headers_too_large' : 'bad_request' } })
      socket.end(`HTTP/1.1 ${status} ${status === 431 ? 'Request Header Fields Too Large' : 'Bad Request'}\r\ncontent-type: application/json; charset=utf-8\r\ncontent-length: ${Buffer.byteLength(body)}\r\nconnection: close\r\n\r\n${body}`)
    },
    onProtoPoisoning: 'remove',
    onConstructorPoisoning: 'remove',
    ajv: { customOptions: { removeAdditional: false, coerceTypes: false, allErrors: false } }
  })
  app.addSchema(errorSchema)
  app.addSchema(peerSchema)
  installErrorHandler(app)
  // First of the hooks: a DNS-rebinding page or a cross-site form is refused before anything else runs.
  installBrowserGuards(app, { apiHost: opts.node.options.apiHost, allowedHosts: opts.node.options.allowedHosts, corsOrigins: opts.node.options.corsOrigins })
  installResponseSanitizer(app)
  installCors(app, opts.node.options.corsOrigins)
  installApiKeys(app, opts.node.options.apiKeys, { isPublic: isConsoleRequest })
  installRateLimit(app, opts.node.options.rateLimitPerMin)
  installBodyDepthLimit(app)
  const scheduler = opts.scheduler ?? new Scheduler(opts.node)
  // The console (GET / for a browser, /console/*): static files; the page talks to the routes below.
  const consoleAssets = await loadConsole()
  await app.register(consoleRoutes(consoleAssets))
  await app.register(inspectionRoutes(opts.node))
  await app.register(groupRoutes(opts.node))
  await app.register(deploymentRoutes(opts.node, scheduler.router, scheduler.reconciler))
  await app.register(commandRoutes(opts.node))
  await app.register(trustRoutes(opts.node))
  await app.register(openaiRoutes({ router: scheduler.router, requestTimeoutMs: () => opts.node.options.requestTimeoutMs }))
  // Ollama's and Anthropic's APIs on the same port, each its own plugin (and error shape), routed alike.
  await app.register(ollamaRoutes({
    router: scheduler.router,
    requestTimeoutMs: () => opts.node.options.requestTimeoutMs,
    keepAliveMs: () => opts.node.options.keepAliveMs,
    page: { wants: req => wantsHtml(req.headers.accept), send: async reply => await sendConsolePage(reply, consoleAssets) }
  }))
  await app.register(anthropicRoutes({ router: scheduler.router, requestTimeoutMs: () => opts.node.options.requestTimeoutMs }))
  // OpenAI's Responses API (Agents SDK, AI SDK's openai(model), Codex), mapped onto the same chat call.
  await app.register(responsesRoutes({
    router: scheduler.router,
    requestTimeoutMs: () => opts.node.options.requestTimeoutMs,
    store: { maxResponses: opts.node.options.responsesStoreMax, maxBytes: opts.node.options.responsesStoreMb * 1024 * 1024 }
  }))
  return app
}
