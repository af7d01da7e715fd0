/**
 * A model's fingerprint is the sha256 of its whole content: computed once, cached by
 * (path, size, mtime, inode), persisted in a sidecar outside the models dir, and for big files
 * computed in the background without stalling the event loop.
 */
import assert from 'node:assert/strict'
import { createHash, randomBytes } from 'node:crypto'
import { appendFile, mkdir, mkdtemp, readdir, readFile, rm, stat, utimes, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, it } from 'node:test'
import { setLogSink } from '../../../src/logger.js'
import { ContentHashCache } from '../../../src/node/resources/content-hash.js'
import { ModelScanCache, scanModels } from '../../../src/node/resources/models.js'
import { buildGgufBuffer } from '../../support/gguf-writer.js'

const MiB = 1024 * 1024
let root: string
before(async () => {
  setLogSink(() => {})
  root = await mkdtemp(join(tmpdir(), 'shepherd-hash-'))
})
after(async () => {
  setLogSink(line => { process.stderr.write(line + '\n') })
  await rm(root, { recursive: true, force: true })
})

const sha256 = (b: Uint8Array): string => createHash('sha256').update(b).digest('hex')

/** Same GGUF header, then `tail` bytes: the old cheap fingerprint (size + header) could not tell these apart. */
function gguf (tail: Uint8Array): Buffer {
  return Buffer.concat([buildGgufBuffer({ metadata: [['general.architecture', 'llama']], tensors: [] }), tail])
}

