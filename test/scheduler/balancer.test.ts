import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { CircuitBreaker, orderHosts, buildModelRegistry, type ModelHost } from '../../src/scheduler/index.js'
import type { PeerView } from '../../src/node/index.js'

function host (peerId: string, fields: Partial<ModelHost> = {}): ModelHost {
  return { peerId, name: peerId, local: false, state: 'loaded', fingerprint: 'f', load: 0, rttMs: 1, weight: 1, ...fields }
}

describe('orderHosts', () => {
  const none = (): number => 0
  it('least-loaded prefers loaded replicas, then the lowest load (gossiped + our own in-flight)', () => {
    const hosts = [host('a', { load: 3 }), host('b', { load: 1 }), host('c', { load: 0, state: 'on_disk' }), host('d', { load: 0 })]
    assert.deepEqual(orderHosts(hosts, 'least-loaded', { inflight: none, counter: 0 }).map(h => h.peerId), ['d', 'b', 'a', 'c'])
    const inflight = (id: string): number => (id === 'd' ? 5 : 0)
    assert.deepEqual(orderHosts(hosts, 'least-loaded', { inflight, counter: 0 }).map(h => h.peerId), ['b', 'a', 'd', 'c'])
  })

  it('lowest-latency orders by RTT', () => {
    const hosts = [host('a', { rttMs: 5 }), host('b', { rttMs: 0.5 }), host('c', { rttMs: null })]
    assert.deepEqual(orderHosts(hosts, 'lowest-latency', { inflight: none, counter: 0 }).map(h => h.peerId), ['b', 'a', 'c'])
  })

  it('round-robin rotates with the counter', () => {
    const hosts = [host('c'), host('a'), host('b')]
    const firsts = [0, 1, 2, 3].map(counter => orderHosts(hosts, 'round-robin', { inflight: none, counter })[0].peerId)
    assert.deepEqual(firsts, ['a', 'b', 'c', 'a'])
  })

  it('random and weighted are permutations driven by the random source', () => {
    const hosts = [host('a', { weight: 1 }), host('b', { weight: 100 }), host('c', { weight: 1 })]
    let x = 0.3
    const random = (): number => { x = (x * 9301 + 49297) % 233280 / 233280; return x }
    const r = orderHosts(hosts, 'random', { inflight: none, counter: 0, random })
    assert.deepEqual([...r.map(h => h.peerId)].sort(), ['a', 'b', 'c'])
    let bFirst = 0
    for (let i = 0; i < 200; i++) if (orderHosts(hosts, 'weighted', { inflight: none, counter: 0, random })[0].peerId === 'b') bFirst++
    assert.ok(bFirst > 150, `heavier host first most of the time (${bFirst}/200)`)
  })
})

describe('CircuitBreaker', () => {
  it('opens after the threshold, lets one trial through after the cooldown, closes on success', () => {
    let now = 0
    const br = new CircuitBreaker(3, 1000, () => now)
    br.failure('h'); br.failure('h')
    assert.equal(br.allow('h'), true)
    br.failure('h')
    assert.equal(br.isOpen('h'), true)
    assert.equal(br.allow('h'), false)
    now = 1001
    assert.equal(br.allow('h'), true, 'half-open trial')
    assert.equal(br.allow('h'), false, 'only one trial at a time')
    br.failure('h')
    assert.equal(br.allow('h'), false, 'failed trial reopens')
    now = 2100
    assert.equal(br.allow('h'), true)
    br.success('h')
    assert.equal(br.isOpen('h'), false)
    assert.equal(br.allow('h'), true)
  })
})

function peer (id: string, models: Array<[string, string]>, fields: Partial<PeerView> = {}): PeerView {
  return {
    id, name: id, status: 'alive', lastSeen: null, rttMs: 1, addresses: [], groups: [], connected: true, version: null, snapshotAt: null, load: null, labels: {}, trust: 'member', servesPeers: true,
    resources: null,
    models: models.map(([name, fingerprint]) => ({ name, fingerprint, sizeBytes: 1, architecture: 'llama', quantization: 'F16', parameterCount: 1, contextLength: 512, state: 'on_disk' as const })),
    ...fields
  }
}

describe('buildModelRegistry', () => {
  it('groups replicas by fingerprint and reports a same-named different file as a conflict', () => {
    const self = peer('self', [['m', 'A']])
    const reg = buildModelRegistry(self, [peer('p1', [['m', 'B'], ['n', 'X']]), peer('p2', [['m', 'B']]), peer('p3', [['m', 'A']]), peer('dead', [['m', 'A']], { status: 'dead' })])
    const m = reg.get('m')!
    assert.equal(m.fingerprint, 'A', 'the local file wins')
    assert.deepEqual(m.hosts.map(h => h.peerId).sort(), ['p3', 'self'])
    assert.deepEqual(m.conflicts.map(h => h.peerId).sort(), ['p1', 'p2'])
    assert.deepEqual(reg.get('n')!.hosts.map(h => h.peerId), ['p1'])
  })

  it('leaves out peers that serve their own clients only', () => {
    const reg = buildModelRegistry(peer('self', []), [peer('p1', [['m', 'B']], { servesPeers: false }), peer('p2', [['m', 'B']])])
    assert.deepEqual(reg.get('m')!.hosts.map(h => h.peerId), ['p2'])
  })

  it('without a local copy the majority fingerprint wins', () => {
    const reg = buildModelRegistry(peer('self', []), [peer('p1', [['m', 'B']]), peer('p2', [['m', 'B']]), peer('p3', [['m', 'A']])])
    assert.equal(reg.get('m')!.fingerprint, 'B')
    assert.equal(reg.get('m')!.conflicts.length, 1)
  })
})
