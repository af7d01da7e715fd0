/**
 * Names a peer chooses never reach a terminal or an API client with control sequences in them
 * (issue 11, finding 9): a real hostile node announces a name that clears the screen and forges
 * a row, a group name with SGR codes and a label holding an OSC 8 link; the real CLI prints
 * `peers`, `groups` and `status` from an honest node. A stand-in for an older node, which
 * cleans nothing, checks that the CLI cleans on its own.
 */
import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import http from 'node:http'
import path from 'node:path'
import type { AddressInfo } from 'node:net'
import { OPTION_SPECS } from '../../src/config/index.js'
import { createTinyModel } from '../support/tiny-model.js'
import { runCli, startNode, stopNode, tempDir, waitFor, type NodeProcess } from '../support/cluster.js'

const ESC = '\u001b'
const HOSTILE_NAME = `${ESC}[2J${ESC}[H\u202eevil\nfake-row\r${ESC}[0m`
const CLEAN_NAME = '[2J[Hevilfake-row[0m'
const HOSTILE_GROUP = `g${ESC}[1mx\u009b2J`
const CLEAN_GROUP = 'g[1mx2J'
const OSC8 = `${ESC}]8;;http://evil.example/${ESC}\\click${ESC}]8;;${ESC}\\`
const CLEAN_OSC8 = ']8;;http://evil.example/\\click]8;;\\'
const HOSTILE_MODEL = `red${ESC}[31m\u2066model`
const CLEAN_MODEL = 'red[31mmodel'

/** What must never reach a terminal (the CLI's own newlines between lines are fine). */
const FORBIDDEN = /[\u0000-\u0009\u000b-\u001f\u007f-\u009f\u202a-\u202e\u2066-\u2069]/
/** What must never be in a string or key the API returns (newlines included). */
const FORBIDDEN_IN_JSON = /[\u0000-\u001f\u007f-\u009f\u202a-\u202e\u2066-\u2069]/

function assertCleanOutput (text: string, where: string): void {
  const m = FORBIDDEN.exec(text)
  assert.equal(m, null, `${where}: U+${m?.[0].codePointAt(0)?.toString(16).padStart(4, '0')} at ${m?.index} in ${JSON.stringify(text.slice(0, 400))}`)
}

function assertCleanJson (value: unknown, where: string): void {
  if (typeof value === 'string') { assert.ok(!FORBIDDEN_IN_JSON.test(value), `${where}: ${JSON.stringify(value)}`); return }
  if (value === null || typeof value !== 'object') return
  for (const [k, v] of Object.entries(value)) {
    assert.ok(!FORBIDDEN_IN_JSON.test(k), `${where}: key ${JSON.stringify(k)}`)
    assertCleanJson(v, `${where}.${k}`)
  }
}

/** `--open` where this build has it: the hostile node must be a member whose snapshot is shown. */
const OPEN = OPTION_SPECS.some(s => s.flag === 'open') ? ['--open'] : []
const FAST = ['--sample-interval-ms', '300', '--snapshot-interval-ms', '1000', '--threads', '1']

