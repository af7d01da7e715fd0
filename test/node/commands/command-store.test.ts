import { after, afterEach, beforeEach, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import fs from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import { Level } from 'level'
import { CommandStore, type CommandStoreBackend, type RunRecord } from '../../../src/node/commands/index.js'

describe('CommandStore on a real LevelDB', () => {
  const dirs: string[] = []
  let dir: string
  let db: Level<string, any>
  let now = 1_000_000

  async function open (): Promise<CommandStore> {
    db = new Level<string, any>(dir, { valueEncoding: 'json' })
    await db.open()
    // A sublevel of the node's database is what the node hands the store.
    const backend: CommandStoreBackend = db.sublevel<string, any>('commands', { valueEncoding: 'json' })
    return new CommandStore(backend, () => now)
  }

  async function reopen (): Promise<CommandStore> {
    await db.close()
    return await open()
  }

  beforeEach(async () => {
    dir = await fs.mkdtemp(path.join(os.tmpdir(), 'shepherd-cmdstore-'))
    dirs.push(dir)
  })
  afterEach(async () => { await db?.close() })
  after(async () => { await Promise.all(dirs.map(async d => await fs.rm(d, { recursive: true, force: true }))) })

  it('fences per group: a term below the newest is refused, a newer one raises it, durably', async () => {
    let store = await open()
    assert.equal(await store.termOf('g1'), 0)
    assert.equal(await store.admitTerm('g1', 3), true)
    assert.equal(await store.admitTerm('g1', 3), true, 'the same term again is fine')
    assert.equal(await store.admitTerm('g1', 2), false)
    assert.equal(await store.admitTerm('g2', 1), true, 'groups are fenced apart')
    assert.equal(await store.termOf('g1'), 3)
    store = await reopen()
    assert.equal(await store.termOf('g1'), 3)
    assert.equal(await store.termOf('g2'), 1)
    assert.equal(await store.admitTerm('g1', 2), false)
  })

  it('never lets an older term overwrite a newer one when both race', async () => {
    let store = await open()
    // Cold: the reads race on LevelDB's threads, so which lower terms pass varies; the newest always wins.
    const cold = await Promise.all([store.admitTerm('c', 7), store.admitTerm('c', 5), store.admitTerm('c', 9), store.admitTerm('c', 8)])
    assert.equal(cold[2], true)
    // Warm (term known): verdicts follow arrival order.
    await store.admitTerm('g', 1)
    const warm = await Promise.all([store.admitTerm('g', 7), store.admitTerm('g', 5), store.admitTerm('g', 9), store.admitTerm('g', 8)])
    assert.deepEqual(warm, [true, false, true, false])
    store = await reopen()
    assert.equal(await store.termOf('c'), 9)
    assert.equal(await store.termOf('g'), 9)
  })

  it('keeps run records across a reopen', async () => {
    let store = await open()
    const rec: RunRecord = { id: '6a1f0d1e-2b7c-4c7e-9a55-0f7f4d1c2b3a', type: 'scan_models', issuer: 'i', group: 'g', term: 1, acceptedAt: 5, state: 'running' }
    assert.equal(await store.getRun(rec.id), undefined)
    await store.putRun(rec, { verdict: 'accepted', id: rec.id })
    store = await reopen()
    assert.deepEqual(await store.getRun(rec.id), rec)
    const [entry] = await store.listAudit()
    assert.equal(entry.verdict, 'accepted')
    assert.equal(entry.id, rec.id)
  })

  it('lists the audit log newest first, pages with `before`, and keeps it across a reopen', async () => {
    let store = await open()
    for (let i = 0; i < 25; i++) {
      now += 1
      await store.appendAudit({ verdict: 'rejected', reason: 'expired', detail: `e${i}` })
    }
    // Several in the same millisecond still keep their order.
    await Promise.all([0, 1, 2].map(async i => await store.appendAudit({ verdict: 'accepted', detail: `same${i}` })))
    const page1 = await store.listAudit({ limit: 10 })
    assert.deepEqual(page1.map(e => e.detail), ['same2', 'same1', 'same0', 'e24', 'e23', 'e22', 'e21', 'e20', 'e19', 'e18'])
    const page2 = await store.listAudit({ limit: 10, before: page1[9].cursor })
    assert.deepEqual(page2.map(e => e.detail), ['e17', 'e16', 'e15', 'e14', 'e13', 'e12', 'e11', 'e10', 'e9', 'e8'])
    const all = await store.listAudit({ limit: 1000 })
    assert.equal(all.length, 28)
    store = await reopen()
    assert.deepEqual(await store.listAudit({ limit: 1000 }), all)
    now += 1
    await store.appendAudit({ verdict: 'completed', status: 'ok', detail: 'after restart' })
    assert.equal((await store.listAudit({ limit: 1 }))[0].detail, 'after restart')
    assert.equal((await store.listAudit({ limit: 0 })).length, 1, 'a limit below one still lists one')
  })

  it('keeps the audit log apart from run records and terms', async () => {
    const store = await open()
    await store.admitTerm('g', 4)
    await store.putRun({ id: 'r', type: 't', issuer: 'i', group: 'g', term: 4, acceptedAt: 1, state: 'running' })
    assert.deepEqual(await store.listAudit(), [])
  })

  it('prunes finished runs once expired and past the result retention, never a running one; prunes the audit log', async () => {
    const store = await open()
    const HOUR = 3_600_000
    const run = (id: string, over: Partial<RunRecord>): RunRecord => ({ id, type: 'scan_models', issuer: 'p', group: 'g', term: 1, acceptedAt: now, expiresAt: now + 60_000, state: 'done', ...over })
    // Written at "now" = 1,000,000 + 48 h of the clock below.
    now = 1_000_000
    await store.putRun(run('old-done', {}), { verdict: 'accepted', id: 'old-done' })
    await store.putRun(run('old-running', { state: 'running' }))
    await store.putRun(run('old-long-lived', { expiresAt: now + 72 * HOUR }))
    await store.putRun(run('legacy-no-expiry', { expiresAt: undefined }))
    now += 47 * HOUR
    await store.putRun(run('recent-done', {}), { verdict: 'accepted', id: 'recent-done' })
    now += HOUR
    const pruned = await store.prune({ keepResultsMs: 24 * HOUR, audit: { maxAgeMs: 24 * HOUR, maxEntries: 1000 } })
    assert.deepEqual(pruned, { runs: 2, audit: 1 })
    assert.equal(await store.getRun('old-done'), undefined)
    assert.equal(await store.getRun('legacy-no-expiry'), undefined)
    assert.equal((await store.getRun('old-running'))?.state, 'running', 'an interrupted run is how a restart answers it')
    assert.ok(await store.getRun('old-long-lived') != null, 'a command that has not expired can still be replayed: its record stays')
    assert.ok(await store.getRun('recent-done') != null)
    assert.deepEqual((await store.listAudit()).map(e => e.id), ['recent-done'])
    assert.deepEqual(await store.prune({ keepResultsMs: 24 * HOUR, audit: { maxAgeMs: 24 * HOUR, maxEntries: 1000 } }), { runs: 0, audit: 0 }, 'nothing left to prune')
  })

  it('keeps only the newest audit entries beyond the count, across pages of runs', async () => {
    const store = await open()
    for (let i = 0; i < 1200; i++) {
      now += 1
      await store.putRun({ id: `r${String(i).padStart(4, '0')}`, type: 'scan_models', issuer: 'p', group: 'g', term: 1, acceptedAt: now, expiresAt: now, state: 'done' }, { verdict: 'completed', id: `r${i}` })
    }
    now += 10
    // Every run is expired and past a 5 ms retention (more than one page of 500); the audit keeps its newest 100.
    const pruned = await store.prune({ keepResultsMs: 5, audit: { maxAgeMs: 3_600_000, maxEntries: 100 } })
    assert.deepEqual(pruned, { runs: 1200, audit: 1100 })
    const left = await store.listAudit({ limit: 1000 })
    assert.equal(left.length, 100)
    assert.equal(left[0].id, 'r1199')
    assert.equal(left[99].id, 'r1100')
  })
})
