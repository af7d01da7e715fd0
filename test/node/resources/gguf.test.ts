import assert from 'node:assert/strict'
import { mkdtemp, open, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, it } from 'node:test'
import { GgufFormatError, readGgufHeader } from '../../../src/node/resources/gguf.js'
import { buildGgufBuffer, writeGguf, type GgufSpec } from '../../support/gguf-writer.js'

let dir: string
before(async () => { dir = await mkdtemp(join(tmpdir(), 'shepherd-gguf-')) })
after(async () => { await rm(dir, { recursive: true, force: true }) })

function tinyLlama (extra: GgufSpec['metadata'] = []): GgufSpec {
  return {
    metadata: [
      ['general.architecture', 'llama'],
      ['general.name', 'tiny'],
      ['general.file_type', { type: 'uint32', value: 15 }],
      ['llama.context_length', { type: 'uint32', value: 2048 }],
      ['llama.rope.freq_base', { type: 'float32', value: 10000 }],
      ['tokenizer.ggml.tokens', { type: 'array', itemType: 'string', value: Array.from({ length: 3000 }, (_, i) => `tok${i}`) }],
      ['tokenizer.ggml.scores', { type: 'array', itemType: 'float32', value: Array.from({ length: 3000 }, (_, i) => -i) }],
      ...extra
    ],
    tensors: [
      { name: 'token_embd.weight', dims: [8, 16], type: 'F16', data: new Float32Array(128).fill(0.5) },
      { name: 'output_norm.weight', dims: [8], type: 'F32', data: new Float32Array(8).fill(1) }
    ]
  }
}

async function expectInvalid (path: string): Promise<void> {
  await assert.rejects(readGgufHeader(path), (err: unknown) => {
    assert.ok(err instanceof GgufFormatError, `expected GgufFormatError, got ${String(err)}`)
    assert.equal(err.code, 'invalid_gguf')
    return true
  })
}

