/**
 * Fuzzing what peers gossip to a real in-process `MeshNode` (src/p2p/mesh.ts `onMessage`, then
 * the peer table, group manager, deployment merge, model registry and the HTTP API that shows
 * them). Messages are handed to `onMessage` as gossipsub would after its signature check, from
 * made-up peer ids: random bytes and mutations are dropped with the reason `decodeMembership`
 * gives, never thrown; valid but hostile heartbeats (leadership claims), snapshots (odd
 * resources, models, deployments) and leaves never break a read route of the API, never
 * escape as an unhandled rejection, and never grow the node's state without bound.
 * No traffic leaves the machine: the made-up peers have no addresses.
 *
 *   node --import tsx --test test/fuzz/gossip-node.test.ts   (FUZZ_SEED=<n> replays)
 */
import '../../src/polyfill.js'
import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import fc from 'fast-check'
import type { FastifyInstance } from 'fastify'
import { buildApi } from '../../src/api/index.js'
import { MeshNode } from '../../src/node/index.js'
import { resolveOptions } from '../../src/config/index.js'
import { logSink, setLogSink } from '../../src/logger.js'
import { decodeMembership, encodeMembership, type MembershipMessage } from '../../src/p2p/messages.js'
import { createIdentity, peerIdOf } from '../../src/p2p/identity.js'
import { isNodeSnapshot } from '../../src/node/snapshot.js'
import { signDeployment } from '../../src/node/deployment-record.js'
import { tempDir } from '../support/cluster.js'
import { assertHeapBounded, checkAsync, heapUsed, ProcessWatch, sleep } from '../support/fuzz-harness.js'
import { hostileBytes, hostileJsonValue, mutateBytes, mutated } from '../support/fuzz-arbitraries.js'
import { heartbeat, leaveMessage, membershipMessage, memberName, nodeSnapshot } from '../support/fuzz-messages.js'

const KEY = 'sk-fuzz-gossip-0123456789'
const READ_ROUTES = ['/api/peers', '/api/node', '/v1/models', '/api/models', '/api/groups', '/api/deployments', '/metrics', '/api/commands']

