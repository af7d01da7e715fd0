/**
 * Pulling a model from peers into a models dir: real libp2p hosts on loopback, real files.
 */
import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { createHash, randomBytes } from 'node:crypto'
import { copyFile, mkdir, mkdtemp, open, readFile, readdir, rm, stat, utimes, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import type { Stream } from '@libp2p/interface'
import { setLogSink } from '../../src/logger.js'
import { createHost, type Host } from '../../src/p2p/host.js'
import { createIdentity } from '../../src/p2p/identity.js'
import { BLOB_PROTOCOL, BlobFrameReader, encodeControlFrame, encodeDataFrame, isBlobRequest } from '../../src/p2p/blob-messages.js'
import { BlobService } from '../../src/p2p/blob-protocol.js'
import { defaultModelsDestDir, fetchModel, modelResolver, transferPaths, type FetchModelResult } from '../../src/node/model-transfer.js'
import type { ModelFile } from '../../src/node/resources/types.js'
import { buildGgufBuffer } from '../../src/node/resources/gguf-writer.js'
import { hostileBlobSource } from '../support/hostile-blob.js'

const MiB = 1024 * 1024

/** A valid GGUF header followed by `size` random bytes (a reader checks the header, not the weights). */
function ggufFile (size: number): Buffer {
  const header = buildGgufBuffer({ metadata: [['general.architecture', 'llama'], ['general.name', 'transfer-test']], tensors: [] })
  return Buffer.concat([header, randomBytes(size)])
}

async function newHost (): Promise<Host> {
  return await createHost({ privateKey: await createIdentity(), listen: ['/ip4/127.0.0.1/tcp/0'], mdns: false, mdnsIntervalMs: 1000 })
}

function sha256 (b: Uint8Array): string {
  return createHash('sha256').update(b).digest('hex')
}

const content = ggufFile(4 * MiB + 4321)
/** A model's fingerprint is the sha256 of its whole file. */
const FP = sha256(content)

function modelFile (name: string, path: string, sizeBytes: number, fingerprint = FP): ModelFile {
  return { name, path, sizeBytes, fingerprint, architecture: 'llama', parameterCount: null, quantization: null, contextLength: null }
}

async function exists (p: string): Promise<boolean> {
  return await stat(p).then(() => true, () => false)
}

async function waitFor (what: string, cond: () => boolean, ms = 5000): Promise<void> {
  const end = Date.now() + ms
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`)
    await new Promise(resolve => setTimeout(resolve, 10))
  }
}

/** A source that sends `limit` bytes of the real file after a true header, then resets the stream. */
function truncatingSource (file: Buffer, limit: number): (stream: Stream) => void {
  return stream => {
    void (async () => {
      const reader = new BlobFrameReader(stream, { maxControlBytes: 4096, maxDataBytes: 0 })
      const frame = await reader.read()
      reader.dispose()
      if (frame?.kind !== 'control' || !isBlobRequest(frame.value)) throw new Error('bad request')
      const { offset } = frame.value
      stream.send(encodeControlFrame({ t: 'header', size: file.byteLength, sha256: sha256(file) }))
      for (let at = offset; at < Math.min(limit, file.byteLength); at += 64 * 1024) {
        if (!stream.send(encodeDataFrame(file.subarray(at, Math.min(at + 64 * 1024, limit))))) await stream.onDrain()
      }
      // Let the bytes reach the wire before the reset (a reset discards unsent bytes).
      while (stream.writeBufferLength > 0) await new Promise(resolve => setTimeout(resolve, 5))
      await new Promise(resolve => setTimeout(resolve, 50))
      stream.abort(new Error('source crashed'))
    })().catch(err => { stream.abort(err) })
  }
}

describe('model transfer between nodes', () => {
  let a: Host, b: Host, c: Host, fake: Host
  let svcA: BlobService, svcB: BlobService, svcC: BlobService
  let root: string
  const models: { a: ModelFile[], b: ModelFile[], c: ModelFile[] } = { a: [], b: [], c: [] }
  let client: Host
  let dest = 0
  const logs: string[] = []
  const freshDest = async (): Promise<string> => { const d = join(root, `dest-${dest++}`); await mkdir(d); return d }

  before(async () => {
    setLogSink(line => { logs.push(line) })
    root = await mkdtemp(join(tmpdir(), 'shepherd-transfer-'))
    for (const n of ['a', 'b', 'c'] as const) {
      await mkdir(join(root, n))
      await writeFile(join(root, n, 'm.gguf'), content)
      models[n].push(modelFile('m', join(root, n, 'm.gguf'), content.byteLength))
    }
    ;[a, b, c, fake, client] = await Promise.all([newHost(), newHost(), newHost(), newHost(), newHost()])
    for (const h of [a, b, c, fake]) await client.dial(h.getMultiaddrs()[0])
    svcA = new BlobService(a)
    svcB = new BlobService(b)
    svcC = new BlobService(c)
    await svcA.serve(modelResolver(() => models.a))
    await svcB.serve(modelResolver(() => models.b))
    await svcC.serve(modelResolver(() => models.c))
  })

  after(async () => {
    setLogSink(line => { process.stderr.write(line + '\n') })
    await Promise.all([a, b, c, fake, client].map(async h => { await h.stop() }))
    await rm(root, { recursive: true, force: true })
  })

  const id = (h: Host): string => h.peerId.toString()

  it('pulls a whole file, verifies it and installs it under its name', async () => {
    const destDir = await freshDest()
    const progress: number[] = []
    const res = await fetchModel(client, id(a), { name: 'm', fingerprint: FP, destDir, onProgress: p => { progress.push(p.receivedBytes) } })
    assert.equal(res.path, join(destDir, 'm.gguf'))
    assert.equal(res.sha256, sha256(content))
    assert.equal(res.sizeBytes, content.byteLength)
    assert.equal(res.transferredBytes, content.byteLength)
    assert.equal(res.peer, id(a))
    assert.equal(res.alreadyPresent, false)
    assert.equal(sha256(await readFile(res.path)), sha256(content))
    assert.deepEqual(await readdir(join(destDir, '.partial')), [], 'no .part left behind')
    assert.equal(progress.at(-1), content.byteLength)
    assert.ok(progress.every((v, i) => i === 0 || v > progress[i - 1]))

    const again = await fetchModel(client, id(a), { name: 'm', fingerprint: FP, destDir })
    assert.equal(again.alreadyPresent, true)
    assert.equal(again.transferredBytes, 0)
  })

  it('resumes after an abort and transfers only the rest', async () => {
    const destDir = await freshDest()
    const ac = new AbortController()
    await assert.rejects(fetchModel(client, id(a), {
      name: 'm',
      fingerprint: FP,
      destDir,
      signal: ac.signal,
      onProgress: p => { if (p.receivedBytes >= content.byteLength / 2) ac.abort() }
    }), (e: any) => e.code === 'transfer_aborted')
    const { part, final } = transferPaths(destDir, 'm', FP)
    assert.equal(await exists(final), false)
    const kept = (await stat(part)).size
    assert.ok(kept >= content.byteLength / 2 && kept < content.byteLength, `kept ${kept}`)
    assert.deepEqual(await readFile(part), content.subarray(0, kept))

    await waitFor('the aborted transfer to end on the source', () => svcA.stats.active === 0)
    const sentBefore = svcA.stats.bytesSent
    const res = await fetchModel(client, id(a), { name: 'm', fingerprint: FP, destDir })
    assert.equal(res.resumedFromBytes, kept)
    assert.equal(res.transferredBytes, content.byteLength - kept)
    assert.equal(svcA.stats.bytesSent - sentBefore, content.byteLength - kept, 'the source sent only the missing bytes')
    assert.equal(sha256(await readFile(final)), sha256(content))
    assert.equal(await exists(part), false)
  })

  it('throws model_fingerprint_mismatch for bytes that do not match the fingerprint, and keeps nothing', async () => {
    // A source whose file rotted after it was hashed: same size and mtime, other bytes.
    const path = join(root, 'rotten.gguf')
    await writeFile(path, content)
    const when = new Date('2024-05-01T12:00:00Z')
    await utimes(path, when, when)
    const st = await stat(path)
    const s = await newHost()
    try {
      await client.dial(s.getMultiaddrs()[0])
      const svc = new BlobService(s)
      await svc.serve(modelResolver(() => [modelFile('m', path, content.byteLength)]))
      assert.equal(await svc.digests.sha256(path, st.size, st.mtimeMs), sha256(content))
      const fh = await open(path, 'r+')
      await fh.write(Buffer.from('rot'), 0, 3, 2 * MiB)
      await fh.close()
      await utimes(path, when, when)
      assert.equal((await stat(path)).mtimeMs, st.mtimeMs)

      const destDir = await freshDest()
      const { part, final } = transferPaths(destDir, 'm', FP)
      await assert.rejects(fetchModel(client, id(s), { name: 'm', fingerprint: FP, destDir }), (e: any) => e.code === 'model_fingerprint_mismatch' && e.attempts.length === 1)
      assert.equal(await exists(final), false)
      assert.equal(await exists(part), false)

      // With a sound source after the rotten one, the fetch starts over there and succeeds.
      await waitFor('the source to finish', () => svcB.stats.active === 0)
      const sentBefore = svcB.stats.bytesSent
      const res = await fetchModel(client, [id(s), id(b)], { name: 'm', fingerprint: FP, destDir })
      assert.equal(res.peer, id(b))
      assert.equal(svcB.stats.bytesSent - sentBefore, content.byteLength)
      assert.equal(sha256(await readFile(final)), sha256(content))
    } finally {
      await s.stop()
    }
  })

  it('keeps the .part when a source is cut off, and another source completes it', async () => {
    const limit = 1536 * 1024
    await fake.handle(BLOB_PROTOCOL, truncatingSource(content, limit))
    try {
      const destDir = await freshDest()
      const { part, final } = transferPaths(destDir, 'm', FP)
      await assert.rejects(fetchModel(client, id(fake), { name: 'm', fingerprint: FP, destDir }), (e: any) => e.code === 'transfer_truncated')
      assert.equal(await exists(final), false)
      const kept = (await stat(part)).size
      assert.equal(kept, limit)

      await waitFor('idle source', () => svcB.stats.active === 0)
      const sentBefore = svcB.stats.bytesSent
      const res = await fetchModel(client, id(b), { name: 'm', fingerprint: FP, destDir })
      assert.equal(res.resumedFromBytes, limit)
      assert.equal(svcB.stats.bytesSent - sentBefore, content.byteLength - limit)
      assert.equal(sha256(await readFile(final)), sha256(content))

      // Both in one call: the second source picks up where the first was cut off.
      const destDir2 = await freshDest()
      await waitFor('idle source', () => svcC.stats.active === 0)
      const sentC = svcC.stats.bytesSent
      const res2 = await fetchModel(client, [id(fake), id(c)], { name: 'm', fingerprint: FP, destDir: destDir2 })
      assert.equal(res2.peer, id(c))
      assert.equal(res2.transferredBytes, content.byteLength)
      assert.equal(svcC.stats.bytesSent - sentC, content.byteLength - limit)
      assert.equal(sha256(await readFile(res2.path)), sha256(content))
    } finally {
      await fake.unhandle(BLOB_PROTOCOL)
    }
  })

  it('starts over when the .part left from before is not a prefix of the file', async () => {
    // Longer than the file: the source answers bad_offset.
    const destDir = await freshDest()
    const { part, final } = transferPaths(destDir, 'm', FP)
    await mkdir(join(destDir, '.partial'))
    await writeFile(part, randomBytes(content.byteLength + 10))
    const res = await fetchModel(client, id(a), { name: 'm', fingerprint: FP, destDir })
    assert.equal(res.resumedFromBytes, 0)
    assert.equal(res.transferredBytes, content.byteLength)
    assert.equal(sha256(await readFile(final)), sha256(content))

    // Shorter but with other bytes: the digest fails, the bytes are dropped and the source asked again from 0.
    const destDir2 = await freshDest()
    const p2 = transferPaths(destDir2, 'm', FP)
    await mkdir(p2.partialDir)
    await writeFile(p2.part, randomBytes(MiB))
    const res2 = await fetchModel(client, id(a), { name: 'm', fingerprint: FP, destDir: destDir2 })
    assert.equal(res2.transferredBytes, content.byteLength - MiB + content.byteLength)
    assert.equal(sha256(await readFile(p2.final)), sha256(content))
    assert.equal(await exists(p2.part), false)
  })

  it('refuses a source that announces other content than the named fingerprint, before writing a byte', async () => {
    const other = ggufFile(MiB)
    const src = hostileBlobSource(other, { announce: 'true' })
    await fake.handle(BLOB_PROTOCOL, src)
    try {
      const destDir = await freshDest()
      const rejected: string[] = []
      await assert.rejects(
        fetchModel(client, id(fake), { name: 'm', fingerprint: FP, destDir, onSourceRejected: (peer, code) => { rejected.push(`${peer}:${code}`) } }),
        (e: any) => e.code === 'model_fingerprint_mismatch' && e.attempts[0].peer === id(fake)
      )
      assert.deepEqual(rejected, [`${id(fake)}:model_fingerprint_mismatch`])
      assert.deepEqual(await readdir(destDir), ['.partial'])
      assert.deepEqual(await readdir(join(destDir, '.partial')), [], 'nothing written')
      // An honest source after it completes the pull.
      const res = await fetchModel(client, [id(fake), id(a)], { name: 'm', fingerprint: FP, destDir })
      assert.equal(res.peer, id(a))
      assert.equal(sha256(await readFile(res.path)), FP)
    } finally {
      await fake.unhandle(BLOB_PROTOCOL)
    }
  })

  it('refuses a source that announces the named fingerprint and sends other bytes, and deletes them', async () => {
    const other = ggufFile(2 * MiB)
    await fake.handle(BLOB_PROTOCOL, hostileBlobSource(other, { announce: 'asked' }))
    try {
      const destDir = await freshDest()
      const { part, final } = transferPaths(destDir, 'm', FP)
      const rejected: string[] = []
      await assert.rejects(
        fetchModel(client, id(fake), { name: 'm', fingerprint: FP, destDir, onSourceRejected: (_peer, code) => { rejected.push(code) } }),
        { code: 'model_fingerprint_mismatch' }
      )
      assert.deepEqual(rejected, ['model_fingerprint_mismatch'])
      assert.equal(await exists(final), false)
      assert.equal(await exists(part), false, 'the bad bytes are deleted')
    } finally {
      await fake.unhandle(BLOB_PROTOCOL)
    }
  })

  it('installs only a valid GGUF: a script under its own true fingerprint is refused and deleted', async () => {
    const script = Buffer.from('#!/bin/sh\necho pwned > /tmp/pwned\n')
    const scriptFp = sha256(script)
    await fake.handle(BLOB_PROTOCOL, hostileBlobSource(script, { announce: 'true' }))
    try {
      const destDir = await freshDest()
      const { part, final } = transferPaths(destDir, 'totally-a-model', scriptFp)
      const rejected: string[] = []
      await assert.rejects(
        fetchModel(client, id(fake), { name: 'totally-a-model', fingerprint: scriptFp, destDir, onSourceRejected: (_peer, code) => { rejected.push(code) } }),
        (e: any) => e.code === 'model_invalid_file' && !String(e.message).includes(destDir)
      )
      assert.deepEqual(rejected, ['model_invalid_file'])
      assert.equal(await exists(final), false)
      assert.equal(await exists(part), false)
      assert.deepEqual(await readdir(destDir), ['.partial'])
    } finally {
      await fake.unhandle(BLOB_PROTOCOL)
    }
  })

  it('skips sources that cannot help and says what each answered', async () => {
    const destDir = await freshDest()
    const res = await fetchModel(client, [id(fake), id(a)], { name: 'm', fingerprint: FP, destDir, connectTimeoutMs: 1000 })
    assert.equal(res.peer, id(a))
    await assert.rejects(
      fetchModel(client, [id(a), id(b)], { name: 'unknown', fingerprint: FP, destDir }),
      (e: any) => e.code === 'model_unavailable' && e.attempts.map((x: any) => x.code).join() === 'model_unavailable,model_unavailable'
    )
    await assert.rejects(fetchModel(client, id(a), { name: 'm', fingerprint: 'b2'.repeat(32), destDir }), { code: 'model_unavailable' })
    assert.equal(await exists(join(destDir, 'unknown.gguf')), false)
  })

  it('pulls a model whose id keeps its folders (Org/sub/m) into those folders', async () => {
    models.a.push(modelFile('Org/sub/m', join(root, 'a', 'm.gguf'), content.byteLength))
    try {
      const destDir = await freshDest()
      const res = await fetchModel(client, id(a), { name: 'Org/sub/m', fingerprint: FP, destDir })
      assert.equal(res.path, join(destDir, 'Org', 'sub', 'm.gguf'))
      assert.deepEqual(await readFile(join(destDir, 'Org', 'sub', 'm.gguf')), content)
      // Staged flat, the slashes escaped; nothing is left there.
      assert.deepEqual(await readdir(join(destDir, '.partial')).catch(() => []), [])
      assert.deepEqual((await readdir(destDir)).filter(n => n !== '.partial'), ['Org'])
    } finally {
      models.a.pop()
    }
  })

  it('rejects names that would leave the destination, before any network traffic', async () => {
    const destDir = await freshDest()
    for (const name of ['../m', '..', '.', 'a/../../m', '/etc/passwd', '.hidden', 'a\\b', '', 'a//b', 'a/', 'a/.b', 'a/..', 'a/b/c/d/e', 'x'.repeat(201)]) {
      await assert.rejects(fetchModel(client, id(a), { name, fingerprint: FP, destDir }), { code: 'invalid_model_name' }, JSON.stringify(name))
    }
    await assert.rejects(fetchModel(client, id(a), { name: 'm', fingerprint: '../../x', destDir }), { code: 'invalid_fingerprint' })
    assert.deepEqual(await readdir(destDir), [])
  })

  it('never replaces a different file already at the destination', async () => {
    const destDir = await freshDest()
    const mine = Buffer.from('my own model, not yours')
    await writeFile(join(destDir, 'm.gguf'), mine)
    await assert.rejects(fetchModel(client, id(a), { name: 'm', fingerprint: FP, destDir }), (e: any) => e.code === 'destination_exists' && e.status === 409)
    assert.deepEqual(await readFile(join(destDir, 'm.gguf')), mine)
  })

  it('refuses a second fetch of the same target while one runs', async () => {
    const destDir = await freshDest()
    const first = fetchModel(client, id(a), { name: 'm', fingerprint: FP, destDir })
    await assert.rejects(fetchModel(client, id(a), { name: 'm', fingerprint: FP, destDir }), { code: 'transfer_in_progress' })
    assert.equal((await first).sha256, sha256(content))
  })

  it('serves only the models the node lists, by name and fingerprint, and no split model', () => {
    const list = [modelFile('x', '/models/x.gguf', 10), modelFile('big', '/models/big-00001-of-00002.gguf', 20)]
    const resolve = modelResolver(() => list)
    assert.deepEqual(resolve('x', FP), { path: '/models/x.gguf', size: 10 })
    assert.equal(resolve('x', 'c3'.repeat(32)), undefined)
    assert.equal(resolve('/models/x.gguf', FP), undefined)
    assert.equal(resolve('big', FP), undefined)
    assert.equal(defaultModelsDestDir({ dataDir: '/d', modelsDirs: [] }), join('/d', 'models'))
    assert.equal(defaultModelsDestDir({ dataDir: '/d', modelsDirs: ['/m1', '/m2'] }), '/m1')
  })

  it('measures loopback throughput of a 64 MB model against fs.copyFile', async () => {
    const big = ggufFile(64 * MiB)
    const src = join(root, 'a', 'big.gguf')
    await writeFile(src, big)
    models.a.push(modelFile('big', src, big.byteLength, sha256(big)))
    const st = await stat(src)
    await svcA.digests.sha256(src, st.size, st.mtimeMs) // the one-time hash is not part of the transfer

    const copyDest = join(await freshDest(), 'copy.gguf')
    let t = performance.now()
    await copyFile(src, copyDest)
    const copyMs = performance.now() - t

    const destDir = await freshDest()
    t = performance.now()
    const res: FetchModelResult = await fetchModel(client, id(a), { name: 'big', fingerprint: sha256(big), destDir })
    const fetchMs = performance.now() - t
    assert.equal(res.sha256, sha256(big))
    assert.equal(sha256(await readFile(res.path)), sha256(big))
    const mbps = (ms: number): string => (big.byteLength / MiB / (ms / 1000)).toFixed(0)
    console.log(`# 64 MiB: fetchModel ${fetchMs.toFixed(0)} ms (${mbps(fetchMs)} MiB/s) vs fs.copyFile ${copyMs.toFixed(0)} ms (${mbps(copyMs)} MiB/s)`)
  })
})
