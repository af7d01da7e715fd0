import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import {
  NVIDIA_SMI_ARGS, NVIDIA_SMI_QUERY_FIELDS, parseNvidiaSmiCsv, parseNvidiaSmiXml
} from '../../../src/node/resources/nvidia.js'
import { gpuFixture } from './fixtures.js'

const MIB = 1024 * 1024

describe('parseNvidiaSmiCsv', () => {
  it('exports the query it is built for', () => {
    assert.deepEqual(NVIDIA_SMI_ARGS, [
      '--query-gpu=index,name,uuid,memory.total,memory.used,utilization.gpu,temperature.gpu,driver_version',
      '--format=csv,noheader,nounits'
    ])
    assert.equal(NVIDIA_SMI_QUERY_FIELDS.length, 8)
  })

  it('reads the 1xP100 capture (header with units, nounits values, [N/A], no memory.total)', () => {
    const { gpus, reason } = parseNvidiaSmiCsv(gpuFixture('nvidia-smi-query-1xP100-nounits.csv'))
    assert.equal(reason, null)
    assert.equal(gpus.length, 1)
    const [g] = gpus
    assert.equal(g.name, 'Tesla P100-PCIE-16GB')
    assert.equal(g.uuid, 'GPU-ef1b2c9b-38d8-2090-2bd1-f567a3eb42a6')
    assert.equal(g.vendor, 'nvidia')
    assert.equal(g.source, 'nvidia-smi')
    assert.equal(g.index, 0)
    // memory.reserved 103 + used 0 + free 16280 MiB.
    assert.equal(g.totalMemoryBytes, (103 + 0 + 16280) * MIB)
    assert.equal(g.usedMemoryBytes, 0)
    assert.equal(g.utilizationPercent, 0)
    assert.equal(g.temperatureC, 37)
    assert.equal(g.driverVersion, null) // not queried in that capture
  })

  it('reads the 1xH100 capture (212 fields, units in header and values)', () => {
    const { gpus, reason } = parseNvidiaSmiCsv(gpuFixture('nvidia-smi-query-1xH100-allfields-units.csv'))
    assert.equal(reason, null)
    assert.equal(gpus.length, 1)
    const [g] = gpus
    assert.equal(g.name, 'NVIDIA H100 80GB HBM3')
    assert.equal(g.uuid, 'GPU-00000000-0000-0000-0000-000000000000')
    assert.equal(g.index, 0)
    assert.equal(g.totalMemoryBytes, 81559 * MIB)
    assert.equal(g.usedMemoryBytes, 0)
    assert.equal(g.utilizationPercent, 0)
    assert.equal(g.temperatureC, 41)
    assert.equal(g.driverVersion, '590.48.01')
  })

  it('reads the monitor query format recorded on an H100 (no header, no units)', () => {
    const { gpus, reason } = parseNvidiaSmiCsv(gpuFixture('nvidia-smi-monitor-query-1xH100-noheader-nounits.csv'))
    assert.equal(reason, null)
    assert.deepEqual(gpus, [{
      index: 0,
      name: 'NVIDIA H100 80GB HBM3',
      vendor: 'nvidia',
      uuid: 'GPU-00000000-0000-0000-0000-000000000000',
      totalMemoryBytes: 81559 * MIB,
      usedMemoryBytes: 0,
      utilizationPercent: 0,
      temperatureC: 40,
      driverVersion: '580.159.04',
      source: 'nvidia-smi'
    }])
    // The same machine queried with header and units, and as XML, gives the same GPU.
    assert.deepEqual(parseNvidiaSmiCsv(gpuFixture('nvidia-smi-query-1xH100-header-units.csv')).gpus, gpus)
    assert.deepEqual(parseNvidiaSmiXml(gpuFixture('nvidia-smi-q-x-1xH100-v13.xml')).gpus, gpus)
  })

  it('reads several rows of the monitor format', () => {
    const recorded = gpuFixture('nvidia-smi-monitor-query-1xH100-noheader-nounits.csv').trim()
    const second = recorded.replace(/^0, /, '1, ').replace('GPU-0000', 'GPU-1111').replace(', 81559, 0, 0, 40,', ', 81559, 40960, 97, 63,')
    const { gpus } = parseNvidiaSmiCsv(`${recorded}\n${second}\n`)
    assert.equal(gpus.length, 2)
    assert.equal(gpus[1].index, 1)
    assert.equal(gpus[1].usedMemoryBytes, 40960 * MIB)
    assert.equal(gpus[1].utilizationPercent, 97)
    assert.equal(gpus[1].temperatureC, 63)
  })

  it('keeps commas in product names and maps bracketed values to null', () => {
    const { gpus } = parseNvidiaSmiCsv('0, NVIDIA A100-SXM4-80GB, MIG 1g.10gb, GPU-x, 81920, [N/A], [Not Supported], [N/A], 535.54.03\n')
    assert.equal(gpus.length, 1)
    assert.equal(gpus[0].name, 'NVIDIA A100-SXM4-80GB, MIG 1g.10gb')
    assert.equal(gpus[0].totalMemoryBytes, 81920 * MIB)
    assert.equal(gpus[0].usedMemoryBytes, 0)
    assert.equal(gpus[0].utilizationPercent, null)
    assert.equal(gpus[0].temperatureC, null)
    assert.equal(gpus[0].driverVersion, '535.54.03')
  })

  it('reports the no-driver and NVML-mismatch outputs as no GPUs with a reason', () => {
    const noDriver = parseNvidiaSmiCsv(gpuFixture('nvidia-smi-no-driver.txt'))
    assert.deepEqual(noDriver.gpus, [])
    assert.match(noDriver.reason ?? '', /^NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver/)
    const mismatch = parseNvidiaSmiCsv(gpuFixture('nvidia-smi-nvml-driver-library-mismatch.txt'))
    assert.deepEqual(mismatch.gpus, [])
    assert.equal(mismatch.reason, 'Failed to initialize NVML: Driver/library version mismatch')
    assert.deepEqual(parseNvidiaSmiCsv('').gpus, [])
    assert.notEqual(parseNvidiaSmiCsv('').reason, null)
  })
})

