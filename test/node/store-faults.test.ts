/**
 * Every write of the Store fails typed on a full disk (a real 8 MiB tmpfs; needs root): 507
 * `insufficient_storage`, never a raw LevelDB error, and writes work again once space is freed.
 */
import assert from 'node:assert/strict'
import { execFile } from 'node:child_process'
import fs from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import { after, before, describe, it } from 'node:test'
import { promisify } from 'node:util'
import { ShepherdError } from '../../src/errors.js'
import { Store } from '../../src/node/store.js'

const run = promisify(execFile)
const big = 'x'.repeat(16 * 1024)

async function fill (file: string): Promise<void> {
  const fh = await fs.open(file, 'w')
  try { for (;;) await fh.write(Buffer.alloc(64 * 1024)) } catch {} finally { await fh.close() }
  const small = await fs.open(file, 'a')
  try { for (;;) await small.write(Buffer.alloc(512)) } catch {} finally { await small.close() }
}

const full = (err: unknown): boolean => err instanceof ShepherdError && err.code === 'insufficient_storage' && err.status === 507

describe('Store writes on a full disk', () => {
  let mnt: string
  let store: Store
  before(async () => {
    mnt = await fs.mkdtemp(path.join(os.tmpdir(), 'store-tmpfs-'))
    await run('mount', ['-t', 'tmpfs', '-o', 'size=8m', 'tmpfs', mnt])
    store = await Store.open(path.join(mnt, 'data'))
  })
  after(async () => {
    await store?.close().catch(() => {})
    await run('umount', [mnt]).catch(() => {})
    await fs.rm(mnt, { recursive: true, force: true })
  })

  it('fails every kind of write with insufficient_storage, then writes again once space is freed', async () => {
    const table = store.table<{ v: string }>('things')
    await table.put('before', { v: 'ok' }, { sync: true })
    const backend = store.commandBackend()
    await fill(path.join(mnt, 'filler'))

    await assert.rejects(store.putMeta('m', { v: big }), full)
    await assert.rejects(store.appendAudit({ kind: 'k', detail: big, verdict: 'accepted' }), full)
    await assert.rejects(store.rememberPeer({ id: 'p', name: big, addresses: [], lastSeen: 1 }), full)
    await assert.rejects(table.put('after', { v: big }, { sync: true }), full)
    await assert.rejects(backend.put('r', { v: big }, { sync: true }), full)
    await assert.rejects(backend.batch([{ type: 'put', key: 'b', value: { v: big } }], { sync: true }), full)
    assert.deepEqual(await table.get('before'), { v: 'ok' }, 'reads still work')

    await fs.rm(path.join(mnt, 'filler'))
    await store.putMeta('m', { v: big })
    await table.put('after', { v: big }, { sync: true })
    await backend.put('r', { v: 1 }, { sync: true })
    assert.deepEqual(await store.getMeta('m'), { v: big })
    assert.deepEqual(await backend.get('r'), { v: 1 })
  })
})
