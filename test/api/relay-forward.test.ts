/**
 * A node that only forwards never parses (issue 12 item 3): the OpenAI routes write a relayed
 * result and each relayed chunk as the host serialized it. The router runs on fake ports whose
 * remote call answers payloads made from bytes, as the relay does (src/node/relay.ts).
 */
import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import Fastify from 'fastify'
import { openaiRoutes } from '../../src/api/openai.js'
import { errorSchema } from '../../src/api/errors.js'
import { Router } from '../../src/scheduler/router.js'
import type { RouterPorts } from '../../src/scheduler/router-ports.js'
import { JsonPayload, type InferenceCall, type PeerView } from '../../src/node/index.js'

/** What JSON.stringify would never write: a parse and a new serialization would lose it. */
const VERBATIM = ['{"id":"c1", "choices":[{"delta":{"content":"caf\\u00e9"}}], "n": 1.50}', '{"id":"c1","choices":[],"usage":{"prompt_tokens":3.0}}']

describe('forwarding node: results and chunks written as the host serialized them', () => {
  it('streams each chunk\'s bytes untouched, parses none of them, and sends the request id on', async () => {
    const peer = { id: 'H', name: 'H', status: 'alive', rttMs: 1, groups: [], load: { active: 0, queued: 0 }, labels: {}, servesPeers: true, resources: null, models: [{ name: 'm', fingerprint: 'ab'.repeat(32), sizeBytes: 1, state: 'loaded' }] } as unknown as PeerView
    const payloads: JsonPayload[] = []
    const calls: InferenceCall[] = []
    const ports: RouterPorts = {
      view: { self: () => ({ ...peer, id: 'self', models: [] }) as unknown as PeerView, peers: () => [peer], deployedFingerprint: () => undefined },
      local: { run: async () => { throw new Error('not local') }, capacity: () => ({ active: 0, maxConcurrent: 1 }) },
      remote: {
        call: async (_p, call) => {
          calls.push(call)
          if (!call.stream) {
            const data = JsonPayload.fromBytes(new TextEncoder().encode(VERBATIM[0]))
            payloads.push(data)
            return { kind: 'result', data }
          }
          return {
            kind: 'stream',
            chunks: (async function * () {
              for (const v of VERBATIM) {
                const p = JsonPayload.fromBytes(new TextEncoder().encode(v))
                payloads.push(p)
                yield p
              }
            })()
          }
        }
      }
    }
    const router = new Router(ports, { strategy: 'least-loaded', breakerFailures: 3, breakerCooldownMs: 1000, prefixRouting: () => true })
    const app = Fastify()
    app.addSchema(errorSchema)
    await app.register(openaiRoutes({ router, requestTimeoutMs: () => 10_000 }))
    try {
      const res = await app.inject({ method: 'POST', url: '/v1/chat/completions', headers: { 'x-request-id': 'fwd-1' }, payload: { model: 'm', stream: true, messages: [{ role: 'user', content: 'hi' }] } })
      assert.equal(res.statusCode, 200)
      assert.equal(res.body, VERBATIM.map(v => `data: ${v}\n\n`).join('') + 'data: [DONE]\n\n')
      assert.equal(res.headers['x-request-id'], 'fwd-1')
      assert.equal(calls[0].requestId, 'fwd-1')
      const whole = await app.inject({ method: 'POST', url: '/v1/chat/completions', payload: { model: 'm', messages: [{ role: 'user', content: 'hi' }] } })
      assert.equal(whole.statusCode, 200)
      assert.equal(whole.body, VERBATIM[0])
      assert.equal(payloads.length, 3)
      assert.ok(payloads.every(p => !p.parsed), 'no payload was parsed on the way')
    } finally {
      await app.close()
    }
  })
})
