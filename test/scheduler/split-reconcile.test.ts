import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import type { PeerView } from '../../src/node/index.js'
import { brokenSplitHeads, budgetedResources, planSplitReplica } from '../../src/scheduler/split-reconcile.js'

const MiB = 2 ** 20
const FP = 'f'.repeat(64)

function view (id: string, opts: { availMiB: number, budgetMiB?: number, models?: PeerView['models'], rttMs?: number } ): PeerView {
  return {
    id,
    name: id,
    status: 'alive',
    lastSeen: null,
    rttMs: opts.rttMs ?? 1,
    addresses: [],
    groups: ['default'],
    connected: true,
    version: null,
    resources: {
      cpu: { model: 'x', cores: 2, physicalCores: 2, usagePercent: 0, speedGHz: 1, loadAvg: [0, 0, 0] },
      memory: { totalBytes: 64 * 1024 * MiB, usedBytes: 0, availableBytes: opts.availMiB * MiB, ...(opts.budgetMiB != null ? { modelBudgetBytes: opts.budgetMiB * MiB } : {}) },
      disk: { mount: '/', totalBytes: 0, availableBytes: 0 },
      gpus: [],
      llamacpp: [],
      uptimeSec: 1,
      platform: 'linux',
      arch: 'x64'
    } as any,
    models: opts.models ?? [],
    snapshotAt: null,
    load: null,
    labels: {},
    trust: 'member',
    servesPeers: true
  }
}

const file = (state: 'loaded' | 'on_disk', sizeMiB: number, shards?: Array<{ nodeId: string, layers: [number, number] | null }>): PeerView['models'][number] => ({
  name: 'm', sizeBytes: sizeMiB * MiB, architecture: 'llama', quantization: null, parameterCount: null, contextLength: null, fingerprint: FP, state, pinned: state === 'loaded', ...(shards != null ? { shards } : {})
})

describe('split reconcile inputs', () => {
  it('caps free memory at the model budget less what is loaded', () => {
    assert.equal(budgetedResources(view('a', { availMiB: 1000, budgetMiB: 10 }))?.memory.availableBytes, 10 * MiB)
    assert.equal(budgetedResources(view('a', { availMiB: 1000, budgetMiB: 10, models: [file('loaded', 4)] }))?.memory.availableBytes, 6 * MiB)
    assert.equal(budgetedResources(view('a', { availMiB: 5, budgetMiB: 10 }))?.memory.availableBytes, 5 * MiB)
    assert.equal(budgetedResources(view('a', { availMiB: 1000 }))?.memory.availableBytes, 1000 * MiB, 'no budget: as reported')
  })

  it("counts what a worker's rpc-servers hold against its budget (not against the OS's free memory, which already does)", () => {
    const worker = (budgetMiB?: number): PeerView => {
      const v = view('w', { availMiB: 1000, ...(budgetMiB != null ? { budgetMiB } : {}), models: [file('loaded', 2)] })
      v.resources!.memory.rpcServerBytes = 5 * MiB
      return v
    }
    assert.equal(budgetedResources(worker(10))?.memory.availableBytes, 3 * MiB)
    assert.equal(budgetedResources(worker(6))?.memory.availableBytes, 0, 'never below zero')
    assert.equal(budgetedResources(worker())?.memory.availableBytes, 1000 * MiB)
  })

  it('plans a split within the budgets, the file holder as head', () => {
    const plan = planSplitReplica([view('a', { availMiB: 1000, budgetMiB: 10 }), view('b', { availMiB: 1000, budgetMiB: 10, models: [file('on_disk', 11)] }), view('c', { availMiB: 1000, budgetMiB: 2 })], 'm', FP, 13 * MiB)
    assert.ok(plan.ok)
    assert.equal(plan.head, 'b')
    assert.deepEqual(plan.workers, ['a'])
  })

  it('reports a split that lost a node as broken, and no other', () => {
    const head = view('h', { availMiB: 100, models: [file('loaded', 11, [{ nodeId: 'h', layers: [0, 3] }, { nodeId: 'w', layers: [4, 7] }])] })
    const w = view('w', { availMiB: 100 })
    assert.deepEqual(brokenSplitHeads([head, w], 'm', FP), [])
    assert.deepEqual(brokenSplitHeads([head], 'm', FP), ['h'])
  })
})