describe('hostile peer names through the API and the CLI (real nodes)', () => {
  let honest: NodeProcess
  let evil: NodeProcess
  const env = (n: NodeProcess): NodeJS.ProcessEnv => ({ SHEPHERD_API: n.api, SHEPHERD_API_KEY: '' })

  before(async () => {
    const models = await tempDir('shepherd-hostile-models-')
    await createTinyModel(path.join(models, `${HOSTILE_MODEL}.gguf`))
    honest = await startNode({ name: 'honest', args: [...OPEN, ...FAST] })
    evil = await startNode({
      name: HOSTILE_NAME,
      args: [...OPEN, ...FAST, '--group', 'default', '--group', HOSTILE_GROUP, '--label', `osc=${OSC8}`, '--label', `sgr=${ESC}[5mblink`, '--models-dir', models, '--bootstrap', `/ip4/127.0.0.1/tcp/${honest.p2pPort}`]
    })
    // The hostile peer's snapshot (labels and model) has reached the honest node.
    await waitFor('hostile snapshot at the honest node', async () => {
      const { peers } = await (await fetch(`${honest.api}/api/peers`)).json() as any
      const p = peers.find((x: any) => x.id === evil.id)
      return p?.labels?.osc != null && p.models.length > 0 && p.groups.length === 2
    }, 20_000, 100)
  })

  after(async () => {
    await Promise.all([honest, evil].filter(n => n != null).map(async n => await stopNode(n, 'SIGKILL')))
  })

  it('the API returns every peer-supplied string cleaned', async () => {
    for (const route of ['/api/peers', '/api/node', '/api/groups', `/api/peers/${evil.id}`, '/v1/models', '/api/models']) {
      const text = await (await fetch(`${honest.api}${route}`)).text()
      assert.doesNotMatch(text, /\\u00(?:0[0-9a-f]|1[0-9a-f]|7f|[89][0-9a-f])|\\u20(?:2[a-e]|6[6-9])/i, `${route} carries an escaped control character`)
      assertCleanJson(JSON.parse(text), route)
    }
    const { peers } = await (await fetch(`${honest.api}/api/peers`)).json() as any
    const p = peers.find((x: any) => x.id === evil.id)
    assert.equal(p.name, CLEAN_NAME)
    assert.deepEqual(p.groups.sort(), ['default', CLEAN_GROUP].sort())
    assert.equal(p.labels.osc, CLEAN_OSC8)
    assert.equal(p.labels.sgr, '[5mblink')
    assert.equal(p.models[0].name, CLEAN_MODEL)
    // The hostile node's own API cleans its own name too.
    const self = await (await fetch(`${evil.api}/api/node`)).json() as any
    assert.equal(self.name, CLEAN_NAME)
  })

  it('the event stream cleans names too', async () => {
    const ac = new AbortController()
    const res = await fetch(`${honest.api}/api/events`, { signal: ac.signal })
    const reader = res.body!.getReader()
    let text = ''
    while (!text.includes('\n\n')) {
      const { value, done } = await reader.read()
      if (done) break
      text += Buffer.from(value).toString('utf8')
    }
    ac.abort()
    assert.match(text, /^event: hello\ndata: /)
    const data = JSON.parse(text.split('\n')[1].slice('data: '.length))
    assertCleanJson(data, 'hello event')
    assert.ok(data.peers.some((x: any) => x.name === CLEAN_NAME), text)
  })

  it('peers, groups and status print no control characters and no forged rows', async () => {
    const peers = await runCli(['peers'], env(honest))
    assert.equal(peers.code, 0, peers.err)
    assertCleanOutput(peers.out, 'peers')
    assert.ok(peers.out.includes(CLEAN_NAME), peers.out)
    const rows = peers.out.trimEnd().split('\n')
    assert.equal(rows.length, 2, `a header and one peer row, not a forged one: ${peers.out}`)
    assert.ok(rows[1].startsWith(CLEAN_NAME))

    const groups = await runCli(['groups'], env(honest))
    assert.equal(groups.code, 0, groups.err)
    assertCleanOutput(groups.out, 'groups')
    assert.ok(groups.out.includes(CLEAN_NAME), groups.out)
    const status = await runCli(['status'], env(evil))
    assert.equal(status.code, 0, status.err)
    assertCleanOutput(status.out, 'status')
    assert.match(status.out, new RegExp(`^name: +${CLEAN_NAME.replace(/[[\]]/g, '\\$&')}$`, 'm'))
    assert.ok(status.out.includes(CLEAN_MODEL), status.out)

    for (const cmd of ['peers', 'groups', 'status']) {
      const json = await runCli([cmd, '--json'], env(cmd === 'status' ? evil : honest))
      assert.equal(json.code, 0, json.err)
      assertCleanOutput(json.out, `${cmd} --json`)
      assertCleanJson(JSON.parse(json.out), `${cmd} --json`)
    }
  })
})

