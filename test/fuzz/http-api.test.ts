/**
 * Fuzzing the HTTP API (src/api) of a real in-process `MeshNode` through `app.inject`: random
 * methods, paths (hostile parameters, bad percent-encoding, poison keys in queries), headers
 * (keys, content types, sizes) and bodies (valid, mutated, invalid JSON, deep JSON, prototype
 * poisoning, invalid UTF-8, oversized). Every answer must be a success or an error in the
 * OpenAI shape `{ error: { message, type, param, code } }` with a status that fits; client
 * garbage never gets a 500. (What peers gossip to the node: test/fuzz/gossip-node.test.ts.)
 *
 *   node --import tsx --test test/fuzz/http-api.test.ts   (FUZZ_SEED=<n> replays)
 */
import '../../src/polyfill.js'
import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import net, { type AddressInfo } from 'node:net'
import fc from 'fast-check'
import type { FastifyInstance, InjectOptions } from 'fastify'
import { buildApi } from '../../src/api/index.js'
import { MeshNode } from '../../src/node/index.js'
import { resolveOptions } from '../../src/config/index.js'
import { logSink, setLogSink } from '../../src/logger.js'
import { COMMAND_TYPES } from '../../src/p2p/command-messages.js'
import { decodeMembership, encodeMembership, type MembershipMessage } from '../../src/p2p/messages.js'
import { MAX_GROUPS } from '../../src/p2p/constants.js'
import { tempDir } from '../support/cluster.js'
import { assertHeapBounded, checkAsync, deadline, heapUsed, ProcessWatch } from '../support/fuzz-harness.js'
import { deepJsonText, hostileJsonText, hostileJsonValue, mutated, POISON_KEYS } from '../support/fuzz-arbitraries.js'
import { jsonObject, peerIdText, validPayloads } from '../support/fuzz-messages.js'

const KEY = 'sk-fuzz-0123456789abcdef'
const BODY_LIMIT = 64 * 1024

/** Statuses a client can get for what it sent; 5xx only where the mesh itself cannot serve (no host for a model). */
const CLIENT_STATUSES = new Set([200, 201, 400, 401, 403, 404, 405, 409, 413, 415, 429])
const MESH_STATUSES = new Set([502, 503, 504])

type Route = { method: string, path: (p: string) => string, body?: fc.Arbitrary<unknown> }

const model = fc.oneof(fc.constantFrom('m1', 'ghost', '', '__proto__', 'constructor'), fc.string({ unit: 'binary', maxLength: 300 }))
const chat = fc.record({ model, messages: fc.array(fc.record({ role: fc.constantFrom('user', 'system', 'tool', ''), content: fc.oneof(fc.string(), jsonObject) }), { maxLength: 3 }), stream: fc.boolean() }, { requiredKeys: ['model', 'messages'] })
const completion = fc.record({ model, prompt: fc.oneof(fc.string(), fc.array(fc.string())), stream: fc.boolean() }, { requiredKeys: ['model', 'prompt'] })
const embeddings = fc.record({ model, input: fc.oneof(fc.string(), fc.array(fc.string(), { maxLength: 3 })) })
const deployment = fc.record({ model, replicas: fc.integer({ min: -1, max: 2000 }), group: fc.string({ maxLength: 70 }), strategy: fc.constantFrom('resource-fit', 'least-loaded', 'nope'), constraints: fc.record({ gpuRequired: fc.boolean(), minVramBytes: fc.integer(), labels: fc.dictionary(fc.string(), fc.string()) }, { requiredKeys: [] }) }, { requiredKeys: ['model'] })
/** Commands are mostly broken: a valid one to `self` really runs (harmless handlers, but slow ones like scans). */
const command = fc.record({
  target: fc.oneof(fc.constantFrom('self', 'nobody', ''), peerIdText),
  type: fc.oneof(fc.constantFrom(...COMMAND_TYPES), fc.string({ maxLength: 12 })),
  payload: fc.oneof(validPayloads.collect_logs, validPayloads.update_config.filter(p => p.key === 'logLevel'), hostileJsonValue),
  group: fc.oneof(fc.constantFrom('default', 'nope'), fc.string({ maxLength: 70 }))
}, { requiredKeys: ['target', 'type'] })
const trust = fc.record({ allow: fc.array(fc.oneof(peerIdText, fc.string()), { maxLength: 3 }), deny: fc.array(fc.string(), { maxLength: 3 }), remove: fc.array(peerIdText, { maxLength: 2 }) }, { requiredKeys: [] })

