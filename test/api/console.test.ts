/**
 * The console's routes on a real node's API with an API key (fastify inject): which requests get
 * the page, which still get Ollama's answer, what the key guards, and that the Host guard still
 * comes first. The page itself runs in Chromium in test/integration/console.test.ts.
 */
import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import type { FastifyInstance } from 'fastify'
import { buildApi } from '../../src/api/index.js'
import { loadConsole, wantsHtml } from '../../src/api/console.js'
import { MeshNode } from '../../src/node/index.js'
import { resolveOptions } from '../../src/config/index.js'
import { tempDir } from '../support/cluster.js'

const KEY = 'unit-console-key'
const HOST = { host: '127.0.0.1:9190' }
const BROWSER = 'text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8'

describe('wantsHtml', () => {
  it('is true for what browsers send on a navigation and false for API clients', () => {
    assert.equal(wantsHtml(BROWSER), true)
    assert.equal(wantsHtml('TEXT/HTML'), true)
    assert.equal(wantsHtml('application/json, text/html;q=0.5'), true)
    assert.equal(wantsHtml(undefined), false)
    assert.equal(wantsHtml('*/*'), false)
    assert.equal(wantsHtml('application/json'), false)
    assert.equal(wantsHtml('text/html;q=0'), false, 'q=0 refuses HTML')
    assert.equal(wantsHtml('text/htmlx'), false)
  })
})

describe('console routes with an API key', () => {
  let node: MeshNode
  let app: FastifyInstance

  before(async () => {
    const options = await resolveOptions({
      env: {},
      flags: { 'no-mdns': true, 'data-dir': await tempDir('shepherd-console-unit-'), listen: ['/ip4/127.0.0.1/tcp/0'], name: 'console-unit', 'api-key': [KEY] }
    })
    node = await MeshNode.create(options)
    await node.start()
    app = await buildApi({ node })
  })

  after(async () => {
    await app?.close()
    await node?.stop({ announce: false })
  })

  it('serves the page and its assets without the key, with a strict CSP and no framing', async () => {
    for (const method of ['GET', 'HEAD'] as const) {
      const page = await app.inject({ method, url: '/', headers: { ...HOST, accept: BROWSER } })
      assert.equal(page.statusCode, 200, `${method} ${page.body}`)
      assert.match(String(page.headers['content-type']), /^text\/html/)
      assert.match(String(page.headers['content-security-policy']), /default-src 'none'.*script-src 'self'.*frame-ancestors 'none'/)
      assert.equal(page.headers['x-frame-options'], 'DENY')
      assert.equal(page.headers.vary, 'accept')
    }
    const html = await app.inject({ url: '/?x=1', headers: { ...HOST, accept: BROWSER } })
    assert.match(html.body, /<title>shepherd-mesh<\/title>/)
    for (const [file, type] of [['console.js', /^text\/javascript/], ['console.css', /^text\/css/]] as const) {
      const res = await app.inject({ url: `/console/${file}`, headers: HOST })
      assert.equal(res.statusCode, 200)
      assert.match(String(res.headers['content-type']), type)
      assert.equal(res.headers['x-content-type-options'], 'nosniff')
    }
  })

  it('keeps every other route behind the key, and / for API clients as before', async () => {
    const root = await app.inject({ url: '/', headers: HOST })
    assert.equal(root.statusCode, 401, 'Ollama clients without the key are refused as before')
    assert.equal(typeof JSON.parse(root.body).error, 'string', 'in the Ollama error shape, as before')
    const keyed = await app.inject({ url: '/', headers: { ...HOST, authorization: `Bearer ${KEY}` } })
    assert.equal(keyed.body, 'Ollama is running')
    assert.equal(keyed.headers.vary, 'accept')
    // Asking for HTML opens nothing else: not the API, not an unlisted file, not a POST to /.
    assert.equal((await app.inject({ url: '/api/peers', headers: { ...HOST, accept: BROWSER } })).statusCode, 401)
    assert.equal((await app.inject({ url: '/console/index.html', headers: HOST })).statusCode, 401)
    assert.equal((await app.inject({ url: '/console/..%2Fpackage.json', headers: HOST })).statusCode, 401)
    assert.equal((await app.inject({ method: 'POST', url: '/', headers: { ...HOST, accept: BROWSER, 'content-type': 'application/json' }, payload: '{}' })).statusCode, 401)
    const listed = await app.inject({ url: '/console/nope.js', headers: { ...HOST, authorization: `Bearer ${KEY}` } })
    assert.equal(listed.statusCode, 404)
  })

  it('still refuses a rebinding Host before it serves the page', async () => {
    const res = await app.inject({ url: '/', headers: { host: 'attacker.example', accept: BROWSER } })
    assert.equal(res.statusCode, 403)
    // `/` is an Ollama route: its refusals come in Ollama's shape.
    assert.match(JSON.parse(res.body).error, /does not answer to the host name "attacker.example"/)
    assert.doesNotMatch(res.body, /<html/)
  })

  it('reads the shipped files, and answers null for a folder without them', async () => {
    const assets = await loadConsole()
    assert.ok(assets != null)
    const total = assets.page.length + [...assets.files.values()].reduce((s, b) => s + b.length, 0)
    assert.ok(total < 64 * 1024, `the console stays light (${total} bytes)`)
    assert.equal(await loadConsole(await tempDir('shepherd-no-console-')), null)
  })
})
