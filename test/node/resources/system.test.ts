import assert from 'node:assert/strict'
import { readFileSync } from 'node:fs'
import { statfs } from 'node:fs/promises'
import os from 'node:os'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { describe, it } from 'node:test'
import { SystemCollector, collectSystem } from '../../../src/node/resources/system.js'

describe('collectSystem', () => {
  it('reports this machine\'s CPU, memory, disk and uptime', async () => {
    const s = await collectSystem({ dataDir: tmpdir() })
    assert.equal(s.cpu.cores, os.cpus().length)
    assert.ok(s.cpu.physicalCores >= 1 && s.cpu.physicalCores <= s.cpu.cores)
    assert.equal(s.cpu.model, os.cpus()[0].model.trim())
    assert.ok(s.cpu.usagePercent >= 0 && s.cpu.usagePercent <= 100)
    assert.equal(s.cpu.loadAvg.length, 3)
    assert.ok(s.cpu.speedGHz >= 0)

    assert.equal(s.memory.totalBytes, os.totalmem())
    assert.ok(s.memory.availableBytes > 0 && s.memory.availableBytes <= s.memory.totalBytes)
    assert.equal(s.memory.usedBytes, s.memory.totalBytes - s.memory.availableBytes)
    if (process.platform === 'linux') {
      // MemAvailable from /proc/meminfo, within what a second of drift can move.
      const kb = Number(/MemAvailable:\s+(\d+) kB/.exec(readFileSync('/proc/meminfo', 'utf8'))?.[1])
      assert.ok(Math.abs(s.memory.availableBytes - kb * 1024) < 256 * 1024 * 1024)
    }

    const fs = await statfs(tmpdir())
    assert.equal(s.disk.totalBytes, fs.blocks * fs.bsize)
    assert.ok(s.disk.availableBytes <= s.disk.totalBytes)
    assert.ok(s.disk.usedBytes <= s.disk.totalBytes)
    assert.ok(s.disk.mount.length > 0)

    assert.ok(Math.abs(s.uptimeSec - os.uptime()) <= 2)
    assert.equal(s.platform, process.platform)
    assert.equal(s.arch, process.arch)
  })

  it('measures CPU usage between calls and sees a busy loop', async () => {
    const c = new SystemCollector()
    await c.collect({ dataDir: tmpdir() })
    const end = Date.now() + 400
    while (Date.now() < end) { /* keep one core busy */ }
    const busy = await c.collect({ dataDir: tmpdir() })
    // One of N cores fully busy shows as roughly 100/N percent at least.
    assert.ok(busy.cpu.usagePercent >= 100 / os.cpus().length * 0.6, `usage ${busy.cpu.usagePercent}`)
  })

  it('finds the filesystem of a data dir that does not exist yet', async () => {
    const c = new SystemCollector()
    const s = await c.collect({ dataDir: join(tmpdir(), 'shepherd-not-created', 'deeper') })
    const fs = await statfs(tmpdir())
    assert.equal(s.disk.totalBytes, fs.blocks * fs.bsize)
  })

  it('is cheap enough to run every few seconds', async () => {
    const c = new SystemCollector()
    await c.collect({ dataDir: tmpdir() }) // warms the static CPU facts
    const t0 = performance.now()
    for (let i = 0; i < 20; i++) await c.collect({ dataDir: tmpdir() })
    assert.ok((performance.now() - t0) / 20 < 100, 'a collection should take well under 100 ms')
  })
})