describe('readGgufHeader', () => {
  it('reads architecture, quantization, context length and counts parameters from tensors', async () => {
    const path = join(dir, 'tiny.gguf')
    await writeGguf(path, tinyLlama())
    const h = await readGgufHeader(path)
    assert.equal(h.version, 3)
    assert.equal(h.architecture, 'llama')
    assert.equal(h.quantization, 'Q4_K_M')
    assert.equal(h.contextLength, 2048)
    assert.equal(h.parameterCount, 8 * 16 + 8)
    assert.equal(h.alignment, 32)
    assert.equal(h.dataOffset % 32, 0)
    assert.deepEqual(h.tensors.map(t => [t.name, t.dims, t.type, t.offset]), [
      ['token_embd.weight', [8, 16], 1, 0],
      ['output_norm.weight', [8], 0, 256]
    ])
    assert.equal(h.metadata.get('general.name'), 'tiny')
    assert.equal(h.metadata.get('llama.rope.freq_base'), 10000)
    // Big arrays are summarized, not kept.
    assert.deepEqual(h.metadata.get('tokenizer.ggml.tokens'), { kind: 'array-summary', itemType: 'string', length: 3000 })
    assert.deepEqual(h.metadata.get('tokenizer.ggml.scores'), { kind: 'array-summary', itemType: 'float32', length: 3000 })
    assert.match(h.headerSha256, /^[0-9a-f]{64}$/)
  })

  it('prefers general.parameter_count and keeps small arrays and 64-bit values', async () => {
    const path = join(dir, 'counted.gguf')
    await writeGguf(path, tinyLlama([
      ['general.parameter_count', { type: 'uint64', value: 7_241_732_096n }],
      ['x.small', { type: 'array', itemType: 'int32', value: [1, -2, 3] }],
      ['x.big', { type: 'uint64', value: 2n ** 63n }],
      ['x.flag', true]
    ]))
    const h = await readGgufHeader(path)
    assert.equal(h.parameterCount, 7_241_732_096)
    assert.deepEqual(h.metadata.get('x.small'), [1, -2, 3])
    assert.equal(h.metadata.get('x.big'), 2n ** 63n)
    assert.equal(h.metadata.get('x.flag'), true)
  })

  it('names the dominant tensor type when general.file_type is absent', async () => {
    const path = join(dir, 'untyped.gguf')
    await writeGguf(path, {
      metadata: [['general.architecture', 'qwen2'], ['qwen2.context_length', { type: 'uint32', value: 32768 }]],
      tensors: [
        // 64 Q8_0 blocks of 32 weights, 34 bytes each.
        { name: 'blk.0.ffn_up.weight', dims: [64, 32], type: 'Q8_0', raw: new Uint8Array(64 * 34) },
        { name: 'norm', dims: [64], type: 'F32', data: new Float32Array(64) }
      ]
    })
    const h = await readGgufHeader(path)
    assert.equal(h.quantization, 'Q8_0')
    assert.equal(h.architecture, 'qwen2')
    assert.equal(h.contextLength, 32768)
    assert.equal(h.parameterCount, 64 * 32 + 64)
  })

  it('maps the guessed bit and other file types', async () => {
    for (const [ftype, name] of [[0, 'F32'], [1, 'F16'], [7, 'Q8_0'], [18, 'Q6_K'], [32, 'BF16'], [1024 + 2, 'Q4_0']] as const) {
      const path = join(dir, `ft${ftype}.gguf`)
      await writeGguf(path, { metadata: [['general.file_type', { type: 'uint32', value: ftype }]], tensors: [] })
      const h = await readGgufHeader(path)
      assert.equal(h.quantization, name, `file_type ${ftype}`)
      assert.equal(h.architecture, null)
      assert.equal(h.parameterCount, null)
    }
  })

  it('rejects truncation anywhere in the header or the tensor data', async () => {
    const full = buildGgufBuffer(tinyLlama())
    const h = await (async () => { const p = join(dir, 'full.gguf'); await writeFile(p, full); return await readGgufHeader(p) })()
    // Cut inside the header at several points, including inside the last tensor info.
    for (const cut of [0, 3, 7, 15, 23, 40, 200, 30000, h.dataOffset - 40, h.dataOffset - 9, h.dataOffset, full.length - 1]) {
      const path = join(dir, `cut${cut}.gguf`)
      await writeFile(path, full.subarray(0, cut))
      await expectInvalid(path)
    }
  })

  it('rejects garbage, wrong magic, v1 and big-endian files', async () => {
    const garbage = join(dir, 'garbage.gguf')
    await writeFile(garbage, Buffer.from('this is not a model file at all, just text\n'.repeat(20)))
    await expectInvalid(garbage)

    const v1 = Buffer.from(buildGgufBuffer({ metadata: [], tensors: [] }))
    v1.writeUInt32LE(1, 4)
    await writeFile(join(dir, 'v1.gguf'), v1)
    await expectInvalid(join(dir, 'v1.gguf'))

    const be = Buffer.from(v1)
    be.writeUInt32BE(3, 4)
    await writeFile(join(dir, 'be.gguf'), be)
    await expectInvalid(join(dir, 'be.gguf'))

    await expectInvalid(join(dir, 'does-not-exist.gguf'))
    await expectInvalid(dir) // a directory
  })

  it('rejects huge declared counts and lengths quickly without allocating them', async () => {
    const header = (tensorCount: bigint, kvCount: bigint): Buffer => {
      const b = Buffer.alloc(24)
      b.write('GGUF', 0, 'latin1')
      b.writeUInt32LE(3, 4)
      b.writeBigUInt64LE(tensorCount, 8)
      b.writeBigUInt64LE(kvCount, 16)
      return b
    }
    const cases: Array<[string, Buffer]> = [
      ['kv', header(0n, 2n ** 62n)],
      ['tensors', Buffer.concat([header(2n ** 40n, 0n), Buffer.alloc(1024)])],
      // One key whose string length claims 2^60 bytes.
      ['keylen', Buffer.concat([header(0n, 1n), u64(2n ** 60n), Buffer.alloc(64)])],
      // One array of 2^50 uint8s.
      ['array', Buffer.concat([header(0n, 1n), u64(1n), Buffer.from('k'), u32(9), u32(0), u64(2n ** 50n), Buffer.alloc(64)])],
      // Unknown value type.
      ['type', Buffer.concat([header(0n, 1n), u64(1n), Buffer.from('k'), u32(99), Buffer.alloc(64)])]
    ]
    for (const [name, buf] of cases) {
      const path = join(dir, `huge-${name}.gguf`)
      await writeFile(path, buf)
      const before = process.memoryUsage().arrayBuffers
      const t0 = Date.now()
      await expectInvalid(path)
      assert.ok(Date.now() - t0 < 1000, `${name} took ${Date.now() - t0} ms`)
      assert.ok(process.memoryUsage().arrayBuffers - before < 16 * 1024 * 1024, `${name} allocated too much`)
    }
  })

  it('honours the caps passed in options', async () => {
    const path = join(dir, 'capped.gguf')
    await writeGguf(path, tinyLlama())
    await assert.rejects(readGgufHeader(path, { maxHeaderBytes: 1000 }), GgufFormatError)
    await assert.rejects(readGgufHeader(path, { maxKvCount: 3 }), GgufFormatError)
    await assert.rejects(readGgufHeader(path, { maxArrayLength: 100 }), GgufFormatError)
    const kept = await readGgufHeader(path, { maxArrayItemsKept: 5000 })
    const tokens = kept.metadata.get('tokenizer.ggml.tokens')
    assert.ok(Array.isArray(tokens))
    assert.equal(tokens.length, 3000)
    assert.equal(tokens[2999], 'tok2999')
  })

  it('reads only the header of a large file', async () => {
    const path = join(dir, 'large.gguf')
    await writeGguf(path, tinyLlama())
    // Append 64 MiB of sparse "tensor data"; reading it would be slow and show in memory.
    const fh = await open(path, 'r+')
    await fh.truncate(64 * 1024 * 1024)
    await fh.close()
    const t0 = Date.now()
    const h = await readGgufHeader(path)
    assert.equal(h.architecture, 'llama')
    assert.ok(Date.now() - t0 < 2000)
  })

  it('gives the same header hash for identical headers and a different one otherwise', async () => {
    await writeGguf(join(dir, 'h1.gguf'), tinyLlama())
    await writeGguf(join(dir, 'h2.gguf'), tinyLlama())
    await writeGguf(join(dir, 'h3.gguf'), tinyLlama([['general.description', 'changed']]))
    const [a, b, c] = await Promise.all(['h1', 'h2', 'h3'].map(async n => await readGgufHeader(join(dir, `${n}.gguf`))))
    assert.equal(a.headerSha256, b.headerSha256)
    assert.notEqual(a.headerSha256, c.headerSha256)
  })
})

function u64 (v: bigint): Buffer { const b = Buffer.alloc(8); b.writeBigUInt64LE(v); return b }
function u32 (v: number): Buffer { const b = Buffer.alloc(4); b.writeUInt32LE(v); return b }
