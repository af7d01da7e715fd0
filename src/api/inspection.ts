import type { FastifyInstance, FastifyPluginAsync } from 'fastify'
import { PeerNotFoundError } from '../errors.js'
import { percentOf, type MeshNode, type PeerEvent, type ProgressEvent } from '../node/index.js'
import { renderPrometheus } from './metrics.js'
import { peerIdParams } from './schemas.js'
import { stripControlDeep } from '../p2p/index.js'

const errorResponses = { '4xx': { $ref: 'ErrorBody#' }, '5xx': { $ref: 'ErrorBody#' } }

/** `/healthz`, `/metrics` and the peer inspection routes under `/api`. */
export function inspectionRoutes (node: MeshNode, opts: { sseHeartbeatMs?: number } = {}): FastifyPluginAsync {
  return async (app: FastifyInstance) => {
    app.get('/healthz', {
      schema: { response: { 200: { type: 'object', properties: { status: { type: 'string' }, id: { type: 'string' }, name: { type: 'string' } } } } }
    }, async () => ({ status: 'ok', id: node.id, name: node.name }))

    app.get('/metrics', {
      schema: { response: { 200: { type: 'string' } } }
    }, async (_req, reply) => {
      const mem = process.memoryUsage()
      void reply.type('text/plain; version=0.0.4; charset=utf-8')
      return renderPrometheus(node.metrics(), { rssBytes: mem.rss, heapUsedBytes: mem.heapUsed })
    })

    app.get('/api/node', {
      schema: { response: { 200: { $ref: 'Peer#' }, ...errorResponses } }
    }, async () => ({ ...node.self(), duplicateIdentity: node.duplicateIdentity(node.id) }))

    app.get('/api/peers', {
      schema: {
        querystring: { type: 'object', properties: { status: { type: 'string', enum: ['alive', 'suspect', 'dead', 'left', 'pending'] } }, additionalProperties: false },
        response: { 200: { type: 'object', properties: { self: { type: 'string' }, peers: { type: 'array', items: { $ref: 'Peer#' } } } }, ...errorResponses }
      }
    }, async (req) => {
      const { status } = req.query as { status?: string }
      // Members first, then pending and revoked peers (shown, never routed to).
      const peers = [...node.peers(), ...node.otherPeers()]
      const shown = (status != null ? peers.filter(p => p.status === status) : peers).map(p => ({ ...p, duplicateIdentity: node.duplicateIdentity(p.id) }))
      return { self: node.id, peers: shown }
    })

    app.get('/api/peers/:id', {
      schema: { params: peerIdParams, response: { 200: { $ref: 'Peer#' }, ...errorResponses } }
    }, async (req) => {
      const { id } = req.params as { id: string }
      const peer = node.peer(id)
      if (peer == null) throw new PeerNotFoundError(id)
      return { ...peer, duplicateIdentity: node.duplicateIdentity(id) }
    })

    // Server-Sent Events: one `event:` per peer transition; a comment line keeps proxies from closing it.
    app.get('/api/events', { schema: { response: { 200: { type: 'string' } } } }, (req, reply) => {
      reply.hijack()
      const res = reply.raw
      res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache', connection: 'keep-alive', 'x-accel-buffering': 'no' })
      // Written by hand (hijacked), so the response sanitizer does not see these: clean them here.
      res.write(`event: hello\ndata: ${JSON.stringify(stripControlDeep({ id: node.id, name: node.name, peers: node.peers().map(p => ({ id: p.id, name: p.name, status: p.status })) }))}\n\n`)
      const onPeer = (ev: PeerEvent): void => { res.write(`event: ${ev.type}\ndata: ${JSON.stringify(stripControlDeep(ev))}\n\n`) }
      node.on('peer', onPeer)
      // Model transfers and loads, this node's and members' (issue 15: deployment progress).
      const onProgress = (ev: ProgressEvent): void => {
        const data = { model: ev.model, group: node.deployments.get(ev.model)?.group ?? null, nodeId: ev.nodeId, name: ev.name, phase: ev.phase, receivedBytes: ev.receivedBytes, totalBytes: ev.totalBytes, percent: percentOf(ev), bytesPerSec: ev.bytesPerSec, error: ev.error, at: new Date(ev.at).toISOString() }
        res.write(`event: deployment:progress\ndata: ${JSON.stringify(stripControlDeep(data))}\n\n`)
      }
      node.on('progress', onProgress)
      const keepAlive = setInterval(() => { res.write(': keep-alive\n\n') }, opts.sseHeartbeatMs ?? 15000)
      const done = (): void => {
        clearInterval(keepAlive)
        node.off('peer', onPeer)
        node.off('progress', onProgress)
      }
      req.raw.on('close', done)
      res.on('error', done)
    })
  }
}
