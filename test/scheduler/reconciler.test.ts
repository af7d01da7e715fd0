/**
 * The reconciler through its narrow view (src/scheduler/router-ports.ts `ReconcilerView`): fake
 * members, deployments and leadership, a fake registry and a recording command sender. No node:
 * it places missing replicas, counts pending ones, retires extras and replicas of a deleted
 * deployment, and does nothing for groups it does not lead.
 */
import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { Reconciler } from '../../src/scheduler/reconciler.js'
import type { ReconcilerView } from '../../src/scheduler/router-ports.js'
import type { MeshModel } from '../../src/scheduler/model-registry.js'
import type { Deployment, PeerView } from '../../src/node/index.js'

const GiB = 1024 ** 3
const FP = 'cd'.repeat(32)

function member (id: string, opts: { model?: 'on_disk' | 'loaded', pinned?: boolean, load?: number } = {}): PeerView {
  const ram = 16 * GiB
  return {
    id, name: id, status: 'alive', lastSeen: null, rttMs: 1, addresses: [], groups: ['g'], connected: true, version: null, snapshotAt: null,
    load: { active: opts.load ?? 0, queued: 0 }, labels: {}, servesPeers: true,
    resources: {
      cpu: { model: 'x86', cores: 8, physicalCores: 8, usagePercent: 10, speedGHz: 3, loadAvg: [0, 0, 0] },
      memory: { totalBytes: ram * 2, usedBytes: ram, availableBytes: ram },
      disk: { mount: '/', totalBytes: 1e12, usedBytes: 0, availableBytes: 1e12 },
      gpus: [], llamacpp: [], uptimeSec: 1, platform: 'linux', arch: 'x64'
    },
    models: opts.model == null ? [] : [{ name: 'm', fingerprint: FP, sizeBytes: GiB, architecture: 'llama', quantization: 'F16', parameterCount: 1, contextLength: 512, state: opts.model, ...(opts.pinned === true ? { pinned: true } : {}) }]
  } as unknown as PeerView // trust fields do not matter: the view gives members only
}

const registry = (hosts: string[]): Map<string, MeshModel> => new Map([['m', {
  name: 'm', fingerprint: FP, chosenBy: 'only', conflicts: [], sizeBytes: GiB, architecture: 'llama', quantization: 'F16', contextLength: 512,
  hosts: hosts.map(id => ({ peerId: id, name: id, local: false, state: 'on_disk' as const, fingerprint: FP, load: 0, rttMs: 1, weight: 1 }))
}]])

interface World {
  self: PeerView
  peers: PeerView[]
  deployments: Deployment[]
  leader: boolean
  sent: Array<{ target: string, type: string, payload: Record<string, unknown>, term: number }>
}

function setup (w: Partial<World>): { rec: Reconciler, w: World } {
  const world: World = { self: member('self'), peers: [], deployments: [], leader: true, sent: [], ...w }
  const view: ReconcilerView = {
    self: () => world.self,
    peers: () => world.peers,
    deployments: () => world.deployments,
    joined: () => true,
    isLeader: () => world.leader,
    leaderOf: () => ({ leader: world.leader ? 'self' : 'other', term: 7 }),
    onChange: () => {}
  }
  const rec = new Reconciler(view, { models: () => registry(['A']) }, {
    intervalMs: 60_000,
    pendingTtlMs: 60_000,
    send: async (target, type, payload, ctx) => { world.sent.push({ target, type, payload, term: ctx.term }); return { status: 'ok' } }
  })
  return { rec, w: world }
}

const deployment = (replicas: number, more: Partial<Deployment> = {}): Deployment => ({ model: 'm', replicas, group: 'g', fingerprint: FP, updatedAt: 1, origin: 'self', deleted: false, ...more })
const settle = async (): Promise<void> => { await new Promise(resolve => setImmediate(resolve)) }

describe('reconciler through a narrow view', () => {
  it('places the missing replicas with load_model commands at the leader\'s term, and counts them as pending', async () => {
    const { rec, w } = setup({ peers: [member('A', { model: 'on_disk' }), member('B'), member('C')], deployments: [deployment(2)] })
    await rec.tick()
    await settle()
    assert.equal(w.sent.length, 2)
    assert.ok(w.sent.every(s => s.type === 'load_model' && s.term === 7 && s.payload.fingerprint === FP && s.payload.keepAliveMs === -1))
    assert.equal(new Set(w.sent.map(s => s.target)).size, 2)
    // Pending placements count: the next tick places nothing more.
    await rec.tick()
    await settle()
    assert.equal(w.sent.length, 2)
    assert.equal(rec.status(w.deployments[0]).pending.length, 2)
  })

  it('does not place a replica where one is already pinned, and retires extras (zero keep-alive, busiest first)', async () => {
    const { rec, w } = setup({
      peers: [member('A', { model: 'loaded', pinned: true, load: 1 }), member('B', { model: 'loaded', pinned: true, load: 5 }), member('C', { model: 'loaded', pinned: true })],
      deployments: [deployment(2)]
    })
    await rec.tick()
    await settle()
    assert.deepEqual(w.sent.map(s => [s.target, s.type, s.payload.keepAliveMs]), [['B', 'load_model', 0]])
    assert.deepEqual(rec.status(w.deployments[0]).actual.map(a => a.nodeId).sort(), ['A', 'B', 'C'])
  })

  it('retires every replica of a deleted deployment once', async () => {
    const { rec, w } = setup({ peers: [member('A', { model: 'loaded', pinned: true }), member('B', { model: 'loaded', pinned: true })], deployments: [deployment(2, { deleted: true, updatedAt: 2 })] })
    await rec.tick()
    await rec.tick()
    await settle()
    assert.deepEqual(w.sent.map(s => s.target).sort(), ['A', 'B'])
    assert.ok(w.sent.every(s => s.payload.keepAliveMs === 0))
  })

  it('re-places a split whose worker died as a new split, not as the whole model on its head (a new leader seeing the head still loaded)', async () => {
    const budget = (m: PeerView, gib: number): PeerView => { (m.resources!.memory as any).modelBudgetBytes = gib * GiB; return m }
    const head = budget(member('A', { model: 'loaded', pinned: true }), 0.7)
    head.models[0] = { ...head.models[0], shards: [{ nodeId: 'A', layers: [0, 3] }, { nodeId: 'dead-worker', layers: [4, 7] }] }
    const { rec, w } = setup({ self: budget(member('self'), 0.7), peers: [head, budget(member('B'), 0.7)], deployments: [deployment(1)] })
    await rec.tick()
    await settle()
    const sent = w.sent.map(s => [s.target, s.type, s.payload.split != null ? 'split' : s.payload.model])
    assert.ok(sent.some(([t, type]) => t === 'A' && type === 'unload_model'), `the broken head is told to drop it: ${JSON.stringify(sent)}`)
    assert.ok(!w.sent.some(s => s.type === 'load_model' && s.payload.split == null && s.payload.keepAliveMs !== 0), `no whole-model load past the budgets: ${JSON.stringify(sent)}`)
    assert.ok(w.sent.some(s => s.type === 'serve_rpc') || w.sent.some(s => s.type === 'load_model' && s.payload.split != null), `a new split is placed: ${JSON.stringify(sent)}`)
  })

  it('does nothing for a group it does not lead', async () => {
    const { rec, w } = setup({ peers: [member('A', { model: 'on_disk' }), member('B')], deployments: [deployment(2)], leader: false })
    await rec.tick()
    await settle()
    assert.equal(w.sent.length, 0)
  })
})
