import assert from 'node:assert/strict'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, it } from 'node:test'
import { readGgufFileInfo } from 'node-llama-cpp'
import {
  buildGgufBuffer, float16BitsToFloat32, float32ToFloat16Bits, normalizeGgufValue, writeGguf
} from '../../support/gguf-writer.js'

let dir: string
before(async () => { dir = await mkdtemp(join(tmpdir(), 'shepherd-gguf-writer-')) })
after(async () => { await rm(dir, { recursive: true, force: true }) })

describe('gguf-writer', () => {
  it('lays out a minimal file byte for byte as the spec says', () => {
    const buf = Buffer.from(buildGgufBuffer({
      metadata: [['a', { type: 'uint8', value: 7 }]],
      tensors: [{ name: 't', dims: [2], type: 'F32', data: new Float32Array([1, -2]) }]
    }))
    const expected = Buffer.concat([
      Buffer.from('GGUF', 'latin1'),
      le32(3), le64(1n), le64(2n),
      le64(1n), Buffer.from('a'), le32(0), Buffer.from([7]),
      le64(17n), Buffer.from('general.alignment'), le32(4), le32(32),
      le64(1n), Buffer.from('t'), le32(1), le64(2n), le32(0), le64(0n)
    ])
    assert.deepEqual(buf.subarray(0, expected.length), expected)
    const dataOffset = Math.ceil(expected.length / 32) * 32
    assert.ok(buf.subarray(expected.length, dataOffset).every(b => b === 0))
    assert.equal(buf.readFloatLE(dataOffset), 1)
    assert.equal(buf.readFloatLE(dataOffset + 4), -2)
    // The last tensor is padded to the alignment as well.
    assert.equal(buf.length, dataOffset + 32)
  })

  it('is read back exactly by an independent parser (node-llama-cpp)', async () => {
    const path = join(dir, 'x.gguf')
    const values = Float32Array.from([0, 1, -1, 0.5, 65504, 1e-7, -3.14159, 2 ** -24])
    await writeGguf(path, {
      metadata: [
        ['general.architecture', 'llama'],
        ['general.parameter_count', { type: 'uint64', value: 12345678901n }],
        ['llama.context_length', { type: 'uint32', value: 4096 }],
        ['llama.rope.freq_base', { type: 'float32', value: 10000 }],
        ['x.i8', { type: 'int8', value: -5 }],
        ['x.u16', { type: 'uint16', value: 65535 }],
        ['x.i16', { type: 'int16', value: -300 }],
        ['x.i32', { type: 'int32', value: -70000 }],
        ['x.i64', { type: 'int64', value: -5n }],
        ['x.f64', { type: 'float64', value: Math.PI }],
        ['x.flag', false],
        ['x.text', 'héllo ✓'],
        ['x.strings', ['a', '', 'ccc']],
        ['x.ints', [1, 2, 3]],
        ['x.floats', [0.5, 1.5]],
        ['x.nested', { type: 'array', itemType: 'array', value: [{ type: 'array', itemType: 'uint8', value: [1, 2] }] }]
      ],
      tensors: [
        { name: 'a.weight', dims: [4, 2], type: 'F16', data: values },
        { name: 'b.weight', dims: [3], type: 'F32', data: Float32Array.from([1, 2, 3]) }
      ]
    })
    const info = await readGgufFileInfo(path, { logWarnings: false })
    const md = info.metadata as unknown as Record<string, Record<string, unknown>>
    assert.equal(md.general.architecture, 'llama')
    assert.equal(Number(md.general.parameter_count), 12345678901)
    assert.equal(md.general.alignment, 32)
    assert.equal(md.llama.context_length, 4096)
    assert.equal((md.llama.rope as Record<string, unknown>).freq_base, 10000)
    assert.equal(md.x.i8, -5)
    assert.equal(md.x.u16, 65535)
    assert.equal(md.x.i16, -300)
    assert.equal(md.x.i32, -70000)
    assert.equal(Number(md.x.i64), -5)
    assert.equal(md.x.f64, Math.PI)
    assert.equal(md.x.flag, false)
    assert.equal(md.x.text, 'héllo ✓')
    assert.deepEqual(md.x.strings, ['a', '', 'ccc'])
    assert.deepEqual(md.x.ints, [1, 2, 3])
    assert.deepEqual(md.x.floats, [0.5, 1.5])
    assert.deepEqual(md.x.nested, [[1, 2]])
    assert.deepEqual(info.tensorInfo?.map(t => [t.name, t.dimensions, t.ggmlType, t.offset]), [
      ['a.weight', [4, 2], 1, 0],
      ['b.weight', [3], 0, 32]
    ])
    // Tensor data lands where the infos say, F16-encoded.
    const buf = Buffer.from(buildGgufBuffer({ metadata: [], tensors: [{ name: 'a', dims: [8], type: 'F16', data: values }] }))
    const start = buf.length - 32
    const decoded = Array.from({ length: 8 }, (_, i) => float16BitsToFloat32(buf.readUInt16LE(start + i * 2)))
    assert.deepEqual(decoded.slice(0, 5), [0, 1, -1, 0.5, 65504])
    assert.equal(decoded[7], 2 ** -24)
    assert.ok(Math.abs(decoded[6] - -3.14159) < 2e-3)
  })

  it('converts float32 to float16 with round-to-nearest-even', () => {
    // Every finite half survives a round trip exactly.
    for (let h = 0; h < 0x10000; h++) {
      const f = float16BitsToFloat32(h)
      if (Number.isNaN(f)) continue
      assert.equal(float32ToFloat16Bits(f), h, `half 0x${h.toString(16)}`)
    }
    // Reference values from IEEE 754 (numpy.float16 agrees).
    const cases: Array<[number, number]> = [
      [1 + 2 ** -11, 0x3c00], // exactly halfway between 1 and the next half: ties to even (down)
      [1 + 3 * 2 ** -11, 0x3c02], // halfway, odd below: ties to even (up)
      [1 + 2 ** -11 + 2 ** -20, 0x3c01], // just above halfway: up
      [65520, 0x7c00], // rounds past the largest half: Inf
      [65519, 0x7bff],
      [2 ** -25, 0x0000], // halfway to the smallest subnormal: ties to even (zero)
      [2 ** -25 + 2 ** -35, 0x0001],
      [3 * 2 ** -25, 0x0002], // halfway between subnormals 1 and 2: ties to even (2)
      [2 ** -14 - 2 ** -25, 0x0400], // rounds up from the largest subnormal into the smallest normal
      [-0, 0x8000],
      [Infinity, 0x7c00],
      [-Infinity, 0xfc00],
      [1e-10, 0x0000]
    ]
    for (const [value, bits] of cases) assert.equal(float32ToFloat16Bits(value), bits, `${value}`)
    const nan = float32ToFloat16Bits(NaN)
    assert.equal(nan & 0x7c00, 0x7c00)
    assert.notEqual(nan & 0x3ff, 0)
  })

  it('maps plain JS values to GGUF types', () => {
    assert.deepEqual(normalizeGgufValue(5), { type: 'uint32', value: 5 })
    assert.deepEqual(normalizeGgufValue(-5), { type: 'int32', value: -5 })
    assert.deepEqual(normalizeGgufValue(2 ** 40), { type: 'uint64', value: 2 ** 40 })
    assert.deepEqual(normalizeGgufValue(0.25), { type: 'float32', value: 0.25 })
    assert.deepEqual(normalizeGgufValue(7n), { type: 'uint64', value: 7n })
    assert.deepEqual(normalizeGgufValue(true), { type: 'bool', value: true })
    assert.deepEqual(normalizeGgufValue([1, 2]), { type: 'array', itemType: 'int32', value: [1, 2] })
    assert.deepEqual(normalizeGgufValue([1, 2.5]), { type: 'array', itemType: 'float32', value: [1, 2.5] })
  })

  it('rejects specs llama.cpp would reject', () => {
    const t = (n: number): Float32Array => new Float32Array(n)
    assert.throws(() => buildGgufBuffer({ metadata: [], tensors: [{ name: 'a', dims: [3], type: 'F32', data: t(4) }] }), RangeError)
    assert.throws(() => buildGgufBuffer({ metadata: [['k', 1], ['k', 2]], tensors: [] }), /duplicate/)
    assert.throws(() => buildGgufBuffer({ metadata: [], tensors: [{ name: 'a', dims: [1], type: 'F32', data: t(1) }, { name: 'a', dims: [1], type: 'F32', data: t(1) }] }), /duplicate/)
    assert.throws(() => buildGgufBuffer({ metadata: [['general.alignment', { type: 'uint64', value: 32 }]], tensors: [] }), /uint32/)
    assert.throws(() => buildGgufBuffer({ metadata: [], tensors: [], alignment: 24 }), /power of two/)
    assert.throws(() => buildGgufBuffer({ metadata: [['k', { type: 'uint8', value: 256 }]], tensors: [] }), RangeError)
  })

  it('honours a custom alignment', async () => {
    const path = join(dir, 'a64.gguf')
    await writeGguf(path, {
      metadata: [],
      alignment: 64,
      tensors: [
        { name: 'a', dims: [3], type: 'F32', data: t3() },
        { name: 'b', dims: [3], type: 'F32', data: t3() }
      ]
    })
    const info = await readGgufFileInfo(path, { logWarnings: false })
    assert.equal((info.metadata as unknown as { general: { alignment: number } }).general.alignment, 64)
    assert.deepEqual(info.tensorInfo?.map(x => x.offset), [0, 64])
    assert.equal(Number(info.tensorInfo?.[0].fileOffset) % 64, 0)
  })
})

function t3 (): Float32Array { return Float32Array.from([1, 2, 3]) }
function le32 (v: number): Buffer { const b = Buffer.alloc(4); b.writeUInt32LE(v); return b }
function le64 (v: bigint): Buffer { const b = Buffer.alloc(8); b.writeBigUInt64LE(v); return b }
