import assert from 'node:assert/strict'
import { mkdir, mkdtemp, rm, symlink, utimes, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, it } from 'node:test'
import { setLogSink } from '../../../src/logger.js'
import { ModelScanCache, scanModels } from '../../../src/node/resources/models.js'
import { writeGguf, type GgufSpec } from '../../support/gguf-writer.js'

let root: string
before(async () => { root = await mkdtemp(join(tmpdir(), 'shepherd-models-')) })
after(async () => { await rm(root, { recursive: true, force: true }) })

function model (arch: string, ftype: number, ctx: number, extra: GgufSpec['metadata'] = [], tensors = 1): GgufSpec {
  return {
    metadata: [
      ['general.architecture', arch],
      ['general.file_type', { type: 'uint32', value: ftype }],
      [`${arch}.context_length`, { type: 'uint32', value: ctx }],
      ...extra
    ],
    tensors: Array.from({ length: tensors }, (_, i) => ({ name: `w${i}`, dims: [4, 4], type: 'F32' as const, data: new Float32Array(16) }))
  }
}

describe('scanModels', () => {
  it('lists valid GGUF files in dirs and one level of subdirs (ids keep the folder), skipping the rest', async () => {
    const dir = join(root, 'a')
    await mkdir(join(dir, 'sub', 'deeper'), { recursive: true })
    await writeGguf(join(dir, 'llama-3-8b.Q4_K_M.gguf'), model('llama', 15, 8192, [['general.parameter_count', { type: 'uint64', value: 8_030_261_248n }]]))
    await writeGguf(join(dir, 'sub', 'qwen.gguf'), model('qwen2', 1, 32768))
    await writeGguf(join(dir, 'sub', 'deeper', 'hidden.gguf'), model('llama', 1, 1))
    await writeGguf(join(dir, 'mmproj-vision.gguf'), model('clip', 1, 0))
    await writeFile(join(dir, 'broken.gguf'), 'not a gguf')
    await writeFile(join(dir, 'notes.txt'), 'hello')
    await writeGguf(join(dir, 'model.bin'), model('llama', 1, 1))

    const models = await scanModels([dir], { cache: new ModelScanCache() })
    assert.deepEqual(models.map(m => m.name), ['llama-3-8b.Q4_K_M', 'sub/qwen'])
    const [llama, qwen] = models
    assert.equal(llama.path, join(dir, 'llama-3-8b.Q4_K_M.gguf'))
    assert.equal(llama.architecture, 'llama')
    assert.equal(llama.quantization, 'Q4_K_M')
    assert.equal(llama.contextLength, 8192)
    assert.equal(llama.parameterCount, 8_030_261_248)
    assert.ok(llama.sizeBytes > 0)
    assert.match(llama.fingerprint, /^[0-9a-f]{64}$/)
    assert.equal(qwen.quantization, 'F16')
    assert.equal(qwen.contextLength, 32768)
    assert.equal(qwen.parameterCount, 16)

    const deeper = await scanModels([dir], { cache: new ModelScanCache(), depth: 2 })
    assert.ok(deeper.some(m => m.name === 'sub/deeper/hidden'))
  })

  it('dedupes the same file reached twice and skips missing or unreadable dirs with a warning', async () => {
    const dir = join(root, 'b')
    await mkdir(dir)
    await writeGguf(join(dir, 'm.gguf'), model('llama', 2, 4096))
    await symlink(join(dir, 'm.gguf'), join(dir, 'alias.gguf'))
    await symlink(dir, join(root, 'b-link'))
    const lines: string[] = []
    setLogSink(line => { lines.push(line) })
    try {
      const notADir = join(dir, 'm.gguf')
      const models = await scanModels([dir, join(root, 'b-link'), dir + '/', join(root, 'missing'), notADir], { cache: new ModelScanCache() })
      assert.equal(models.length, 1)
      assert.equal(models[0].quantization, 'Q4_0')
      const warned = lines.filter(l => l.includes('unreadable models dir'))
      assert.equal(warned.length, 2)
      assert.ok(warned[0].includes('missing'))
      assert.ok(warned[1].includes('m.gguf'))
    } finally {
      setLogSink(line => { process.stderr.write(line + '\n') })
    }
  })

  it('lists a split model once, under its base name, only when every part is present', async () => {
    const dir = join(root, 'c')
    await mkdir(dir)
    const parts = 3
    for (let i = 1; i <= parts; i++) {
      const split: GgufSpec['metadata'] = [['split.no', { type: 'uint16', value: i - 1 }], ['split.count', { type: 'uint16', value: parts }]]
      await writeGguf(join(dir, `big-0000${i}-of-0000${parts}.gguf`), i === 1 ? model('llama', 15, 4096, split, 2) : { metadata: split, tensors: [{ name: `p${i}`, dims: [4, 4], type: 'F32', data: new Float32Array(16) }] })
    }
    await writeGguf(join(dir, 'partial-00001-of-00002.gguf'), model('llama', 15, 4096))
    const models = await scanModels([dir], { cache: new ModelScanCache() })
    assert.deepEqual(models.map(m => m.name), ['big'])
    const { statSync } = await import('node:fs')
    const total = [1, 2, 3].reduce((s, i) => s + statSync(join(dir, `big-0000${i}-of-00003.gguf`)).size, 0)
    assert.equal(models[0].sizeBytes, total)
    assert.equal(models[0].path, join(dir, 'big-00001-of-00003.gguf'))
    // 2 tensors in part 1, one in each of parts 2 and 3, 16 weights each.
    assert.equal(models[0].parameterCount, 4 * 16)
  })

  it('caches headers by path, size and mtime', async () => {
    const dir = join(root, 'd')
    await mkdir(dir)
    const path = join(dir, 'm.gguf')
    await writeGguf(path, model('llama', 15, 4096))
    const cache = new ModelScanCache()
    const first = await scanModels([dir], { cache })
    assert.deepEqual(cache.stats, { hits: 0, misses: 1 })
    const second = await scanModels([dir], { cache })
    assert.deepEqual(second, first)
    assert.deepEqual(cache.stats, { hits: 1, misses: 1 })
    assert.equal(cache.size, 1)

    // Rewrite with a different header: new size/mtime, new fingerprint.
    await writeGguf(path, model('llama', 15, 8192, [['general.name', 'renamed']]))
    await utimes(path, new Date(), new Date(Date.now() + 5000))
    const third = await scanModels([dir], { cache })
    assert.equal(third[0].contextLength, 8192)
    assert.deepEqual(cache.stats, { hits: 1, misses: 2 })
    assert.notEqual(third[0].fingerprint, first[0].fingerprint)

    // Removed files leave the cache.
    await rm(path)
    assert.deepEqual(await scanModels([dir], { cache }), [])
    assert.equal(cache.size, 0)
  })

  it('gives identical files the same fingerprint and different files different ones', async () => {
    const dir = join(root, 'e')
    await mkdir(dir)
    await writeGguf(join(dir, 'one.gguf'), model('llama', 15, 4096))
    await writeGguf(join(dir, 'two.gguf'), model('llama', 15, 4096))
    await writeGguf(join(dir, 'three.gguf'), model('llama', 15, 2048))
    const byName = Object.fromEntries((await scanModels([dir], { cache: new ModelScanCache() })).map(m => [m.name, m.fingerprint]))
    assert.equal(byName.one, byName.two)
    assert.notEqual(byName.one, byName.three)
  })
})