describe('fuzz: gossip into a real node, seen through its API', () => {
  const watch = new ProcessWatch()
  let node: MeshNode
  let app: FastifyInstance
  let fakes: string[] = []
  const originalSink = logSink
  let heapBefore = 0
  const auth = { authorization: `Bearer ${KEY}` }

  before(async () => {
    watch.start()
    setLogSink(() => {})
    // Open mesh: the fake senders must count as members for their gossip to reach the decoders
    // under test (membership gating has its own tests, test/integration/admission.test.ts).
    const options = await resolveOptions({ env: {}, flags: { 'no-mdns': true, 'data-dir': await tempDir('shepherd-fuzz-gossip-'), listen: ['/ip4/127.0.0.1/tcp/0'], 'api-key': [KEY], name: 'gossip-node', open: true } })
    node = await MeshNode.create(options)
    await node.start()
    app = await buildApi({ node })
    fakes = await Promise.all([0, 1, 2, 3].map(async () => await fakePeer()))
    heapBefore = await heapUsed()
  })

  after(async () => {
    await app?.close()
    await node?.stop({ announce: false })
    setLogSink(originalSink)
    console.log(`# fuzz gossip: node dropped ${JSON.stringify(node.mesh.stats.dropped)} of ${node.mesh.stats.messagesReceived} messages`)
    watch.stop()
    watch.assertClean()
  })

  /**
   * A made-up peer this node vouches for (its allow list): only peers a node can verify, connected
   * or listed, enter its peer table (issue 14), and these have no connection.
   */
  async function fakePeer (): Promise<string> {
    const id = peerIdOf(await createIdentity())
    await node.membership.updateLists({ allow: [id] })
    return id
  }

  async function assertReadRoutes (extra: string[] = []): Promise<void> {
    for (const url of [...READ_ROUTES, ...extra]) {
      const res = await app.inject({ url, headers: auth })
      assert.equal(res.statusCode, 200, `GET ${url}: ${res.statusCode} ${res.body.slice(0, 200)}`)
    }
  }

  it('drops random and mutated gossip with the reason decodeMembership gives, never throwing', async () => {
    const bytes = fc.oneof(hostileBytes, mutateBytes(membershipMessage.map(m => encodeMembership(m as MembershipMessage))), mutated(membershipMessage).map(v => new TextEncoder().encode(JSON.stringify(v) ?? '')))
    await checkAsync('gossip bytes', fc.tuple(fc.nat({ max: 3 }), bytes), 3000, async ([who, b]) => {
      const decoded = decodeMembership(b)
      const dropped = { ...node.mesh.stats.dropped }
      node.mesh.onMessage(fakes[who], b)
      if (!decoded.ok) assert.equal(node.mesh.stats.dropped[decoded.reason], dropped[decoded.reason] + 1, `dropped as ${decoded.reason}`)
    })
    await assertReadRoutes()
  })

  it('answers every read route after hostile but valid heartbeats, snapshots and leaves', async () => {
    // Peers of their own: the random messages above may have left the others at a huge incarnation.
    const peers = await Promise.all([0, 1, 2, 3].map(async () => await fakePeer()))
    let seq = 1
    const snapshotData = fc.tuple(nodeSnapshot, fc.dictionary(fc.constantFrom('uptimeSec', 'platform', 'arch', 'x'), hostileJsonValue, { maxKeys: 2 }), fc.dictionary(fc.string({ maxLength: 8 }), hostileJsonValue, { maxKeys: 2 }))
      .map(([snap, resourceExtras, topExtras]) => ({ ...topExtras, ...snap, resources: { ...snap.resources, ...resourceExtras } }))
    const message = fc.oneof(
      heartbeat.map(h => ({ ...h, groups: [...h.groups.slice(0, 31), 'default'] })),
      // Leadership claims for the node's own group, with any term and any leader.
      fc.tuple(heartbeat, fc.array(fc.tuple(fc.constant('default'), fc.oneof(fc.nat(), fc.maxSafeNat()), fc.oneof(memberName, fc.constant('self'))), { minLength: 1, maxLength: 3 }))
        .map(([h, lead]) => ({ ...h, lead: lead.map(([g, t, l]) => [g, t, l === 'self' ? node.id : l]) })),
      snapshotData.map(data => ({ v: 1, t: 'snap', inc: 1, seq: 0, at: 1, name: 'peer', groups: ['default'], snap: 1, addrs: [], data })),
      leaveMessage
    )
    await checkAsync('gossip messages -> API', fc.tuple(fc.nat({ max: 3 }), fc.array(message, { minLength: 1, maxLength: 6 })), 300, async ([who, msgs]) => {
      for (const m of msgs as Array<Record<string, unknown>>) {
        // Fresh sequence numbers and snapshot versions, so messages are applied rather than dropped as stale.
        const msg = { ...m, inc: 1, seq: seq++, ...(m.t === 'snap' ? { snap: seq, addrs: [] } : {}) }
        const bytes = encodeMembership(msg as unknown as MembershipMessage)
        if (!decodeMembership(bytes).ok) continue
        node.mesh.onMessage(peers[who], bytes)
      }
      await assertReadRoutes(peers.filter(p => node.peer(p) != null).map(p => `/api/peers/${p}`))
    })
  })

  it('keeps the heap bounded over the whole run', async () => {
    await assertHeapBounded(heapBefore, 64 * 1024 * 1024, 'gossip into a node')
  })

  describe('regressions', () => {
    it('keeps listing peers when a peer gossips a snapshot with a non-numeric uptime and an object for its platform', async () => {
      const fake = await fakePeer()
      // Either the snapshot is refused at the boundary, or the API shows it: never a 500 for every client.
      const data = { version: '1', resources: { cpu: { cores: 4 }, memory: { totalBytes: 1 }, disk: {}, gpus: [], llamacpp: [], uptimeSec: 'soon', platform: { x: 1 } }, models: [], api: null }
      node.mesh.onMessage(fake, encodeMembership({ v: 1, t: 'hb', inc: 1, seq: 1, at: 1, name: 'odd-peer', groups: [], snap: 0 }))
      node.mesh.onMessage(fake, encodeMembership({ v: 1, t: 'snap', inc: 1, seq: 2, at: 2, name: 'odd-peer', groups: [], snap: 1, addrs: [], data } as MembershipMessage))
      await assertReadRoutes([`/api/peers/${fake}`])
    })

    it('keeps its own snapshot valid for its peers however many deployments peers gossip', async () => {
      const key = await createIdentity()
      const fake = peerIdOf(key)
      await node.membership.updateLists({ allow: [fake] })
      const before = node.deployments.list().length
      node.mesh.onMessage(fake, encodeMembership({ v: 1, t: 'hb', inc: 1, seq: 1, at: 1, name: 'deployer', groups: ['default'], snap: 0 }))
      for (let batch = 0; batch < 3; batch++) {
        // Each snapshot is valid (at most 1024 deployments), and names models no other one does.
        // Signed by their origin (a member in this open mesh), so they are merged, not refused.
        const deployments = await Promise.all(Array.from({ length: 600 }, async (_, i) => await signDeployment(key, { model: `gossiped-${batch}-${i}`, replicas: 1, group: 'default', updatedAt: 1, origin: fake, deleted: false })))
        const data = { version: '1', resources: { cpu: { cores: 1 }, memory: { totalBytes: 1 }, disk: {}, gpus: [], llamacpp: [] }, models: [], api: null, deployments }
        assert.equal(isNodeSnapshot(data), true)
        node.mesh.onMessage(fake, encodeMembership({ v: 1, t: 'snap', inc: 1, seq: 2 + batch, at: 1, name: 'deployer', groups: ['default'], snap: 1 + batch, addrs: [], data } as MembershipMessage))
        await sleep(300)
      }
      await sleep(500)
      assert.ok(node.deployments.list().length > before, 'the signed records were merged (the bound below is exercised)')
      const own = node.currentSnapshot()
      const bytes = encodeMembership({ v: 1, t: 'snap', inc: 1, seq: 1, at: 1, name: node.name, groups: node.mesh.groups, snap: 1, addrs: [], data: own as unknown as Record<string, unknown> })
      assert.ok(isNodeSnapshot(own), `the node now gossips ${own.deployments?.length ?? 0} deployments (it had ${before}): its peers refuse its snapshot`)
      assert.ok(decodeMembership(bytes).ok, `its snapshot message has ${bytes.byteLength} bytes: its peers drop it`)
    })

    it('keeps a bounded number of group states whatever groups peers claim to lead or say they are in', async () => {
      const fake = await fakePeer()
      const name = (i: number, k: number): string => `claimed-${i}-${k}`
      const heartbeats = 200
      for (let i = 0; i < heartbeats; i++) {
        const lead: Array<[string, number, string]> = Array.from({ length: 32 }, (_, k) => [name(i, k), 1, fake])
        const groups = Array.from({ length: 32 }, (_, k) => name(i + heartbeats, k))
        node.mesh.onMessage(fake, encodeMembership({ v: 1, t: 'hb', inc: 1, seq: i + 1, at: 1, name: 'claimer', groups, snap: 0, lead }))
        if (i % 20 === 0) await sleep(5)
      }
      // Let the group manager's ticks see the announced groups.
      await sleep(500)
      let kept = 0
      for (let i = 0; i < 2 * heartbeats; i++) for (let k = 0; k < 32; k++) if (node.groups.get(name(i, k)) != null) kept++
      assert.ok(kept <= 1024, `the node keeps state for ${kept} of ${2 * heartbeats * 32} groups named by one peer`)
    })
  })
})
