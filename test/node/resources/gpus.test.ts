import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import { detectGpus, gpusFromControllers, vendorOf } from '../../../src/node/resources/gpus.js'
import { NVIDIA_SMI_ARGS, NVIDIA_SMI_XML_ARGS } from '../../../src/node/resources/nvidia.js'
import { ROCM_SMI_ARGS } from '../../../src/node/resources/rocm.js'
import { fakeExec, ok } from './fake-exec.js'
import { gpuFixture } from './fixtures.js'

const MIB = 1024 * 1024
const noGraphics = async (): Promise<never> => { throw new Error('si.graphics() must not run when a GPU tool exists') }

describe('detectGpus', () => {
  it('uses nvidia-smi with the monitor query and a short timeout', async () => {
    const exec = fakeExec({ 'nvidia-smi': ok(gpuFixture('nvidia-smi-query-1xH100-allfields-units.csv')) })
    const d = await detectGpus({ exec, graphics: noGraphics })
    assert.deepEqual(d.gpus.map(g => [g.name, g.totalMemoryBytes, g.source]), [['NVIDIA H100 80GB HBM3', 81559 * MIB, 'nvidia-smi']])
    assert.deepEqual(d.tools, { nvidiaSmi: true, rocmSmi: false })
    assert.deepEqual(d.reasons, [])
    assert.deepEqual(exec.calls.find(c => c.file === 'nvidia-smi')?.args, NVIDIA_SMI_ARGS)
    assert.deepEqual(exec.calls.find(c => c.file === 'rocm-smi')?.args, ROCM_SMI_ARGS)
    assert.ok(exec.calls.every(c => c.timeoutMs === 3000))
  })

  it('falls back to the XML report when the CSV query is rejected', async () => {
    const exec = fakeExec({
      'nvidia-smi': args => args[0] === '-q'
        ? ok(gpuFixture('nvidia-smi-q-x-8xV100S.xml'))
        : { stdout: 'Field "memory.used" is not a valid field to query.\n', stderr: '', exitCode: 2 }
    })
    const d = await detectGpus({ exec, graphics: noGraphics })
    assert.equal(d.gpus.length, 8)
    assert.deepEqual(exec.calls.map(c => c.args).filter(a => a[0] === '-q'), [NVIDIA_SMI_XML_ARGS])
  })

  it('reports an installed nvidia-smi without a driver as a reason, with no fallback', async () => {
    const exec = fakeExec({ 'nvidia-smi': { stdout: gpuFixture('nvidia-smi-no-driver.txt'), stderr: '', exitCode: 9 } })
    const d = await detectGpus({ exec, graphics: noGraphics })
    assert.deepEqual(d.gpus, [])
    assert.equal(d.reasons.length, 1)
    assert.match(d.reasons[0], /couldn't communicate with the NVIDIA driver/)
    assert.equal(exec.calls.filter(c => c.file === 'nvidia-smi').length, 1)
  })

  it('merges nvidia and AMD GPUs', async () => {
    const exec = fakeExec({
      'nvidia-smi': ok(gpuFixture('nvidia-smi-query-1xP100-nounits.csv')),
      'rocm-smi': ok(gpuFixture('rocm-smi-allmetrics-4xMI100.json'))
    })
    const d = await detectGpus({ exec, graphics: noGraphics })
    assert.deepEqual(d.gpus.map(g => [g.vendor, g.index, g.source]), [
      ['nvidia', 0, 'nvidia-smi'], ['amd', 0, 'rocm-smi'], ['amd', 1, 'rocm-smi'], ['amd', 2, 'rocm-smi'], ['amd', 3, 'rocm-smi']
    ])
  })

  it('reports a rocm-smi timeout as a reason', async () => {
    const exec = fakeExec({ 'rocm-smi': { stdout: '', stderr: '', exitCode: null, errorCode: 'ETIMEDOUT' } })
    const d = await detectGpus({ exec, graphics: noGraphics })
    assert.deepEqual(d.gpus, [])
    assert.deepEqual(d.reasons, ['rocm-smi timed out'])
  })

  it('uses systeminformation controllers only when neither tool exists', async () => {
    let asked = 0
    const d = await detectGpus({
      exec: fakeExec({}),
      graphics: async () => {
        asked++
        return {
          controllers: [
            { vendor: 'Intel Corporation', model: 'UHD Graphics 630', bus: 'Onboard', vram: 1536, vramDynamic: true },
            { vendor: 'Advanced Micro Devices, Inc. [AMD/ATI]', model: 'Navi 21 [Radeon RX 6800]', bus: 'PCIe', vram: 16384, vramDynamic: false }
          ]
        }
      }
    })
    assert.equal(asked, 1)
    assert.deepEqual(d.tools, { nvidiaSmi: false, rocmSmi: false })
    assert.deepEqual(d.gpus.map(g => [g.index, g.vendor, g.name, g.totalMemoryBytes, g.source]), [
      [0, 'intel', 'UHD Graphics 630', 1536 * MIB, 'systeminformation'],
      [1, 'amd', 'Navi 21 [Radeon RX 6800]', 16384 * MIB, 'systeminformation']
    ])
  })
})

describe('gpusFromControllers', () => {
  it('maps vendors and missing VRAM', () => {
    assert.equal(vendorOf('NVIDIA Corporation'), 'nvidia')
    assert.equal(vendorOf('Apple M2 Pro'), 'apple')
    assert.equal(vendorOf('ATI Technologies Inc.'), 'amd')
    assert.equal(vendorOf('Matrox Electronics Systems Ltd.'), 'other')
    const [g] = gpusFromControllers([{ vendor: 'Apple', model: 'Apple M2 Pro', bus: 'Built-In', vram: null, vramDynamic: true }])
    assert.equal(g.vendor, 'apple')
    assert.equal(g.totalMemoryBytes, 0)
    assert.equal(g.utilizationPercent, null)
  })
})