describe('parseNvidiaSmiXml', () => {
  it('reads the 1xRTX3060 report', () => {
    const { gpus, reason } = parseNvidiaSmiXml(gpuFixture('nvidia-smi-q-x-1xRTX3060.xml'))
    assert.equal(reason, null)
    assert.deepEqual(gpus, [{
      index: 0,
      name: 'NVIDIA GeForce RTX 3060',
      vendor: 'nvidia',
      uuid: 'GPU-d6889ff6-2523-9142-ca3c-1ca3f396a625',
      totalMemoryBytes: 12288 * MIB,
      usedMemoryBytes: 116 * MIB,
      utilizationPercent: 0,
      temperatureC: 42,
      driverVersion: '570.124.04',
      source: 'nvidia-smi'
    }])
  })

  it('reads the 2xRTX A5000 v13 report in listing order', () => {
    const { gpus } = parseNvidiaSmiXml(gpuFixture('nvidia-smi-q-x-2xRTXA5000-v13.xml'))
    assert.equal(gpus.length, 2)
    assert.deepEqual(gpus.map(g => [g.index, g.name, g.uuid, g.totalMemoryBytes / MIB, g.usedMemoryBytes / MIB, g.temperatureC, g.driverVersion]), [
      [0, 'NVIDIA RTX A5000', 'GPU-12345678-aaaa-bbbb-cccc-0123456789ab', 24564, 22437, 13, '590.44.01'],
      [1, 'NVIDIA RTX A5000', 'GPU-12345678-aaaa-bbbb-cccc-0123456789cd', 24564, 17253, 15, '590.44.01']
    ])
  })

  it('reads the 8xV100S report, taking utilization from <utilization>, not process samples', () => {
    const { gpus } = parseNvidiaSmiXml(gpuFixture('nvidia-smi-q-x-8xV100S.xml'))
    assert.equal(gpus.length, 8)
    assert.ok(gpus.every(g => g.name === 'Tesla V100S-PCIE-32GB' && g.totalMemoryBytes === 32510 * MIB && g.driverVersion === '460.73.01'))
    assert.deepEqual(gpus.map(g => g.index), [0, 1, 2, 3, 4, 5, 6, 7])
    assert.equal(gpus[0].uuid, 'GPU-76098dc1-d3bc-9a1b-7ea6-f7b48837829e')
    assert.equal(gpus[0].usedMemoryBytes, 31689 * MIB)
    assert.equal(gpus[0].utilizationPercent, 97)
    assert.equal(gpus[0].temperatureC, 66)
    assert.equal(gpus[1].usedMemoryBytes, 29545 * MIB)
    assert.equal(gpus[1].utilizationPercent, 75)
    assert.equal(gpus[7].uuid, 'GPU-1d955959-c95b-4f40-2cac-100d3006ffe2')
    assert.equal(new Set(gpus.map(g => g.uuid)).size, 8)
  })

  it('gives a reason instead of crashing on text that is not a report', () => {
    const r = parseNvidiaSmiXml(gpuFixture('nvidia-smi-nvml-driver-library-mismatch.txt'))
    assert.deepEqual(r.gpus, [])
    assert.equal(r.reason, 'Failed to initialize NVML: Driver/library version mismatch')
    assert.deepEqual(parseNvidiaSmiXml('<nvidia_smi_log><gpu><product_name>X').gpus.map(g => g.name), ['X'])
  })
})
