/**
 * DNS rebinding and cross-site request forgery against a real node's API over real HTTP
 * (issue 11, item 8 of the attacks / item 6 of the deliverables). The node runs without an API
 * key: the browser guards are the only thing between a hostile page and the API here.
 */
import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import http from 'node:http'
import net from 'node:net'
import os from 'node:os'
import type { AddressInfo } from 'node:net'
import type { FastifyInstance } from 'fastify'
import OpenAI, { toFile } from 'openai'
import { buildApi } from '../../src/api/index.js'
import { hostName, hostPolicy, isHostAllowed, isOriginAllowed } from '../../src/api/browser-guards.js'
import { MeshNode } from '../../src/node/index.js'
import { resolveOptions } from '../../src/config/index.js'
import { tempDir } from '../support/cluster.js'

interface Answer { status: number, body: any, text: string, headers: http.IncomingHttpHeaders }

/** One request with exactly these headers (Host included: a rebinding page's Host is its own name). */
async function request (port: number, path: string, opts: { method?: string, headers?: Record<string, string>, body?: string | Buffer } = {}): Promise<Answer> {
  return await new Promise((resolve, reject) => {
    const req = http.request({ host: '127.0.0.1', port, path, method: opts.method ?? 'GET', headers: { host: `127.0.0.1:${port}`, ...(opts.body !== undefined ? { 'content-length': String(Buffer.byteLength(opts.body)) } : {}), ...opts.headers }, agent: false }, res => {
      const chunks: Buffer[] = []
      // SSE answers never end: the first chunk is all the test needs.
      const sse = String(res.headers['content-type']).startsWith('text/event-stream')
      res.on('data', (c: Buffer) => { chunks.push(c); if (sse) req.destroy() })
      const done = (): void => {
        const text = Buffer.concat(chunks).toString('utf8')
        let body: any
        try { body = JSON.parse(text) } catch { body = undefined }
        resolve({ status: res.statusCode ?? 0, body, text, headers: res.headers })
      }
      res.on('end', done)
      res.on('close', done)
    })
    req.on('error', err => { if (!req.destroyed) reject(err) })
    req.setTimeout(5000, () => { req.destroy(new Error(`no answer to ${path}`)) })
    req.end(opts.body)
  })
}

/** Raw bytes on a socket: what a client that omits Host sends. */
async function raw (port: number, text: string): Promise<string> {
  return await new Promise((resolve, reject) => {
    const socket = net.connect(port, '127.0.0.1', () => { socket.write(text) })
    let out = ''
    socket.setTimeout(5000, () => { socket.destroy(); reject(new Error('no answer')) })
    socket.on('data', d => { out += d.toString('utf8'); if (out.includes('\r\n\r\n') && /"error"|\r\n\r\n.+/s.test(out)) socket.end() })
    socket.on('close', () => { resolve(out) })
    socket.on('error', reject)
  })
}

function assertError (res: Answer, status: number, code: string, where: string): void {
  assert.equal(res.status, status, `${where}: ${res.status} ${res.text.slice(0, 200)}`)
  assert.match(String(res.headers['content-type']), /^application\/json/, where)
  assert.deepEqual(Object.keys(res.body.error).sort(), ['code', 'message', 'param', 'type'], where)
  assert.equal(res.body.error.code, code, where)
}

const ATTACKER_HOSTS = ['attacker.example', 'rebind.attacker.test:9190', 'ATTACKER.example.', '127.0.0.1.nip.io', 'localhost.attacker.test', 'evil.lab.example.com']
const CORS_ORIGIN = 'https://ui.example'

