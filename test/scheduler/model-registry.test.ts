/**
 * Which file a model name means when members announce different ones: never the smallest or
 * any attacker-chosen fingerprint; the deployment's, then this node's copy, then the majority,
 * a tie keeping the earlier choice; and a client pin reaching exactly the pinned file.
 */
import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import { buildModelRegistry, chooseFingerprint, pinnedHosts } from '../../src/scheduler/model-registry.js'
import type { PeerView } from '../../src/node/index.js'

const HONEST = 'c7'.repeat(32)
const OTHER = 'd4'.repeat(32)
/** What an attacker announces: the smallest possible fingerprint. */
const ATTACKER = '0'.repeat(64)

function peer (id: string, models: Array<[string, string]>, fields: Partial<PeerView> = {}): PeerView {
  return {
    id,
    name: id,
    status: 'alive',
    lastSeen: null,
    rttMs: 1,
    addresses: [],
    groups: [],
    connected: true,
    version: null,
    snapshotAt: null,
    load: null,
    labels: {},
    servesPeers: true,
    resources: null,
    models: models.map(([name, fingerprint]) => ({ name, fingerprint, sizeBytes: 1, architecture: 'llama', quantization: 'F16', parameterCount: 1, contextLength: 512, state: 'on_disk' as const })),
    ...fields
  } as PeerView // trust state does not matter here: the caller passes members only
}

const empty = peer('self', [])

describe('model registry: which file a name means', () => {
  it('does not let an attacker\'s smallest fingerprint win a tie, nor make the honest host the conflict', () => {
    const peers = [peer('honest', [['tiny-llama', HONEST]]), peer('aaa-attacker', [['tiny-llama', ATTACKER]])]
    const cold = buildModelRegistry(empty, peers).get('tiny-llama')!
    assert.equal(cold.chosenBy, 'ambiguous')
    assert.equal(cold.fingerprint, null)
    assert.deepEqual(cold.hosts, [], 'an undecided name is routed nowhere, not to the attacker')
    assert.deepEqual(cold.conflicts.map(h => h.peerId).sort(), ['aaa-attacker', 'honest'])

    // The honest host was there first: an attacker that only ties it does not take over.
    const warm = buildModelRegistry(empty, peers, { incumbent: () => HONEST }).get('tiny-llama')!
    assert.equal(warm.fingerprint, HONEST)
    assert.equal(warm.chosenBy, 'incumbent')
    assert.deepEqual(warm.hosts.map(h => h.peerId), ['honest'])
    assert.deepEqual(warm.conflicts.map(h => h.peerId), ['aaa-attacker'])
  })

  it('follows the deployment\'s fingerprint over this node\'s copy and over a majority', () => {
    const self = peer('self', [['m', OTHER]])
    const peers = [peer('p1', [['m', ATTACKER]]), peer('p2', [['m', ATTACKER]]), peer('p3', [['m', HONEST]])]
    const reg = buildModelRegistry(self, peers, { deployed: name => name === 'm' ? HONEST : undefined, incumbent: () => ATTACKER })
    const m = reg.get('m')!
    assert.equal(m.fingerprint, HONEST)
    assert.equal(m.chosenBy, 'deployment')
    assert.deepEqual(m.hosts.map(h => h.peerId), ['p3'])
    assert.deepEqual(m.conflicts.map(h => h.peerId).sort(), ['p1', 'p2', 'self'])

    // Strict: while no host has the deployed file, no other file is served in its place.
    const none = buildModelRegistry(self, [peer('p1', [['m', ATTACKER]])], { deployed: () => HONEST }).get('m')!
    assert.equal(none.fingerprint, HONEST)
    assert.deepEqual(none.hosts, [])
  })

  it('without a deployment prefers this node\'s copy, then the file most members have', () => {
    const peers = [peer('p1', [['m', ATTACKER]]), peer('p2', [['m', ATTACKER]])]
    assert.deepEqual(chooseFingerprint('m', [{ fingerprint: HONEST, local: true }, ...peers.map(() => ({ fingerprint: ATTACKER, local: false }))]), { fingerprint: HONEST, chosenBy: 'local' })
    const reg = buildModelRegistry(empty, [...peers, peer('p3', [['m', HONEST]])])
    assert.equal(reg.get('m')!.fingerprint, ATTACKER, 'a majority of members decides (non-members are not in the list)')
    assert.equal(reg.get('m')!.chosenBy, 'majority')
    assert.equal(buildModelRegistry(empty, [peer('p3', [['m', HONEST]])]).get('m')!.chosenBy, 'only')
  })

  it('a tie between files neither of which was chosen before stays undecided whatever their values', () => {
    for (const [a, b] of [[ATTACKER, HONEST], [HONEST, ATTACKER], ['f'.repeat(64), HONEST]]) {
      assert.deepEqual(chooseFingerprint('m', [{ fingerprint: a, local: false }, { fingerprint: b, local: false }], { incumbent: () => OTHER }), { fingerprint: null, chosenBy: 'ambiguous' })
    }
  })

  it('a client pin selects exactly the hosts of the pinned file, conflicts included', () => {
    const peers = [peer('honest', [['m', HONEST]]), peer('attacker', [['m', ATTACKER]]), peer('honest2', [['m', HONEST]])]
    const m = buildModelRegistry(empty, peers).get('m')!
    assert.equal(m.fingerprint, HONEST)
    assert.deepEqual(pinnedHosts(m, HONEST).map(h => h.peerId).sort(), ['honest', 'honest2'])
    assert.deepEqual(pinnedHosts(m, HONEST.slice(0, 12).toUpperCase()).map(h => h.peerId).sort(), ['honest', 'honest2'])
    assert.deepEqual(pinnedHosts(m, ATTACKER).map(h => h.peerId), ['attacker'], 'a pin can reach a conflicting file on purpose')
    assert.throws(() => pinnedHosts(m, OTHER), (e: any) => e.code === 'model_fingerprint_not_found' && e.status === 404)
    assert.throws(() => pinnedHosts(m, HONEST.slice(0, 11)), (e: any) => e.code === 'invalid_model_fingerprint' && e.status === 400)
    assert.throws(() => pinnedHosts(m, 'not-hex-at-all!!'), { code: 'invalid_model_fingerprint' })
    const twins = buildModelRegistry(empty, [peer('a', [['m', 'abcdef012345' + '1'.repeat(52)]]), peer('b', [['m', 'abcdef012345' + '2'.repeat(52)]])]).get('m')!
    assert.throws(() => pinnedHosts(twins, 'abcdef012345'), (e: any) => e.code === 'invalid_model_fingerprint' && /prefix of 2 files/.test(e.message))
    assert.equal(pinnedHosts(twins, 'abcdef0123451').length, 1)
  })
})
