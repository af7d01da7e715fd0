/**
 * The router's side of "which file a name means": the choice sticks across registry rebuilds
 * (an attacker that later ties the honest host does not take over), an undecided name is a 409
 * rather than a guess, a deployment decides, and a pin selects the pinned file's hosts.
 */
import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import { Router } from '../../src/scheduler/router.js'
import type { PeerView } from '../../src/node/index.js'
import type { RouterPorts } from '../../src/scheduler/router-ports.js'

const HONEST = 'c7'.repeat(32)
const ATTACKER = '0'.repeat(64)

function peer (id: string, models: Array<[string, string]>): PeerView {
  return {
    id, name: id, status: 'alive', lastSeen: null, rttMs: 1, addresses: [], groups: [], connected: true, version: null, snapshotAt: null, load: null, labels: {}, servesPeers: true, resources: null,
    models: models.map(([name, fingerprint]) => ({ name, fingerprint, sizeBytes: 1, architecture: 'llama', quantization: 'F16', parameterCount: 1, contextLength: 512, state: 'on_disk' as const }))
  } as unknown as PeerView // trust state does not matter: the router gets members only
}

/** Just what the router reads: its own view, its peers, deployments and capacity (no node). */
function fakeNode (state: { peers: PeerView[], deployed?: string }): RouterPorts {
  return {
    view: { self: () => peer('self', []), peers: () => state.peers, deployedFingerprint: () => state.deployed },
    local: { run: async () => { throw new Error('not called') }, capacity: () => ({ active: 0, maxConcurrent: 4 }) },
    remote: { call: async () => { throw new Error('not called') } }
  }
}

const rebuild = async (): Promise<void> => { await new Promise(resolve => setTimeout(resolve, 130)) } // the registry is cached 100 ms

describe('router: file choice', () => {
  it('keeps the honest file when an attacker later ties it, whatever the attacker\'s fingerprint', async () => {
    const state = { peers: [peer('honest', [['m', HONEST]])] }
    const router = new Router(fakeNode(state), { strategy: 'least-loaded', breakerFailures: 3, breakerCooldownMs: 1000 })
    assert.deepEqual(router.candidates('m').map(h => h.peerId), ['honest'])
    state.peers = [peer('aaa', [['m', ATTACKER]]), ...state.peers]
    await rebuild()
    for (let i = 0; i < 5; i++) assert.deepEqual(router.candidates('m').map(h => h.peerId), ['honest'])
    assert.equal(router.models().get('m')!.chosenBy, 'incumbent')
    // The pin reaches a file on purpose; an unknown pin is a 404.
    assert.deepEqual(router.candidates('m', ATTACKER.slice(0, 16)).map(h => h.peerId), ['aaa'])
    assert.throws(() => router.candidates('m', 'e'.repeat(64)), { code: 'model_fingerprint_not_found', status: 404 })
  })

  it('answers 409 model_ambiguous for a tie it never decided, and follows a deployment', async () => {
    const state: { peers: PeerView[], deployed?: string } = { peers: [peer('aaa', [['m', ATTACKER]]), peer('honest', [['m', HONEST]])] }
    const router = new Router(fakeNode(state), { strategy: 'least-loaded', breakerFailures: 3, breakerCooldownMs: 1000 })
    assert.throws(() => router.candidates('m'), (e: any) => e.code === 'model_ambiguous' && e.status === 409 && /x-shepherd-model-fingerprint/.test(e.message))
    state.deployed = HONEST
    await rebuild()
    assert.deepEqual(router.candidates('m').map(h => h.peerId), ['honest'])
    assert.equal(router.models().get('m')!.chosenBy, 'deployment')
  })
})