describe('browser guards: DNS rebinding and CSRF over real HTTP', () => {
  let node: MeshNode
  let app: FastifyInstance
  let port: number

  before(async () => {
    const options = await resolveOptions({
      env: {},
      flags: {
        'no-mdns': true,
        'data-dir': await tempDir('shepherd-guards-'),
        listen: ['/ip4/127.0.0.1/tcp/0'],
        name: 'guarded',
        group: ['default', 'spare'],
        'allowed-host': ['api.mesh.test', '*.lab.example'],
        'cors-origin': [CORS_ORIGIN]
      }
    })
    node = await MeshNode.create(options)
    await node.start()
    app = await buildApi({ node })
    await app.listen({ host: '127.0.0.1', port: 0 })
    port = (app.server.address() as AddressInfo).port
  })

  after(async () => {
    await app?.close()
    await node?.stop({ announce: false })
  })

  const joined = (group: string): boolean => node.groups.get(group)?.joined === true

  it('refuses a rebinding page\'s Host on every route family, 403 host_not_allowed, and keeps serving', async () => {
    const routes: Array<[string, string, string?]> = [
      ['GET', '/healthz'], ['GET', '/metrics'], ['GET', '/api/node'], ['GET', '/api/peers'], ['GET', '/api/groups'],
      ['GET', '/api/events'], ['GET', '/v1/models'], ['GET', '/api/deployments'], ['GET', '/api/commands'],
      ['POST', '/api/groups/default/leave', '{}'], ['POST', '/v1/chat/completions', '{"model":"x","messages":[{"role":"user","content":"hi"}]}'],
      ['OPTIONS', '/api/groups/default/leave']
    ]
    for (const host of ATTACKER_HOSTS) {
      for (const [method, path, body] of routes) {
        const res = await request(port, path, { method, headers: { host, 'content-type': 'application/json', origin: `http://${host}` }, body })
        assertError(res, 403, 'host_not_allowed', `${method} ${path} Host ${host}`)
        assert.ok(res.headers['access-control-allow-origin'] == null, 'no CORS headers for a refused host')
      }
    }
    assert.equal(joined('default'), true, 'the leave sent through a rebound name did nothing')
    const ok = await request(port, '/healthz')
    assert.equal(ok.status, 200)
    assert.equal(ok.body.name, 'guarded')
  })

  it('answers loopback names, IP literals, this machine\'s hostname and the listed names', async () => {
    const hostname = os.hostname()
    const allowed = [
      `127.0.0.1:${port}`, `localhost:${port}`, 'LOCALHOST', `[::1]:${port}`, `app.localhost:${port}`, '10.1.2.3:9190', '192.168.0.7',
      `[fe80::1]:${port}`, hostname, `${hostname}:${port}`, `${hostname.split('.')[0]}.local:${port}`, 'api.mesh.test', `api.mesh.test.:${port}`, 'gpu.lab.example', 'a.b.lab.example:1'
    ]
    for (const host of allowed) {
      const res = await request(port, '/api/node', { headers: { host } })
      assert.equal(res.status, 200, `Host ${host}: ${res.status} ${res.text.slice(0, 200)}`)
    }
    for (const host of ['lab.example', 'api.mesh.test.evil', 'xlab.example', '[::1', 'a b']) {
      const res = await request(port, '/api/node', { headers: { host } })
      assert.ok(res.status === 403 || res.status === 400, `Host ${JSON.stringify(host)} answered ${res.status}`)
    }
  })

  it('answers an HTTP/1.1 request without Host 400 missing_host in the OpenAI shape (HTTP/1.0 passes)', async () => {
    const answer = await raw(port, 'GET /api/node HTTP/1.1\r\nConnection: close\r\n\r\n')
    assert.match(answer, /^HTTP\/1\.1 400 /)
    const body = JSON.parse(answer.split('\r\n\r\n')[1])
    assert.equal(body.error.code, 'missing_host')
    const old = await raw(port, 'GET /healthz HTTP/1.0\r\n\r\n')
    assert.match(old, /^HTTP\/1\.[01] 200 /)
  })

  it('refuses simple cross-site requests (text/plain, form, no body) on mutating routes: 415, state unchanged', async () => {
    const simple: Array<[string, Record<string, string>, string | undefined]> = [
      ['text/plain', { 'content-type': 'text/plain' }, '{"model":"x"}'],
      ['text/plain;charset=UTF-8', { 'content-type': 'text/plain;charset=UTF-8' }, 'x'],
      ['form', { 'content-type': 'application/x-www-form-urlencoded' }, 'model=x&replicas=1'],
      ['multipart', { 'content-type': 'multipart/form-data; boundary=b' }, '--b\r\nContent-Disposition: form-data; name="model"\r\n\r\nx\r\n--b--\r\n'],
      ['no body', {}, undefined],
      ['empty body, no type', { 'content-length': '0' }, '']
    ]
    const before = node.deployments.list().length
    for (const [what, headers, body] of simple) {
      for (const path of ['/api/groups/default/leave', '/api/groups/spare/leave', '/api/deployments', '/api/groups/other/join', '/api/commands', '/api/trust']) {
        const res = await request(port, path, { method: 'POST', headers, body })
        assertError(res, 415, 'unsupported_media_type', `${what} POST ${path}`)
      }
      const del = await request(port, '/api/deployments/x', { method: 'DELETE', headers, body })
      if (body === undefined || body === '') {
        // A bodiless DELETE (what the official SDKs send) passes the type check: DELETE always
        // needs a CORS preflight, and the Origin check still runs (next test).
        assertError(del, 404, 'deployment_not_found', `${what} DELETE`)
      } else {
        assertError(del, 415, 'unsupported_media_type', `${what} DELETE`)
      }
    }
    assert.equal(joined('default'), true, 'still in default')
    assert.equal(joined('spare'), true, 'still in spare')
    assert.equal(node.groups.get('other')?.joined ?? false, false, 'never joined other')
    assert.equal(node.deployments.list().length, before)
  })

  it('takes JSON ({} when there is nothing to say) on the same routes', async () => {
    const json = { 'content-type': 'application/json' }
    const left = await request(port, '/api/groups/spare/leave', { method: 'POST', headers: json, body: '{}' })
    assert.equal(left.status, 200, left.text)
    assert.equal(joined('spare'), false)
    const back = await request(port, '/api/groups/spare/join', { method: 'POST', headers: { 'content-type': 'application/json; charset=utf-8' }, body: '{}' })
    assert.equal(back.status, 200, back.text)
    assert.equal(joined('spare'), true)
    const missing = await request(port, '/api/deployments/nothing-here', { method: 'DELETE', headers: json, body: '{}' })
    assertError(missing, 404, 'deployment_not_found', 'DELETE with {}')
    const unknownModel = await request(port, '/api/deployments', { method: 'POST', headers: json, body: '{"model":"ghost"}' })
    assertError(unknownModel, 404, 'model_not_found', 'POST deployment')
  })

  it('refuses a mutation from an Origin that is neither listed nor this server (403), reads are unaffected', async () => {
    const json = { 'content-type': 'application/json' }
    for (const origin of ['https://evil.example', 'null', `http://127.0.0.1:${port + 1}`, 'http://localhost', 'garbage']) {
      const del = await request(port, '/api/deployments/x', { method: 'DELETE', headers: { origin } })
      assertError(del, 403, 'origin_not_allowed', `bodiless DELETE from ${origin}`)
      const res = await request(port, '/api/groups/spare/leave', { method: 'POST', headers: { ...json, origin }, body: '{}' })
      assertError(res, 403, 'origin_not_allowed', `Origin ${origin}`)
      const upload = await request(port, '/v1/audio/transcriptions', { method: 'POST', headers: { 'content-type': 'multipart/form-data; boundary=b', origin }, body: '--b--\r\n' })
      assertError(upload, 403, 'origin_not_allowed', `upload from ${origin}`)
    }
    assert.equal(joined('spare'), true)
    const read = await request(port, '/api/node', { headers: { origin: 'https://evil.example' } })
    assert.equal(read.status, 200)
    assert.equal(read.headers['access-control-allow-origin'], undefined)
    // The listed origin and the server's own origin may mutate.
    const listed = await request(port, '/api/groups/spare/leave', { method: 'POST', headers: { ...json, origin: CORS_ORIGIN }, body: '{}' })
    assert.equal(listed.status, 200, listed.text)
    assert.equal(listed.headers['access-control-allow-origin'], CORS_ORIGIN)
    const same = await request(port, '/api/groups/spare/join', { method: 'POST', headers: { ...json, origin: `http://127.0.0.1:${port}` }, body: '{}' })
    assert.equal(same.status, 200, same.text)
    assert.equal(joined('spare'), true)
  })

  it('keeps the official openai client working, multipart uploads included', async () => {
    const client = new OpenAI({ baseURL: `http://127.0.0.1:${port}/v1`, apiKey: 'unused', maxRetries: 0 })
    const models = await client.models.list()
    assert.deepEqual(models.data, [])
    await assert.rejects(client.chat.completions.create({ model: 'ghost', messages: [{ role: 'user', content: 'hi' }] }), (err: any) => err.status === 404 && err.code === 'model_not_found')
    await assert.rejects(client.embeddings.create({ model: 'ghost', input: 'hi' }), (err: any) => err.status === 404 && err.code === 'model_not_found')
    // multipart/form-data reaches the router (which knows no such model), not a 415.
    await assert.rejects(client.audio.transcriptions.create({ model: 'ghost-whisper', file: await toFile(Buffer.from('RIFF....WAVE'), 'a.wav') }), (err: any) => err.status === 404 && err.code === 'model_not_found')
    // A text/plain upload is still refused there.
    const plain = await request(port, '/v1/audio/transcriptions', { method: 'POST', headers: { 'content-type': 'text/plain' }, body: 'model=x' })
    assertError(plain, 415, 'unsupported_media_type', 'text/plain upload')
  })
})