describe('model content fingerprints', () => {
  it('is the sha256 of the whole file: same header and size, other weights, other fingerprint', async () => {
    const dir = join(root, 'a')
    await mkdir(dir)
    const one = gguf(Buffer.alloc(4096, 1))
    const two = gguf(Buffer.alloc(4096, 2))
    await writeFile(join(dir, 'one.gguf'), one)
    await writeFile(join(dir, 'two.gguf'), two)
    const models = await scanModels([dir], { cache: new ModelScanCache(), hashes: new ContentHashCache() })
    assert.deepEqual(models.map(m => [m.name, m.fingerprint]), [['one', sha256(one)], ['two', sha256(two)]])
  })

  it('hashes once, persists the hash in a sidecar, and rehashes only when size, mtime or inode change', async () => {
    const dir = join(root, 'b')
    const data = join(root, 'b-data')
    await mkdir(dir)
    await mkdir(data)
    const file = join(dir, 'm.gguf')
    const sidecar = join(data, 'model-hashes.json')
    const bytes = gguf(randomBytes(MiB))
    await writeFile(file, bytes)

    const first = new ContentHashCache({ file: sidecar })
    const scanned = await scanModels([dir], { cache: new ModelScanCache(), hashes: first })
    assert.equal(scanned[0].fingerprint, sha256(bytes))
    assert.equal(first.stats.hashed, 1)
    await scanModels([dir], { cache: new ModelScanCache(), hashes: first })
    assert.equal(first.stats.hashed, 1, 'the second scan reads no content')
    assert.deepEqual(await readdir(dir), ['m.gguf'], 'nothing is written into the models dir')
    assert.ok(JSON.parse(await readFile(sidecar, 'utf8')).entries[file].sha256 === sha256(bytes))

    // A restart: the persisted hash answers without reading the file.
    const second = new ContentHashCache({ file: sidecar })
    const again = await scanModels([dir], { cache: new ModelScanCache(), hashes: second })
    assert.equal(again[0].fingerprint, sha256(bytes))
    assert.equal(second.stats.hashed, 0)
    assert.equal(second.stats.bytesHashed, 0)

    // Same size, new bytes, new mtime: hashed again.
    const changed = gguf(randomBytes(MiB))
    await writeFile(file, changed)
    const later = new Date(Date.now() + 5000)
    await utimes(file, later, later)
    const third = await scanModels([dir], { cache: new ModelScanCache(), hashes: second })
    assert.equal(third[0].fingerprint, sha256(changed))
    assert.equal(second.stats.hashed, 1)

    // A damaged sidecar is ignored, not fatal.
    await writeFile(sidecar, '{not json')
    const fourth = new ContentHashCache({ file: sidecar })
    assert.equal((await scanModels([dir], { cache: new ModelScanCache(), hashes: fourth }))[0].fingerprint, sha256(changed))
    assert.equal(fourth.stats.hashed, 1)
  })

  it('keys on the inode: a file replaced by another with the same size and mtime is rehashed', async () => {
    const dir = join(root, 'c')
    await mkdir(dir)
    const file = join(dir, 'm.gguf')
    const a = gguf(Buffer.alloc(2048, 7))
    const b = gguf(Buffer.alloc(2048, 8))
    const when = new Date('2024-01-01T00:00:00Z')
    await writeFile(file, a)
    await utimes(file, when, when)
    const hashes = new ContentHashCache()
    assert.equal((await scanModels([dir], { cache: new ModelScanCache(), hashes }))[0].fingerprint, sha256(a))
    const other = join(root, 'c-other.gguf')
    await writeFile(other, b)
    await utimes(other, when, when)
    await rm(file)
    const { rename } = await import('node:fs/promises')
    await rename(other, file)
    assert.equal((await stat(file)).mtimeMs, when.getTime())
    assert.equal((await scanModels([dir], { cache: new ModelScanCache(), hashes }))[0].fingerprint, sha256(b))
  })

  it('hashes a big model in the background, announces it only once hashed, and keeps the event loop responsive', async () => {
    const dir = join(root, 'd')
    await mkdir(dir)
    const file = join(dir, 'big.gguf')
    await writeFile(file, gguf(Buffer.alloc(0)))
    for (let i = 0; i < 48; i++) await appendFile(file, randomBytes(MiB))
    const content = await readFile(file)

    let hashed = 0
    const hashes = new ContentHashCache({ onHashed: () => { hashed++ } })
    let maxGap = 0
    let last = performance.now()
    const tick = setInterval(() => { const now = performance.now(); maxGap = Math.max(maxGap, now - last); last = now }, 5)
    try {
      const t = performance.now()
      const first = await scanModels([dir], { cache: new ModelScanCache(), hashes, inlineHashBytes: MiB })
      const scanMs = performance.now() - t
      assert.deepEqual(first, [], 'not announced before its hash is known')
      while (hashed === 0) await new Promise(resolve => setTimeout(resolve, 10))
      const hashMs = performance.now() - t
      const second = await scanModels([dir], { cache: new ModelScanCache(), hashes, inlineHashBytes: MiB })
      assert.equal(second[0].fingerprint, sha256(content))
      console.log(`# 49 MiB: scan returned in ${scanMs.toFixed(0)} ms, hash done in ${hashMs.toFixed(0)} ms, longest event-loop gap ${maxGap.toFixed(0)} ms`)
      // One 1 MiB read + hash per turn of the loop: gaps stay far below a heartbeat (1 s) even on 2 busy cores.
      assert.ok(maxGap < 500, `event loop stalled ${maxGap.toFixed(0)} ms`)
    } finally {
      clearInterval(tick)
    }
  })

  it('keeps a recorded source with the hash, and drops it when the file changes', async () => {
    const dir = join(root, 'e')
    await mkdir(dir)
    const file = join(dir, 'pulled.gguf')
    const bytes = gguf(Buffer.alloc(1000, 3))
    await writeFile(file, bytes)
    const st = await stat(file)
    const hashes = new ContentHashCache()
    const source = { peer: '12D3KooWsource', at: new Date().toISOString(), fingerprint: sha256(bytes) }
    await hashes.remember([{ path: file, size: st.size, mtimeMs: st.mtimeMs, ino: st.ino }], sha256(bytes), source)
    const [m] = await scanModels([dir], { cache: new ModelScanCache(), hashes })
    assert.deepEqual(m.source, source)
    assert.equal(hashes.stats.hashed, 0, 'the hash a pull verified is not computed again')

    await appendFile(file, Buffer.alloc(64))
    const [changed] = await scanModels([dir], { cache: new ModelScanCache(), hashes })
    assert.equal(changed.source, undefined)
    assert.notEqual(changed.fingerprint, sha256(bytes))
  })
})
