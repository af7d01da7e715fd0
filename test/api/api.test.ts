import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { buildApi } from '../../src/api/index.js'
import { MeshNode } from '../../src/node/index.js'
import { resolveOptions } from '../../src/config/index.js'
import { setLogLevel, setLogSink } from '../../src/logger.js'
import { tempDir } from '../support/cluster.js'
import type { FastifyInstance } from 'fastify'

const KEY = 'sk-test-0123456789abcdef'

describe('HTTP API (real node in process, fastify.inject)', () => {
  let node: MeshNode
  let app: FastifyInstance
  const logs: string[] = []

  before(async () => {
    setLogSink(line => logs.push(line))
    setLogLevel('trace')
    const options = await resolveOptions({ env: {}, flags: { 'no-mdns': true, 'data-dir': await tempDir(), listen: ['/ip4/127.0.0.1/tcp/0'], 'api-key': [KEY], name: 'api-node' } })
    node = await MeshNode.create(options)
    await node.start()
    app = await buildApi({ node })
  })

  after(async () => {
    await app.close()
    await node.stop({ announce: false })
    setLogLevel('warn')
  })

  it('requires the API key on /v1 and /api but not on /healthz', async () => {
    assert.equal((await app.inject({ url: '/healthz' })).statusCode, 200)
    for (const url of ['/v1/models', '/api/peers', '/api/node', '/metrics']) {
      const none = await app.inject({ url })
      assert.equal(none.statusCode, 401, url)
      assert.equal(none.json().error.type, 'authentication_error')
      assert.equal(none.json().error.code, 'invalid_api_key')
      const wrong = await app.inject({ url, headers: { authorization: 'Bearer sk-wrong' } })
      assert.equal(wrong.statusCode, 401)
      const ok = await app.inject({ url, headers: { authorization: `Bearer ${KEY}` } })
      assert.equal(ok.statusCode, 200, url)
    }
    assert.equal((await app.inject({ url: '/v1/models', headers: { 'x-api-key': KEY } })).statusCode, 200)
  })

  it('never writes the key to logs or responses', async () => {
    await app.inject({ url: '/v1/models', headers: { authorization: 'Bearer sk-wrong-key-xyz' } })
    const res = await app.inject({ url: '/api/node', headers: { authorization: `Bearer ${KEY}` } })
    assert.ok(!res.body.includes(KEY))
    const all = logs.join('\n')
    assert.ok(logs.length > 0, 'the node logged something at trace level')
    assert.ok(!all.includes(KEY))
    assert.ok(!all.includes('sk-wrong-key-xyz'))
  })

  it('answers unknown routes, bad ids and bad bodies in the OpenAI error shape', async () => {
    const auth = { authorization: `Bearer ${KEY}` }
    const missing = await app.inject({ url: '/nope', headers: auth })
    assert.equal(missing.statusCode, 404)
    assert.equal(missing.json().error.code, 'route_not_found')
    const badStatus = await app.inject({ url: '/api/peers?status=zombie', headers: auth })
    assert.equal(badStatus.statusCode, 400)
    const noModel = await app.inject({ method: 'POST', url: '/v1/chat/completions', headers: auth, payload: { messages: [] } })
    assert.equal(noModel.statusCode, 400)
    assert.equal(noModel.json().error.type, 'invalid_request_error')
    const unknown = await app.inject({ method: 'POST', url: '/v1/embeddings', headers: auth, payload: { model: 'ghost', input: 'x' } })
    assert.equal(unknown.statusCode, 404)
    assert.equal(unknown.json().error.code, 'model_not_found')
    assert.equal(unknown.json().error.param, 'model')
    const proto = await app.inject({ method: 'POST', url: '/v1/chat/completions', headers: { ...auth, 'content-type': 'application/json' }, payload: '{"model":"ghost","messages":[{"role":"user","content":"x"}],"__proto__":{"polluted":true}}' })
    assert.equal(proto.statusCode, 404)
    assert.equal(({} as any).polluted, undefined)
  })

  it('describes itself with the peer fields and exposes Prometheus metrics', async () => {
    const auth = { authorization: `Bearer ${KEY}` }
    const self = (await app.inject({ url: '/api/node', headers: auth })).json()
    assert.equal(self.name, 'api-node')
    assert.equal(self.status, 'alive')
    for (const k of ['id', 'lastSeen', 'rttMs', 'addresses', 'groups', 'resources', 'models']) assert.ok(k in self, k)
    for (const k of ['cpu', 'memory', 'disk', 'gpus', 'llamacpp']) assert.ok(k in self.resources, k)
    const metrics = await app.inject({ url: '/metrics', headers: auth })
    assert.match(String(metrics.headers['content-type']), /^text\/plain/)
    assert.match(metrics.body, /^# TYPE shepherd_peers gauge$/m)
  })
})