describe('browser guards: pure rules', () => {
  const policy = hostPolicy({ apiHost: '192.168.1.5', allowedHosts: ['mesh.home', '*.corp.example'] }, 'Work-Station.lan')

  it('parses Host values', () => {
    assert.equal(hostName('Example.COM:80'), 'example.com')
    assert.equal(hostName('[::1]:9190'), '::1')
    assert.equal(hostName('localhost.'), 'localhost')
    assert.equal(hostName('a b'), null)
    assert.equal(hostName('user@host'), null)
    assert.equal(hostName('host:port'), null)
  })

  it('allows what cannot be rebound or was named, refuses the rest', () => {
    for (const h of ['192.168.1.5:9190', '8.8.8.8', '[2001:db8::1]', 'localhost', 'x.localhost', 'work-station.lan', 'work-station', 'work-station.local', 'mesh.home', 'a.corp.example']) {
      assert.equal(isHostAllowed(h, policy), true, h)
    }
    for (const h of ['corp.example', 'evil.com', 'work-station.lan.evil.com', 'mesh.home.evil', '0x7f000001', '2130706433', '']) {
      assert.equal(isHostAllowed(h, policy), false, h)
    }
    assert.equal(isHostAllowed('anything.example', hostPolicy({ apiHost: '127.0.0.1', allowedHosts: ['*'] })), true)
  })

  it('treats an Origin as allowed only when listed or the server\'s own', () => {
    assert.equal(isOriginAllowed('https://ui.example', '127.0.0.1:1', ['https://ui.example']), true)
    assert.equal(isOriginAllowed('http://127.0.0.1:1', '127.0.0.1:1', []), true)
    assert.equal(isOriginAllowed('http://127.0.0.1:2', '127.0.0.1:1', []), false)
    assert.equal(isOriginAllowed('null', 'null', []), false)
    assert.equal(isOriginAllowed('https://any.example', 'x', ['*']), true)
  })
})