describe('the CLI cleans what an older node sends raw', () => {
  let server: http.Server
  let api: string
  const peer = {
    id: '12D3KooWQYhTNQdmr3ArTeUHRYzFg94BKyTkoWBDWez9kSCVe2Xo',
    name: HOSTILE_NAME,
    status: 'alive',
    lastSeen: new Date().toISOString(),
    rttMs: 1,
    addresses: [`/ip4/1.2.3.4/tcp/1${ESC}[8m`],
    groups: [HOSTILE_GROUP],
    connected: true,
    version: `0.1${ESC}[2J`,
    resources: {
      cpu: { model: `cpu${ESC}[2J`, cores: 4, usagePercent: 1 },
      memory: { totalBytes: 8e9, availableBytes: 4e9 },
      disk: { totalBytes: 8e9, availableBytes: 4e9 },
      gpus: [{ index: 0, name: `NVIDIA ${OSC8}\u202eH100`, totalMemoryBytes: 8e10, usedMemoryBytes: 0 }],
      llamacpp: [{ path: `/bin/llama${ESC}[1m`, version: 'b1', backend: `cuda\u0085` }]
    },
    models: [{ name: HOSTILE_MODEL, sizeBytes: 1 }],
    labels: { [`k${ESC}[1m`]: OSC8 }
  }

  before(async () => {
    // JSON.stringify escapes C0 as \u001b (JSON.parse restores them); C1 and bidi go raw.
    server = http.createServer((req, res) => {
      const send = (status: number, body: unknown): void => { res.writeHead(status, { 'content-type': 'application/json' }); res.end(JSON.stringify(body)) }
      if (req.url === '/api/node') send(200, peer)
      else if (req.url === '/api/peers') send(200, { self: peer.id, peers: [peer] })
      else if (req.url === '/api/groups') send(200, { groups: [{ name: HOSTILE_GROUP, leader: peer.id, term: 1, joined: true, members: [{ id: peer.id, name: HOSTILE_NAME, status: `alive${ESC}[2J`, self: false }] }] })
      else send(404, { error: { message: `No deployment of '${HOSTILE_MODEL}'${ESC}[2J`, type: 'invalid_request_error', param: null, code: `deployment_not_found${ESC}[1m` } })
    })
    await new Promise<void>(resolve => server.listen(0, '127.0.0.1', resolve))
    api = `http://127.0.0.1:${(server.address() as AddressInfo).port}`
  })

  after(async () => { await new Promise(resolve => server.close(resolve)) })

  it('peers, groups, status and errors come out clean', async () => {
    const env = { SHEPHERD_API: api, SHEPHERD_API_KEY: '' }
    for (const args of [['peers'], ['groups'], ['status'], ['peers', '--json'], ['groups', '--json'], ['status', '--json']]) {
      const r = await runCli(args, env)
      assert.equal(r.code, 0, `${args.join(' ')}: ${r.err}`)
      assertCleanOutput(r.out, args.join(' '))
      assert.ok(r.out.includes(CLEAN_NAME) || r.out.includes(CLEAN_GROUP), `${args.join(' ')} shows the (cleaned) hostile names: ${r.out}`)
    }
    const peers = await runCli(['peers'], env)
    assert.equal(peers.out.trimEnd().split('\n').length, 2, peers.out)
    assert.ok(peers.out.includes(`NVIDIA ${CLEAN_OSC8}H100`), peers.out)
    const failed = await runCli(['undeploy', 'x'], env)
    assert.equal(failed.code, 1)
    assertCleanOutput(failed.err, 'undeploy error')
    assert.match(failed.err, /No deployment of 'red\[31mmodel'\[2J/)
  })
})
