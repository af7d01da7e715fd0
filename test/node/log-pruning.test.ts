/**
 * Pruning of the node's audit log (src/node/log-pruning.ts, Store.pruneAudit) on a real LevelDB:
 * by age, by count, and both, with the newest entries always the ones kept.
 */
import { after, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import fs from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import { Store } from '../../src/node/store.js'
import { timeKey } from '../../src/node/log-pruning.js'

describe('audit log pruning on a real store', () => {
  const dirs: string[] = []
  after(async () => { await Promise.all(dirs.map(async d => await fs.rm(d, { recursive: true, force: true }))) })

  async function storeWith (n: number): Promise<Store> {
    const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'shepherd-prune-'))
    dirs.push(dir)
    const store = await Store.open(dir)
    for (let i = 0; i < n; i++) await store.appendAudit({ kind: 'wire_violation', peer: 'p', detail: `#${i}`, verdict: 'rejected' })
    return store
  }

  it('keeps the newest entries up to the count', async () => {
    const store = await storeWith(250)
    assert.equal(await store.pruneAudit({ maxAgeMs: 3_600_000, maxEntries: 40 }), 210)
    const left = await store.auditLog(1000)
    assert.equal(left.length, 40)
    assert.equal(left[0].detail, '#249')
    assert.equal(left[39].detail, '#210')
    assert.equal(await store.pruneAudit({ maxAgeMs: 3_600_000, maxEntries: 40 }), 0)
    await store.close()
  })

  it('deletes entries older than the retention, and everything with a count of 0', async () => {
    const store = await storeWith(30)
    assert.equal(await store.pruneAudit({ maxAgeMs: 3_600_000, maxEntries: 1000 }), 0, 'nothing is an hour old yet')
    assert.equal(await store.pruneAudit({ maxAgeMs: 3_600_000, maxEntries: 1000 }, Date.now() + 2 * 3_600_000), 30)
    assert.deepEqual(await store.auditLog(), [])
    await store.appendAudit({ kind: 'trust_change', peer: 'p', detail: 'x', verdict: 'accepted' })
    assert.equal(await store.pruneAudit({ maxAgeMs: 3_600_000, maxEntries: 0 }), 1)
    assert.deepEqual(await store.auditLog(), [])
    await store.close()
  })

  it('time keys sort as the times do', () => {
    assert.ok(timeKey(999) < timeKey(1000))
    assert.ok(timeKey(Date.now()) < timeKey(Date.now() + 1))
    assert.equal(timeKey(-5), '000000000000000')
  })
})