const ROUTES: Route[] = [
  { method: 'GET', path: () => '/healthz' },
  { method: 'GET', path: () => '/metrics' },
  { method: 'GET', path: () => '/api/node' },
  { method: 'GET', path: () => '/api/peers' },
  { method: 'GET', path: p => `/api/peers/${p}` },
  { method: 'GET', path: () => '/api/groups' },
  { method: 'GET', path: p => `/api/groups/${p}` },
  { method: 'POST', path: p => `/api/groups/${p}/join` },
  { method: 'POST', path: p => `/api/groups/${p}/leave` },
  { method: 'GET', path: () => '/api/deployments' },
  { method: 'POST', path: () => '/api/deployments', body: deployment },
  { method: 'DELETE', path: p => `/api/deployments/${p}` },
  { method: 'GET', path: () => '/api/commands' },
  { method: 'POST', path: () => '/api/commands', body: command },
  { method: 'GET', path: () => '/api/trust' },
  { method: 'POST', path: () => '/api/trust', body: trust },
  { method: 'GET', path: () => '/api/models' },
  { method: 'GET', path: () => '/v1/models' },
  { method: 'GET', path: p => `/v1/models/${p}` },
  { method: 'POST', path: () => '/v1/chat/completions', body: chat },
  { method: 'POST', path: () => '/v1/completions', body: completion },
  { method: 'POST', path: () => '/v1/embeddings', body: embeddings },
  { method: 'POST', path: () => '/v1/audio/transcriptions', body: fc.record({ model }) },
  { method: 'POST', path: () => '/v1/audio/translations', body: fc.record({ model }) },
  { method: 'POST', path: () => '/v1/audio/speech', body: fc.record({ model, input: fc.string() }) },
  { method: 'POST', path: () => '/v1/images/generations', body: fc.record({ model, prompt: fc.string() }) }
]

