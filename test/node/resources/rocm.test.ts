import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import { ROCM_SMI_ARGS, parseRocmSmiCsv, parseRocmSmiJson } from '../../../src/node/resources/rocm.js'
import { gpuFixture } from './fixtures.js'

describe('parseRocmSmiJson', () => {
  it('exports the query it is built for', () => {
    assert.deepEqual(ROCM_SMI_ARGS, ['--showproductname', '--showuse', '--showmeminfo', 'vram', '--showtemp', '--showdriverversion', '--json'])
  })

  it('reads the 1xRX6700XT all-metrics output', () => {
    const { gpus, reason } = parseRocmSmiJson(gpuFixture('rocm-smi-allmetrics-1xRX6700XT.json'))
    assert.equal(reason, null)
    assert.deepEqual(gpus, [{
      index: 0,
      name: 'Navi 22 [Radeon RX 6700/6700 XT / 6800M]',
      vendor: 'amd',
      totalMemoryBytes: 12868124672,
      usedMemoryBytes: 1572745216,
      utilizationPercent: 0,
      temperatureC: 45,
      driverVersion: '6.3.6',
      source: 'rocm-smi'
    }])
  })

  it('reads the 4xMI100 all-metrics output (lower-case "Card series", unique ids)', () => {
    const { gpus } = parseRocmSmiJson(gpuFixture('rocm-smi-allmetrics-4xMI100.json'))
    assert.equal(gpus.length, 4)
    assert.deepEqual(gpus.map(g => g.index), [0, 1, 2, 3])
    assert.ok(gpus.every(g => g.name === 'Arcturus GL-XL [Instinct MI100]'))
    assert.ok(gpus.every(g => g.totalMemoryBytes === 34342961152 && g.usedMemoryBytes === 6750208))
    assert.deepEqual(gpus.map(g => g.temperatureC), [53, 55, 54, 51])
    assert.deepEqual(gpus.map(g => g.uuid), ['0x79ccd55167a2124a', '0x4edfb117a17a07d', '0xd4a9ec48d03d261d', '0x1b9dd972253c3736'])
    assert.ok(gpus.every(g => g.driverVersion === '6.3.6' && g.utilizationPercent === 0))
  })

  it('reads the 1xRX7900XT product/use/VRAM output', () => {
    const { gpus } = parseRocmSmiJson(gpuFixture('rocm-smi-productname-use-vram-1xRX7900XT.json'))
    assert.equal(gpus.length, 1)
    assert.equal(gpus[0].name, 'Radeon RX 7900 XT')
    assert.equal(gpus[0].totalMemoryBytes, 21458059264)
    assert.equal(gpus[0].usedMemoryBytes, 27856896)
    assert.equal(gpus[0].utilizationPercent, 0)
    assert.equal(gpus[0].temperatureC, null)
    assert.equal(gpus[0].driverVersion, null)
  })

  it('reads the 2xRX6800 memuse-only output with zero VRAM and null fields', () => {
    const { gpus } = parseRocmSmiJson(gpuFixture('rocm-smi-showmemuse-2xRX6800.json'))
    assert.equal(gpus.length, 2)
    for (const [i, g] of gpus.entries()) {
      assert.equal(g.index, i)
      assert.equal(g.totalMemoryBytes, 0)
      assert.equal(g.usedMemoryBytes, 0)
      assert.equal(g.utilizationPercent, null)
      assert.equal(g.temperatureC, null)
      assert.equal(g.vendor, 'amd')
    }
  })

  it('skips warnings before the JSON and reports non-JSON output as a reason', () => {
    const json = gpuFixture('rocm-smi-productname-use-vram-1xRX7900XT.json')
    assert.equal(parseRocmSmiJson(`WARNING: AMD GPU device(s) is/are in a low-power state. Check power control/runtime_status\n\n${json}`).gpus.length, 1)
    const bad = parseRocmSmiJson('ERROR:root:Driver not initialized (amdgpu not found in modules)\n')
    assert.deepEqual(bad.gpus, [])
    assert.equal(bad.reason, 'ERROR:root:Driver not initialized (amdgpu not found in modules)')
    assert.deepEqual(parseRocmSmiJson('{"system": {"Driver version": "6.3.6"}}').gpus, [])
  })
})

describe('parseRocmSmiCsv', () => {
  it('reads the 1xRX7900XT CSV like its JSON twin', () => {
    const csv = parseRocmSmiCsv(gpuFixture('rocm-smi-productname-use-vram-1xRX7900XT.csv'))
    const json = parseRocmSmiJson(gpuFixture('rocm-smi-productname-use-vram-1xRX7900XT.json'))
    assert.equal(csv.gpus.length, 1)
    assert.deepEqual(csv.gpus, json.gpus)
  })
})
