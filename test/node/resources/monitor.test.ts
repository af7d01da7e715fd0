import assert from 'node:assert/strict'
import { once } from 'node:events'
import { chmod, mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises'
import os, { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, it } from 'node:test'
import { setTimeout as sleep } from 'node:timers/promises'
import { ResourceMonitor, scaledMetricsGapMs, type ResourceChange } from '../../../src/node/resources/index.js'
import { writeGguf } from '../../support/gguf-writer.js'
import { fakeExec, ok } from './fake-exec.js'
import { gpuFixture } from './fixtures.js'

const MIB = 1024 * 1024

let dir: string
before(async () => { dir = await mkdtemp(join(tmpdir(), 'shepherd-monitor-')) })
after(async () => { await rm(dir, { recursive: true, force: true }) })

async function tinyModel (path: string, ctx = 4096): Promise<void> {
  await writeGguf(path, {
    metadata: [['general.architecture', 'llama'], ['general.file_type', { type: 'uint32', value: 7 }], ['llama.context_length', { type: 'uint32', value: ctx }]],
    tensors: [{ name: 'w', dims: [4, 4], type: 'F32', data: new Float32Array(16) }]
  })
}

/** The recorded H100 answer to the monitor's nvidia-smi query, with a settable VRAM use. */
function nvidiaSmi (): { exec: ReturnType<typeof fakeExec>, setUsedMib: (mib: number) => void } {
  let used = 1024
  const recorded = gpuFixture('nvidia-smi-monitor-query-1xH100-noheader-nounits.csv')
  const exec = fakeExec({
    'nvidia-smi': () => ok(recorded.replace(', 81559, 0,', `, 81559, ${used},`)),
    'llama-server': ok('', gpuFixture('llama-server-version-cuda-4xGTX1080.txt'))
  })
  return { exec, setUsedMib: mib => { used = mib } }
}

const quietLog = { trace () {}, debug () {}, info () {}, warn () {}, error () {}, child () { return quietLog } }

describe('ResourceMonitor', () => {
  it('collects real CPU and memory, fake GPUs, models and builds, and emits an initial change', async () => {
    const models = join(dir, 'm1')
    await mkdir(models)
    await tinyModel(join(models, 'tiny.gguf'))
    const { exec } = nvidiaSmi()
    const m = new ResourceMonitor({ dataDir: dir, modelsDirs: [models], searchPath: false, exec, log: quietLog })
    const changes: ResourceChange[] = []
    m.on('change', c => changes.push(c))
    await m.refresh()
    const { resources, models: found } = m.snapshot()

    assert.equal(resources.cpu.cores, os.cpus().length)
    assert.equal(resources.memory.totalBytes, os.totalmem())
    assert.ok(resources.memory.availableBytes > 0)
    assert.ok(resources.disk.totalBytes > 0)
    assert.equal(resources.platform, process.platform)

    assert.deepEqual(resources.gpus.map(g => [g.name, g.totalMemoryBytes, g.usedMemoryBytes]), [['NVIDIA H100 80GB HBM3', 81559 * MIB, 1024 * MIB]])
    assert.deepEqual(found.map(f => [f.name, f.quantization, f.contextLength]), [['tiny', 'Q8_0', 4096]])
    assert.deepEqual(resources.llamacpp, []) // searchPath off, nothing configured

    assert.equal(changes.length, 1)
    assert.deepEqual(changes[0].reasons, ['initial'])
    assert.deepEqual(changes[0].snapshot.models, found)
  })

  it('emits change only for meaningful differences', async () => {
    const models = join(dir, 'm2')
    await mkdir(models)
    const { exec, setUsedMib } = nvidiaSmi()
    const m = new ResourceMonitor({
      dataDir: dir,
      modelsDirs: [models],
      searchPath: false,
      exec,
      log: quietLog,
      // Real CPU and memory wander; keep them out of this test's expectations.
      thresholds: { cpuPercent: 101, memoryFraction: 1, diskFraction: 1 }
    })
    const changes: ResourceChange[] = []
    m.on('change', c => changes.push(c))
    await m.refresh()
    assert.equal(changes.length, 1)

    await m.refresh()
    assert.equal(changes.length, 1, 'nothing changed')

    setUsedMib(1024 + 400) // 0.5% of 81559 MiB: below the 1% threshold
    await m.refresh()
    assert.equal(changes.length, 1)

    setUsedMib(1024 + 2000) // 2.5% since the last change
    await m.refresh()
    assert.equal(changes.length, 2)
    assert.deepEqual(changes[1].reasons, ['vram'])
    assert.equal(changes[1].snapshot.resources.gpus[0].usedMemoryBytes, 3024 * MIB)

    await tinyModel(join(models, 'new.gguf'))
    await m.refresh()
    assert.equal(changes.length, 3)
    assert.deepEqual(changes[2].reasons, ['models'])
    assert.deepEqual(changes[2].snapshot.models.map(x => x.name), ['new'])
  })

  it('without nvidia-smi or rocm-smi, looks for the tools again only every llamacppIntervalMs', async () => {
    const exec = fakeExec({})
    let now = 5_000_000
    const m = new ResourceMonitor({
      dataDir: dir,
      searchPath: false,
      exec,
      log: quietLog,
      now: () => now,
      llamacppIntervalMs: 60_000,
      graphics: async () => ({ controllers: [] }) as any
    })
    await m.refresh()
    const smiCalls = (): number => exec.calls.filter(c => c.file === 'nvidia-smi' || c.file === 'rocm-smi').length
    assert.equal(smiCalls(), 2, 'both tools looked for once')
    // Timer polls (the private `run` with force false), as `start()` makes them every gpuIntervalMs.
    const poll = async (): Promise<void> => { await (m as unknown as { run: (p: string[], f: boolean) => Promise<void> }).run(['gpus'], false) }
    for (let i = 0; i < 5; i++) { now += 10_000; await poll() }
    assert.equal(smiCalls(), 2, 'no tool: not looked for again within the interval')
    now += 20_000
    await poll()
    assert.equal(smiCalls(), 4, 'after the interval it looks again (a driver may have been installed)')
    await m.refresh()
    assert.equal(smiCalls(), 6, 'an explicit refresh always looks')
  })

  it('holds moved load figures back for metricsMinGapMs, but not a changed model', async () => {
    const models = join(dir, 'm-gap')
    await mkdir(models)
    const { exec, setUsedMib } = nvidiaSmi()
    let now = 1_000_000
    const m = new ResourceMonitor({
      dataDir: dir,
      modelsDirs: [models],
      searchPath: false,
      exec,
      log: quietLog,
      metricsMinGapMs: 30_000,
      now: () => now,
      thresholds: { cpuPercent: 101, memoryFraction: 1, diskFraction: 1 }
    })
    const changes: ResourceChange[] = []
    m.on('change', c => changes.push(c))
    await m.refresh()
    assert.deepEqual(changes.map(c => c.reasons), [['initial']])

    setUsedMib(1024 + 2000) // VRAM use moved 2.5 %: a load figure
    now += 10_000
    await m.refresh()
    assert.equal(changes.length, 1, 'a load figure waits for the floor')
    assert.equal(m.snapshot().resources.gpus[0].usedMemoryBytes, 3024 * MIB, 'the latest picture is still served')

    await tinyModel(join(models, 'gap.gguf'))
    now += 1000
    await m.refresh()
    assert.deepEqual(changes.map(c => c.reasons), [['initial'], ['models', 'vram']], 'a new model goes out at once, with the held figure')

    setUsedMib(1024 + 4000)
    now += 29_000
    await m.refresh()
    assert.equal(changes.length, 2, 'still within the floor since the last emit')
    now += 1000
    await m.refresh()
    assert.deepEqual(changes[2].reasons, ['vram'], 'after the floor the moved figure goes out')
  })

  it('stretches the load-figure gap with the mesh, asked at each change', async () => {
    // Mesh-wide about one load-only snapshot every 2 s: a node's own gap grows with its peers.
    assert.equal(scaledMetricsGapMs(30_000, 0), 30_000)
    assert.equal(scaledMetricsGapMs(30_000, 15), 30_000)
    assert.equal(scaledMetricsGapMs(30_000, 47), 94_000)
    assert.equal(scaledMetricsGapMs(30_000, 999), 1_998_000)
    const { exec, setUsedMib } = nvidiaSmi()
    let now = 1_000_000
    let peers = 0
    const m = new ResourceMonitor({
      dataDir: dir,
      modelsDirs: [],
      searchPath: false,
      exec,
      log: quietLog,
      metricsMinGapMs: () => scaledMetricsGapMs(30_000, peers),
      now: () => now,
      thresholds: { cpuPercent: 101, memoryFraction: 1, diskFraction: 1 }
    })
    const changes: ResourceChange[] = []
    m.on('change', c => changes.push(c))
    await m.refresh()
    peers = 47
    setUsedMib(1024 + 2000)
    now += 31_000
    await m.refresh()
    assert.equal(changes.length, 1, 'past 30 s but within 94 s at 47 peers: held')
    peers = 3
    await m.refresh()
    assert.deepEqual(changes[1]?.reasons, ['vram'], 'the mesh shrank: the gap is 30 s again, and the figure goes out')
  })

  it('polls on timers after start() and stops emitting after stop()', async (t) => {
    const models = join(dir, 'm3')
    await mkdir(models)
    const { exec, setUsedMib } = nvidiaSmi()
    const m = new ResourceMonitor({
      dataDir: dir,
      modelsDirs: [models],
      llamacppPaths: [],
      searchPath: false,
      exec,
      log: quietLog,
      sampleIntervalMs: 30,
      gpuIntervalMs: 30,
      thresholds: { cpuPercent: 101, memoryFraction: 1, diskFraction: 1 }
    })
    // The monitor's timers are unref'd (it must not keep a process alive); this test is all it runs.
    const keepAlive = setInterval(() => {}, 1000)
    t.after(() => { clearInterval(keepAlive); m.stop() })
    const initial = once(m, 'change')
    await m.start()
    assert.deepEqual((await initial)[0].reasons, ['initial'])

    const next = once(m, 'change')
    await tinyModel(join(models, 'late.gguf'))
    const [change] = await next as [ResourceChange]
    assert.deepEqual(change.reasons, ['models'])

    const gpuChange = once(m, 'change')
    setUsedMib(40000)
    assert.deepEqual(((await gpuChange) as [ResourceChange])[0].reasons, ['vram'])

    m.stop()
    let after = 0
    m.on('change', () => { after++ })
    setUsedMib(70000)
    await tinyModel(join(models, 'ignored.gguf'))
    await sleep(60) // a poll already under way may finish...
    const calls = exec.calls.length
    await sleep(150) // ...but no new one starts
    assert.equal(exec.calls.length, calls)
    assert.equal(after, 0)
  })

  it('reports GPU tool failures without GPUs', async () => {
    const exec = fakeExec({ 'nvidia-smi': { stdout: gpuFixture('nvidia-smi-nvml-driver-library-mismatch.txt'), stderr: '', exitCode: 18 } })
    const m = new ResourceMonitor({ dataDir: dir, searchPath: false, exec, log: quietLog, graphics: async () => { throw new Error('unused') } })
    await m.refresh()
    assert.deepEqual(m.snapshot().resources.gpus, [])
    assert.deepEqual(m.gpuReasons(), ['Failed to initialize NVML: Driver/library version mismatch'])
  })

  it('asks systeminformation for controllers once, not on every GPU poll, when no GPU tool exists', async () => {
    let asked = 0
    const m = new ResourceMonitor({
      dataDir: dir,
      searchPath: false,
      exec: fakeExec({}),
      log: quietLog,
      graphics: async () => {
        asked++
        return { controllers: [{ vendor: 'Intel Corporation', model: 'UHD Graphics 630', bus: 'Onboard', vram: 1536, vramDynamic: true }] }
      }
    })
    await m.refresh()
    await m.refresh()
    await m.refresh()
    assert.equal(asked, 1)
    assert.deepEqual(m.snapshot().resources.gpus.map(g => [g.vendor, g.name, g.totalMemoryBytes]), [['intel', 'UHD Graphics 630', 1536 * MIB]])
  })

  it('finds configured llama.cpp builds', async () => {
    const { exec } = nvidiaSmi()
    const bin = join(dir, 'llama', 'llama-server')
    await mkdir(join(dir, 'llama'))
    await writeFile(bin, '#!/bin/sh\nexit 0\n')
    await chmod(bin, 0o755)
    const m = new ResourceMonitor({ dataDir: dir, llamacppPaths: [join(dir, 'llama')], searchPath: false, exec, log: quietLog })
    await m.refresh()
    const builds = m.snapshot().resources.llamacpp
    assert.deepEqual(builds.map(b => [b.path, b.backend, b.version, b.devices.length]), [[bin, 'cuda', '7079', 4]])
  })
})