const printable = fc.string({ unit: fc.integer({ min: 0x20, max: 0x7e }).map(c => String.fromCharCode(c)), maxLength: 40 })
/** Path parameters: percent-encoded anything, bad escapes, dot segments, poison keys, long ones. */
const param = fc.oneof(
  fc.string({ unit: 'binary', maxLength: 40 }).map(encodeURIComponent),
  fc.constantFrom('%', '%zz', '%E0%A4%A', '%ff', '%00', '..', '%2e%2e%2f', '..%2f..%2fetc', 'self', '', 'default', 'm1', ...POISON_KEYS, 'a'.repeat(300)),
  printable.map(s => s.replace(/[#?\s]/g, '')),
  peerIdText
)
const queryKey = fc.oneof(fc.constantFrom('limit', 'before', 'status', 'x', '__proto__', 'constructor[prototype][polluted]', '__proto__[polluted]', 'limit[]'), printable.map(encodeURIComponent))
const queryValue = fc.oneof(fc.constantFrom('1', '1000', '1001', '0', '-1', '1e3', 'alive', 'zombie', '', '%', '%zz'), fc.string({ unit: 'binary', maxLength: 20 }).map(encodeURIComponent))
const query = fc.array(fc.tuple(queryKey, queryValue), { maxLength: 3 }).map(kv => kv.length === 0 ? '' : '?' + kv.map(([k, v]) => `${k}=${v}`).join('&'))

const AUTH_VARIANTS: Array<Record<string, string>> = [
  {}, { authorization: 'Bearer sk-wrong' }, { authorization: `bearer ${KEY}` }, { authorization: `Bearer   ${KEY}  ` }, { authorization: 'Bearer' },
  { authorization: `Basic ${KEY}` }, { 'x-api-key': KEY }, { 'x-api-key': '' }, { authorization: 'Bearer ' + 'x'.repeat(8000) }
]
const authHeaders: fc.Arbitrary<Record<string, string>> = fc.oneof(
  { arbitrary: fc.constant<Record<string, string>>({ authorization: `Bearer ${KEY}` }), weight: 6 },
  { arbitrary: fc.constantFrom(...AUTH_VARIANTS), weight: 2 }
)
const contentType = fc.oneof(
  { arbitrary: fc.constant('application/json'), weight: 6 },
  { arbitrary: fc.constantFrom(undefined, 'application/json; charset=utf-8', 'application/json; charset=latin1', 'APPLICATION/JSON', 'application/json;', 'text/plain', 'application/x-www-form-urlencoded', 'multipart/form-data; boundary=x', 'multipart/form-data', 'application/octet-stream', 'audio/wav', 'application/jsonx', ';;;', '', ' ', 'application/json; charset=utf-16'), weight: 3 },
  { arbitrary: printable, weight: 1 }
)
const extraHeaders = fc.array(fc.tuple(fc.oneof(fc.constantFrom('content-encoding', 'accept', 'x-forwarded-for', 'origin', 'x-request-id', 'transfer-encoding', 'expect'), fc.stringMatching(/^[a-z][a-z0-9-]{0,20}$/)), printable), { maxLength: 3 })
  .map(kv => Object.fromEntries(kv.filter(([k]) => !['host', 'content-length', 'authorization', 'x-api-key', 'content-type', 'transfer-encoding', 'connection'].includes(k))))

function bodyFor (route: Route): fc.Arbitrary<string | Buffer | undefined> {
  const valid = route.body ?? jsonObject
  return fc.oneof(
    { arbitrary: valid.map(v => JSON.stringify(v)), weight: 4 },
    { arbitrary: mutated(valid).map(v => JSON.stringify(v) ?? ''), weight: 3 },
    { arbitrary: hostileJsonText.map(t => t.length > 3 * BODY_LIMIT ? t.slice(0, 3 * BODY_LIMIT) : t), weight: 2 },
    { arbitrary: fc.constantFrom('{"__proto__":{"polluted":1},"model":"m1","messages":[{"role":"user"}],"input":"x"}', '{"constructor":{"prototype":{"polluted":1}},"model":"m1","input":"x","prompt":"x"}', '{"model":"m1","input":' + deepJsonText(20_000) + '}', '{"model":"m1","messages":[{"role":"user","content":' + deepJsonText(20_000, 'object') + '}]}'), weight: 1 },
    { arbitrary: fc.uint8Array({ maxLength: 200 }).map(b => Buffer.from(b)), weight: 1 },
    { arbitrary: fc.integer({ min: BODY_LIMIT + 1, max: 3 * BODY_LIMIT }).map(n => '{"model":"' + 'x'.repeat(n) + '"}'), weight: 1 },
    { arbitrary: fc.constant(undefined), weight: 1 }
  )
}

const METHODS = ['GET', 'POST', 'PUT', 'PATCH', 'DELETE', 'OPTIONS', 'HEAD', 'PROPFIND', 'TRACE'] as const

const request: fc.Arbitrary<InjectOptions> = fc.constantFrom(...ROUTES).chain(route => fc.record({
  method: fc.oneof({ arbitrary: fc.constant(route.method), weight: 5 }, { arbitrary: fc.constantFrom(...METHODS), weight: 1 }),
  path: param.map(route.path),
  query,
  auth: authHeaders,
  type: contentType,
  extra: extraHeaders,
  body: bodyFor(route)
})).map(r => {
  const headers: Record<string, string> = { ...r.extra, ...r.auth }
  if (r.type !== undefined) headers['content-type'] = r.type
  const withBody = r.method !== 'GET' && r.method !== 'HEAD' && r.body !== undefined
  return { method: r.method as InjectOptions['method'], url: r.path + r.query, headers, ...(withBody ? { payload: r.body } : {}) }
})

/** Sends raw bytes to the API on loopback and returns everything it answers before closing. */
async function rawRequest (port: number, raw: string): Promise<string> {
  return await new Promise((resolve, reject) => {
    const socket = net.connect(port, '127.0.0.1', () => { socket.end(raw) })
    let out = ''
    const timer = setTimeout(() => { socket.destroy(); reject(new Error(`no answer to ${raw.slice(0, 20)}`)) }, 5000)
    socket.on('data', d => { out += d.toString('latin1') })
    socket.on('close', () => { clearTimeout(timer); resolve(out) })
    socket.on('error', err => { clearTimeout(timer); reject(err) })
  })
}

/** The OpenAI error shape, and nothing else. */
function assertErrorShape (body: unknown, where: string): void {
  assert.ok(body !== null && typeof body === 'object' && !Array.isArray(body), `${where}: error body is not an object`)
  assert.deepEqual(Object.keys(body as object), ['error'], `${where}: error body has keys ${Object.keys(body as object).join(',')}`)
  const e = (body as { error: Record<string, unknown> }).error
  assert.deepEqual(Object.keys(e).sort(), ['code', 'message', 'param', 'type'], `${where}: error has keys ${Object.keys(e).join(',')}`)
  assert.equal(typeof e.message, 'string')
  assert.equal(typeof e.type, 'string')
  assert.ok(e.param === null || typeof e.param === 'string')
  assert.ok(e.code === null || typeof e.code === 'string')
}

describe('fuzz: HTTP API of a real node (fastify.inject)', () => {
  const watch = new ProcessWatch()
  const protoKeys = Object.getOwnPropertyNames(Object.prototype).sort()
  let node: MeshNode
  let app: FastifyInstance
  const originalSink = logSink
  const statuses = new Map<string, number>()
  let heapBefore = 0

  before(async () => {
    watch.start()
    setLogSink(() => {})
    const options = await resolveOptions({ env: {}, flags: { 'no-mdns': true, 'data-dir': await tempDir('shepherd-fuzz-api-'), listen: ['/ip4/127.0.0.1/tcp/0'], 'api-key': [KEY], name: 'fuzz-node' } })
    node = await MeshNode.create(options)
    await node.start()
    app = await buildApi({ node, bodyLimitBytes: BODY_LIMIT })
    heapBefore = await heapUsed()
  })

  after(async () => {
    await app?.close()
    await node?.stop({ announce: false })
    setLogSink(originalSink)
    console.log(`# fuzz http: statuses ${JSON.stringify(Object.fromEntries([...statuses].sort()))}`)
    watch.stop()
    watch.assertClean()
    assert.deepEqual(Object.getOwnPropertyNames(Object.prototype).sort(), protoKeys, 'Object.prototype gained keys')
    assert.equal(({} as Record<string, unknown>).polluted, undefined)
  })

  async function send (req: InjectOptions): Promise<void> {
    const where = `${req.method} ${String(req.url).slice(0, 120)}`
    const res = await deadline(app.inject(req), 20_000, where)
    const status = res.statusCode
    let parsed: unknown
    if (req.method !== 'HEAD' && res.body.length > 0 && !String(res.headers['content-type'] ?? '').startsWith('text/plain')) {
      assert.match(String(res.headers['content-type']), /^application\/json/, `${where}: ${status} with content-type ${res.headers['content-type']}`)
      parsed = JSON.parse(res.body)
    }
    const code = status >= 400 && parsed !== undefined ? String((parsed as { error?: { code?: unknown } })?.error?.code) : ''
    statuses.set(`${status}${code !== '' ? ' ' + code : ''}`, (statuses.get(`${status}${code !== '' ? ' ' + code : ''}`) ?? 0) + 1)
    assert.notEqual(status, 500, `${where}: 500 ${res.body.slice(0, 300)}`)
    assert.ok(CLIENT_STATUSES.has(status) || MESH_STATUSES.has(status), `${where}: unexpected status ${status} ${res.body.slice(0, 200)}`)
    if (status >= 400 && req.method !== 'HEAD') assertErrorShape(parsed, `${where} → ${status}`)
  }

  it('answers random requests with a fitting status and the OpenAI error shape, never a 500', async () => {
    await checkAsync('http requests', request, 4000, send)
  })

  it('still serves after the run, with a bounded heap', async () => {
    assert.equal((await app.inject({ url: '/healthz' })).statusCode, 200)
    assert.equal((await app.inject({ url: '/api/node', headers: { authorization: `Bearer ${KEY}` } })).statusCode, 200)
    await assertHeapBounded(heapBefore, 64 * 1024 * 1024, 'http api')
  })

  describe('regressions', () => {
    const auth = { authorization: `Bearer ${KEY}` }

    it('answers a passthrough route with a deeply nested JSON body 400, not 500', async () => {
      for (const url of ['/v1/audio/speech', '/v1/images/generations']) {
        const res = await app.inject({ method: 'POST', url, headers: { ...auth, 'content-type': 'application/json' }, payload: '{"model":"m1","input":' + deepJsonText(30_000) + '}' })
        assert.equal(res.statusCode, 400, `${url}: ${res.statusCode} ${res.body.slice(0, 200)}`)
        assertErrorShape(res.json(), url)
      }
    })

    it('answers a URL with a malformed percent-escape 400 in the OpenAI error shape', async () => {
      for (const url of ['/api/peers/%E0%A4%A', '/v1/models/%ff', '/api/groups/%zz']) {
        const res = await app.inject({ url, headers: auth })
        assert.equal(res.statusCode, 400, url)
        assertErrorShape(res.json(), url)
      }
    })

    it('answers what the HTTP parser refuses (headers over the limit, a malformed request) in the OpenAI error shape', async () => {
      await app.listen({ port: 0, host: '127.0.0.1' })
      const port = (app.server.address() as AddressInfo).port
      const cases: Array<[string, number]> = [
        [`GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: ${'a'.repeat(20_000)}\r\n\r\n`, 431],
        ['GARBAGE\r\n\r\n', 400],
        ['GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n', 400]
      ]
      for (const [raw, status] of cases) {
        const answer = await rawRequest(port, raw)
        const [head, body] = answer.split('\r\n\r\n')
        assert.match(head, new RegExp(`^HTTP/1\\.1 ${status} `), answer.slice(0, 80))
        assert.match(head, /content-type: application\/json/i)
        assertErrorShape(JSON.parse(body), `raw ${raw.slice(0, 20)}`)
      }
    })

    it(`refuses to join more groups than a heartbeat may carry (${MAX_GROUPS}), so the node stays valid on the wire`, async () => {
      const statuses: number[] = []
      for (let i = 0; i < MAX_GROUPS + 8; i++) {
        const res = await app.inject({ method: 'POST', url: `/api/groups/many-${i}/join`, headers: auth, payload: {} })
        statuses.push(res.statusCode)
        if (res.statusCode >= 400) assertErrorShape(res.json(), 'join')
      }
      const heartbeat = { v: 1, t: 'hb', inc: 1, seq: 1, at: 1, name: node.name, groups: node.mesh.groups, snap: 1 } as MembershipMessage
      assert.equal(decodeMembership(encodeMembership(heartbeat)).ok, true, `the node announces ${node.mesh.groups.length} groups; peers drop its heartbeats (statuses ${statuses.join(',')})`)
      assert.ok(statuses.some(s => s >= 400 && s < 500), 'joins past the limit are refused')
      for (let i = 0; i < MAX_GROUPS + 8; i++) await app.inject({ method: 'POST', url: `/api/groups/many-${i}/leave`, headers: auth, payload: {} })
    })
  })
})

