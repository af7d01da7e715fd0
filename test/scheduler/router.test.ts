/**
 * The router through its narrow ports (src/scheduler/router-ports.ts): a view of hosts, a local
 * call, a remote call and capacity, all fakes here. No node, no network: which host each call
 * goes to, retries, the breaker, and prefix-aware routing against least-loaded.
 */
import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { Router, type RouterOptions } from '../../src/scheduler/router.js'
import type { RouterPorts } from '../../src/scheduler/router-ports.js'
import { JsonPayload, type InferenceCall, type InferenceReply, type PeerView } from '../../src/node/index.js'
import { ShepherdError } from '../../src/errors.js'

const FP = 'ab'.repeat(32)

function peer (id: string, opts: { load?: number, models?: string[], state?: 'loaded' | 'on_disk' } = {}): PeerView {
  return {
    id, name: id, status: 'alive', lastSeen: null, rttMs: 1, addresses: [], groups: [], connected: true, version: null, snapshotAt: null,
    load: { active: opts.load ?? 0, queued: 0 }, labels: {}, servesPeers: true, resources: null,
    models: (opts.models ?? ['m']).map(name => ({ name, fingerprint: FP, sizeBytes: 1, architecture: 'llama', quantization: 'F16', parameterCount: 1, contextLength: 512, state: opts.state ?? 'loaded' }))
  } as unknown as PeerView // trust fields do not matter: the view gives members only
}

interface Fakes {
  peers: PeerView[]
  self: PeerView
  capacity: { active: number, maxConcurrent: number }
  /** Peers whose remote call fails (503) before the first byte. */
  failing: Set<string>
  calls: Array<{ where: string, call: InferenceCall }>
  now: number
}

function setup (init: Partial<Fakes> = {}, opts: Partial<RouterOptions> = {}): { router: Router, f: Fakes } {
  const f: Fakes = { peers: [], self: peer('self', { models: [] }), capacity: { active: 0, maxConcurrent: 4 }, failing: new Set(), calls: [], now: 0, ...init }
  const answer = (where: string): InferenceReply => ({ kind: 'result', data: JsonPayload.of({ where }) })
  const ports: RouterPorts = {
    view: { self: () => f.self, peers: () => f.peers, deployedFingerprint: () => undefined },
    local: {
      run: async (call) => { f.calls.push({ where: 'self', call }); return answer('self') },
      capacity: () => f.capacity
    },
    remote: {
      call: async (p, call) => {
        f.calls.push({ where: p, call })
        if (f.failing.has(p)) throw new ShepherdError('host down', { code: 'no_healthy_host', status: 503 })
        return answer(p)
      }
    },
    now: () => f.now
  }
  const router = new Router(ports, { strategy: 'least-loaded', breakerFailures: 2, breakerCooldownMs: 60_000, prefixRouting: () => true, prefixLoadSlack: () => 2, ...opts })
  return { router, f }
}

const rebuild = async (): Promise<void> => { await new Promise(resolve => setTimeout(resolve, 130)) } // the registry is cached 100 ms
const signal = new AbortController().signal
const SYSTEM = { role: 'system', content: 'Long instructions. '.repeat(50) }
let n = 0
const chat = (messages: Array<{ role: string, content: string }>): InferenceCall => ({ op: 'chat', requestId: `req-${++n}`, model: 'm', stream: false, body: { model: 'm', messages } })
const conversation = (turn: number, tag = 'c'): Array<{ role: string, content: string }> => {
  const out = [SYSTEM, { role: 'user', content: `${tag} question 1` }]
  for (let i = 2; i <= turn; i++) out.push({ role: 'assistant', content: `${tag} answer ${i - 1}` }, { role: 'user', content: `${tag} question ${i}` })
  return out
}

