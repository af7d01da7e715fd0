import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { probeGpu } from '../../../src/node/engines/gpu-probe.js'

describe('probeGpu (a test decode in a child process)', () => {
  it('passes where the backend works (auto resolves to the CPU on this GPU-less machine)', async () => {
    const r = await probeGpu('auto', { timeoutMs: 60_000 })
    assert.equal(r.ok, true, r.detail)
    assert.equal(r.backend, 'cpu')
  })

  it('reports a backend that cannot run as a failed probe, without harming this process', async () => {
    // No CUDA here: getLlama({ gpu: 'cuda' }) fails in the child, which exits non-zero.
    const r = await probeGpu('cuda', { timeoutMs: 60_000 })
    assert.equal(r.ok, false)
    assert.match(r.detail, /the test decode failed \((exit \d+|SIG[A-Z]+)\)/)
  })
})