describe('router through narrow ports', () => {
  it('finds a model id ignoring case when one name matches, and hands the host its own name', async () => {
    const { router, f } = setup({ peers: [peer('A', { models: ['Qwen/Qwen2.5-0.5B'] }), peer('B', { models: ['Org/x', 'org/X'] })] })
    const call: InferenceCall = { op: 'chat', requestId: 'req-case', model: 'qwen/qwen2.5-0.5b', stream: false, body: { model: 'qwen/qwen2.5-0.5b', messages: [{ role: 'user', content: 'hi' }] } }
    const r = await router.route(call, signal)
    assert.equal(r.host.peerId, 'A')
    const sent = f.calls[0].call
    assert.equal(sent.model, 'Qwen/Qwen2.5-0.5B')
    assert.equal(sent.op === 'chat' ? sent.body.model : null, 'Qwen/Qwen2.5-0.5B')
    assert.equal(sent.requestId, 'req-case')
    // Two names equal but for case: never one of them by chance.
    await assert.rejects(router.route({ ...call, model: 'ORG/X', body: { ...call.body, model: 'ORG/X' } }, signal), { code: 'model_not_found' })
    // The exact name still wins.
    assert.equal((await router.route({ ...call, model: 'org/X', body: { ...call.body, model: 'org/X' } }, signal)).host.peerId, 'B')
  })

  it('runs a call here while this node serves the model and has room, else on a peer', async () => {
    const { router, f } = setup({ self: peer('self'), peers: [peer('A')] })
    assert.equal((await router.route(chat(conversation(1)), signal)).host.peerId, 'self')
    f.capacity = { active: 4, maxConcurrent: 4 }
    assert.equal((await router.route(chat(conversation(1, 'x')), signal)).host.peerId, 'A')
    assert.deepEqual(f.calls.map(c => c.where), ['self', 'A'])
  })

  it('hands the call, request id included, to the remote port unchanged', async () => {
    const { router, f } = setup({ peers: [peer('A')] })
    const call = chat(conversation(1))
    const r = await router.route(call, signal)
    assert.equal(f.calls[0].call, call)
    assert.equal(f.calls[0].call.requestId, call.requestId)
    assert.ok(r.reply.kind === 'result' && r.reply.data.value.where === 'A')
  })

  it('retries once on another replica when the first fails before the first byte, and the breaker takes a failing host out', async () => {
    const { router, f } = setup({ peers: [peer('A'), peer('B', { load: 1 })] }, { prefixRouting: () => false })
    f.failing.add('A')
    const r = await router.route(chat(conversation(1)), signal)
    assert.equal(r.host.peerId, 'B')
    assert.equal(r.attempts, 2)
    await router.route(chat(conversation(1, 'y')), signal)
    // Two failures opened A's breaker: the third call goes straight to B.
    f.calls.length = 0
    await router.route(chat(conversation(1, 'z')), signal)
    assert.deepEqual(f.calls.map(c => c.where), ['B'])
    assert.ok(router.breaker.isOpen('A'))
  })

  it('a 4xx from the host is not retried elsewhere', async () => {
    const { router, f } = setup({ peers: [peer('A'), peer('B')] })
    const ports = (router as unknown as { ports: RouterPorts }).ports
    ports.remote.call = async (p, call) => { f.calls.push({ where: p, call }); throw new ShepherdError('bad', { code: 'invalid_request', status: 400 }) }
    await assert.rejects(router.route(chat(conversation(1)), signal), { code: 'invalid_request' })
    assert.equal(f.calls.length, 1)
  })

  it('sends a conversation\'s later turns to the replica of its first turn, where least-loaded would not', async () => {
    const peers = [peer('A'), peer('B')]
    const on = setup({ peers })
    const off = setup({ peers }, { prefixRouting: () => false })
    for (const { router, f } of [on, off]) {
      assert.equal((await router.route(chat(conversation(1)), signal)).host.peerId, 'A', 'least-loaded picks A on a tie')
      f.peers = [peer('A', { load: 1 }), peer('B')]
      await rebuild()
    }
    for (let turn = 2; turn <= 4; turn++) {
      assert.equal((await on.router.route(chat(conversation(turn)), signal)).host.peerId, 'A', `turn ${turn} with prefix routing`)
      assert.equal((await off.router.route(chat(conversation(turn)), signal)).host.peerId, 'B', `turn ${turn} least-loaded`)
    }
    assert.equal(on.router.stats.prefixRouted, 3)
  })

  it('falls back to least-loaded when the prefix\'s replica is overloaded or gone, and comes back to it', async () => {
    const { router, f } = setup({ peers: [peer('A'), peer('B')] })
    await router.route(chat(conversation(1)), signal)
    f.peers = [peer('A', { load: 5 }), peer('B')]
    await rebuild()
    assert.equal((await router.route(chat(conversation(2)), signal)).host.peerId, 'B', 'A saturated')
    // The turn served by B now points there.
    f.peers = [peer('A'), peer('B', { load: 1 })]
    await rebuild()
    assert.equal((await router.route(chat(conversation(3)), signal)).host.peerId, 'B')
    f.peers = [peer('A')]
    await rebuild()
    assert.equal((await router.route(chat(conversation(4)), signal)).host.peerId, 'A', 'B gone')
  })

  it('forgets a prefix after its time to live (fake clock)', async () => {
    const { router, f } = setup({ peers: [peer('A'), peer('B')] })
    await router.route(chat(conversation(1)), signal)
    f.peers = [peer('A', { load: 1 }), peer('B')]
    await rebuild()
    f.now += 11 * 60_000
    assert.equal((await router.route(chat(conversation(2)), signal)).host.peerId, 'B')
  })
})
