/**
 * A small, spec-exact GGUF v3 writer for tests: builds model files (real, loadable ones or
 * deliberately odd ones) without shipping binaries in the repository.
 *
 * Layout (ggml docs/gguf.md), all little-endian:
 *   magic "GGUF" | version u32 = 3 | tensor_count u64 | metadata_kv_count u64
 *   metadata kv*: key (u64 length + UTF-8 bytes) | value_type u32 | value
 *   tensor info*: name (string) | n_dims u32 | ne[n_dims] u64 (ne0 first) | ggml_type u32 | offset u64
 *   padding to `general.alignment` | tensor data, each tensor starting at an aligned offset
 *   relative to the start of the data section and padded up to the alignment.
 */
import { writeFile } from 'node:fs/promises'

/** GGUF metadata value types (gguf_type). */
export const GGUF_VALUE_TYPE = {
  uint8: 0,
  int8: 1,
  uint16: 2,
  int16: 3,
  uint32: 4,
  int32: 5,
  float32: 6,
  bool: 7,
  string: 8,
  array: 9,
  uint64: 10,
  int64: 11,
  float64: 12
} as const

/** The ggml tensor types this writer can emit (ids from ggml.h `enum ggml_type`). */
export const GGML_TYPE = {
  F32: 0,
  F16: 1,
  Q4_0: 2,
  Q4_1: 3,
  Q5_0: 6,
  Q5_1: 7,
  Q8_0: 8,
  Q8_1: 9,
  Q2_K: 10,
  Q3_K: 11,
  Q4_K: 12,
  Q5_K: 13,
  Q6_K: 14,
  Q8_K: 15,
  I8: 24,
  I16: 25,
  I32: 26,
  I64: 27,
  F64: 28,
  BF16: 30
} as const

export type GgufScalarType = Exclude<keyof typeof GGUF_VALUE_TYPE, 'array'>
export type GgmlTypeName = keyof typeof GGML_TYPE

export type GgufScalar =
  | { type: 'uint8' | 'int8' | 'uint16' | 'int16' | 'uint32' | 'int32' | 'float32' | 'float64', value: number }
  | { type: 'uint64' | 'int64', value: number | bigint }
  | { type: 'bool', value: boolean }
  | { type: 'string', value: string }

export type GgufArray =
  | { type: 'array', itemType: Exclude<GgufScalarType, 'bool' | 'string' | 'uint64' | 'int64'>, value: number[] }
  | { type: 'array', itemType: 'uint64' | 'int64', value: Array<number | bigint> }
  | { type: 'array', itemType: 'bool', value: boolean[] }
  | { type: 'array', itemType: 'string', value: string[] }
  /** Arrays of arrays are legal GGUF; each element is itself a tagged array. */
  | { type: 'array', itemType: 'array', value: GgufArray[] }

/**
 * A metadata value. Tagged forms are exact. Plain JS shortcuts:
 * - `string` → string; `boolean` → bool; `bigint` → uint64 (int64 if negative)
 * - `number`: a non-integer → float32; an integer → uint32 if in [0, 2^32), int32 if in
 *   [-2^31, 0), else uint64/int64. llama.cpp checks value types strictly (e.g.
 *   `rope.freq_base` must be float32 even when it is 10000), so tag values whose type matters.
 * - `string[]` → array of string; `boolean[]` → array of bool; `number[]` → array of int32 when
 *   every element is an integer, else float32.
 */
export type GgufValue = GgufScalar | GgufArray | string | number | boolean | bigint | string[] | number[] | boolean[]

export type GgufTensorSpec =
  | {
    name: string
    /** ggml order: ne0 (the contiguous dimension) first. */
    dims: number[]
    type: 'F32' | 'F16'
    data: Float32Array
  }
  | {
    name: string
    dims: number[]
    /** Any ggml type; the bytes are written as given (already quantized/encoded). */
    type: GgmlTypeName | number
    raw: Uint8Array
  }

export interface GgufSpec {
  metadata: Array<[key: string, value: GgufValue]>
  tensors: GgufTensorSpec[]
  /** Defaults to 32. Written as `general.alignment` (uint32) unless already in `metadata`. */
  alignment?: number
  /** Defaults to 3. Only for tests of version handling. */
  version?: number
}

const GGUF_MAGIC = 0x46554747 // "GGUF" read as a little-endian u32
const DEFAULT_ALIGNMENT = 32

const encoder = new TextEncoder()

/** Growable little-endian byte sink. */
class ByteWriter {
  private buf = new Uint8Array(4096)
  private view = new DataView(this.buf.buffer)
  length = 0

  private reserve (n: number): void {
    if (this.length + n <= this.buf.length) return
    let size = this.buf.length * 2
    while (size < this.length + n) size *= 2
    const next = new Uint8Array(size)
    next.set(this.buf.subarray(0, this.length))
    this.buf = next
    this.view = new DataView(next.buffer)
  }

  u8 (v: number): void { this.reserve(1); this.view.setUint8(this.length, v); this.length += 1 }
  i8 (v: number): void { this.reserve(1); this.view.setInt8(this.length, v); this.length += 1 }
  u16 (v: number): void { this.reserve(2); this.view.setUint16(this.length, v, true); this.length += 2 }
  i16 (v: number): void { this.reserve(2); this.view.setInt16(this.length, v, true); this.length += 2 }
  u32 (v: number): void { this.reserve(4); this.view.setUint32(this.length, v, true); this.length += 4 }
  i32 (v: number): void { this.reserve(4); this.view.setInt32(this.length, v, true); this.length += 4 }
  f32 (v: number): void { this.reserve(4); this.view.setFloat32(this.length, v, true); this.length += 4 }
  f64 (v: number): void { this.reserve(8); this.view.setFloat64(this.length, v, true); this.length += 8 }
  u64 (v: number | bigint): void { this.reserve(8); this.view.setBigUint64(this.length, BigInt(v), true); this.length += 8 }
  i64 (v: number | bigint): void { this.reserve(8); this.view.setBigInt64(this.length, BigInt(v), true); this.length += 8 }

  bytes (b: Uint8Array): void { this.reserve(b.length); this.buf.set(b, this.length); this.length += b.length }

  string (s: string): void {
    const b = encoder.encode(s)
    this.u64(b.length)
    this.bytes(b)
  }

  padTo (alignment: number): void {
    const pad = (alignment - (this.length % alignment)) % alignment
    this.reserve(pad)
    this.buf.fill(0, this.length, this.length + pad)
    this.length += pad
  }

  result (): Uint8Array { return this.buf.slice(0, this.length) }
}

function checkInt (v: number, min: number, max: number, what: string): number {
  if (!Number.isInteger(v) || v < min || v > max) throw new RangeError(`${what}: ${v} is out of range [${min}, ${max}]`)
  return v
}

function checkBigInt (v: number | bigint, min: bigint, max: bigint, what: string): bigint {
  if (typeof v === 'number' && !Number.isSafeInteger(v)) throw new RangeError(`${what}: ${v} is not a safe integer; pass a bigint`)
  const b = BigInt(v)
  if (b < min || b > max) throw new RangeError(`${what}: ${b} is out of range`)
  return b
}

function writeScalar (w: ByteWriter, type: GgufScalarType, value: unknown): void {
  switch (type) {
    case 'uint8': w.u8(checkInt(value as number, 0, 0xff, type)); break
    case 'int8': w.i8(checkInt(value as number, -0x80, 0x7f, type)); break
    case 'uint16': w.u16(checkInt(value as number, 0, 0xffff, type)); break
    case 'int16': w.i16(checkInt(value as number, -0x8000, 0x7fff, type)); break
    case 'uint32': w.u32(checkInt(value as number, 0, 0xffffffff, type)); break
    case 'int32': w.i32(checkInt(value as number, -0x80000000, 0x7fffffff, type)); break
    case 'uint64': w.u64(checkBigInt(value as number | bigint, 0n, 0xffffffffffffffffn, type)); break
    case 'int64': w.i64(checkBigInt(value as number | bigint, -0x8000000000000000n, 0x7fffffffffffffffn, type)); break
    case 'float32': w.f32(value as number); break
    case 'float64': w.f64(value as number); break
    case 'bool':
      if (typeof value !== 'boolean') throw new TypeError(`bool value must be a boolean, got ${typeof value}`)
      w.u8(value ? 1 : 0)
      break
    case 'string':
      if (typeof value !== 'string') throw new TypeError(`string value must be a string, got ${typeof value}`)
      w.string(value)
      break
    default:
      throw new TypeError(`unknown GGUF value type '${String(type)}'`)
  }
}

function integerType (v: number): GgufScalarType {
  if (v >= 0 && v <= 0xffffffff) return 'uint32'
  if (v < 0 && v >= -0x80000000) return 'int32'
  return v >= 0 ? 'uint64' : 'int64'
}

/** Resolves the shortcuts to an explicit tagged value. */
export function normalizeGgufValue (value: GgufValue): GgufScalar | GgufArray {
  if (typeof value === 'string') return { type: 'string', value }
  if (typeof value === 'boolean') return { type: 'bool', value }
  if (typeof value === 'bigint') return { type: value < 0n ? 'int64' : 'uint64', value }
  if (typeof value === 'number') {
    if (Number.isInteger(value)) return { type: integerType(value), value } as GgufScalar
    return { type: 'float32', value }
  }
  if (Array.isArray(value)) {
    const arr = value as unknown[]
    if (arr.every(v => typeof v === 'string')) return { type: 'array', itemType: 'string', value: arr as string[] }
    if (arr.every(v => typeof v === 'boolean')) return { type: 'array', itemType: 'bool', value: arr as boolean[] }
    if (arr.every(v => typeof v === 'number')) {
      const nums = arr as number[]
      return { type: 'array', itemType: nums.every(Number.isInteger) ? 'int32' : 'float32', value: nums }
    }
    throw new TypeError('plain arrays must hold only strings, only booleans or only numbers; use the tagged form')
  }
  return value
}

function writeValue (w: ByteWriter, value: GgufScalar | GgufArray): void {
  if (value.type === 'array') {
    w.u32(GGUF_VALUE_TYPE[value.itemType])
    w.u64(value.value.length)
    for (const item of value.value) {
      if (value.itemType === 'array') writeValue(w, item as GgufArray)
      else writeScalar(w, value.itemType, item)
    }
    return
  }
  writeScalar(w, value.type, value.value)
}

// float32 → binary16 with round-to-nearest-even, subnormals, ±Inf and NaN handled as
// ggml's GGML_FP32_TO_FP16 does (the hardware conversion on x86/ARM).
const f32 = new Float32Array(1)
const u32 = new Uint32Array(f32.buffer)

/** Converts one float32 to its IEEE 754 binary16 bit pattern. */
export function float32ToFloat16Bits (value: number): number {
  f32[0] = value
  const x = u32[0]
  const sign = (x >>> 16) & 0x8000
  const exp = (x >>> 23) & 0xff
  const mant = x & 0x7fffff

  if (exp === 0xff) {
    // Inf stays Inf; NaN keeps a quiet-NaN payload bit so it never collapses to Inf.
    return sign | 0x7c00 | (mant !== 0 ? 0x200 | (mant >>> 13) : 0)
  }
  const e = exp - 127 + 15
  if (e >= 0x1f) return sign | 0x7c00 // overflow → Inf
  if (e <= 0) {
    // Subnormal half (or zero). The implicit leading 1 joins the mantissa and it is shifted
    // right; anything below half the smallest subnormal rounds to zero.
    if (e < -10) return sign
    const m = mant | 0x800000
    const shift = 14 - e
    let half = m >>> shift
    const rem = m & ((1 << shift) - 1)
    const halfway = 1 << (shift - 1)
    if (rem > halfway || (rem === halfway && (half & 1) === 1)) half += 1
    return sign | half
  }
  let half = (e << 10) | (mant >>> 13)
  const rem = mant & 0x1fff
  // A carry out of the mantissa correctly bumps the exponent (up to Inf).
  if (rem > 0x1000 || (rem === 0x1000 && (half & 1) === 1)) half += 1
  return sign | half
}

/** Converts an IEEE 754 binary16 bit pattern to a JS number (for tests). */
export function float16BitsToFloat32 (h: number): number {
  const sign = (h & 0x8000) !== 0 ? -1 : 1
  const exp = (h >>> 10) & 0x1f
  const mant = h & 0x3ff
  if (exp === 0) return sign * mant * 2 ** -24
  if (exp === 0x1f) return mant === 0 ? sign * Infinity : NaN
  return sign * (1 + mant / 1024) * 2 ** (exp - 15)
}

function tensorBytes (t: GgufTensorSpec): { type: number, bytes: Uint8Array } {
  for (const d of t.dims) {
    if (!Number.isSafeInteger(d) || d < 1) throw new RangeError(`tensor '${t.name}': bad dimension ${d}`)
  }
  if (t.dims.length < 1 || t.dims.length > 4) throw new RangeError(`tensor '${t.name}': ggml supports 1 to 4 dimensions, got ${t.dims.length}`)
  if ('raw' in t) {
    const type = typeof t.type === 'number' ? t.type : GGML_TYPE[t.type]
    if (type === undefined) throw new TypeError(`tensor '${t.name}': unknown ggml type '${String(t.type)}'`)
    return { type, bytes: t.raw }
  }
  const n = t.dims.reduce((a, b) => a * b, 1)
  if (t.data.length !== n) throw new RangeError(`tensor '${t.name}': dims ${t.dims.join('x')} need ${n} values, data has ${t.data.length}`)
  if (t.type === 'F32') {
    const out = new Uint8Array(n * 4)
    const view = new DataView(out.buffer)
    for (let i = 0; i < n; i++) view.setFloat32(i * 4, t.data[i], true)
    return { type: GGML_TYPE.F32, bytes: out }
  }
  if (t.type === 'F16') {
    const out = new Uint8Array(n * 2)
    const view = new DataView(out.buffer)
    for (let i = 0; i < n; i++) view.setUint16(i * 2, float32ToFloat16Bits(t.data[i]), true)
    return { type: GGML_TYPE.F16, bytes: out }
  }
  throw new TypeError(`tensor '${(t as { name: string }).name}': unsupported type`)
}

/** Builds a complete GGUF file in memory. */
export function buildGgufBuffer (spec: GgufSpec): Uint8Array {
  const metadata = spec.metadata.map(([k, v]) => [k, normalizeGgufValue(v)] as const)
  const keys = new Set<string>()
  for (const [k] of metadata) {
    if (keys.has(k)) throw new Error(`duplicate metadata key '${k}'`)
    keys.add(k)
  }

  let alignment = spec.alignment ?? DEFAULT_ALIGNMENT
  const given = metadata.find(([k]) => k === 'general.alignment')
  if (given !== undefined) {
    // llama.cpp rejects a general.alignment that is not a uint32 power of two.
    if (given[1].type !== 'uint32') throw new TypeError('general.alignment must be a uint32')
    alignment = given[1].value as number
  } else {
    metadata.push(['general.alignment', { type: 'uint32', value: alignment }])
  }
  if (!Number.isInteger(alignment) || alignment < 1 || (alignment & (alignment - 1)) !== 0) {
    throw new RangeError(`alignment must be a power of two, got ${alignment}`)
  }

  const names = new Set<string>()
  const tensors = spec.tensors.map(t => {
    if (names.has(t.name)) throw new Error(`duplicate tensor name '${t.name}'`)
    names.add(t.name)
    return { spec: t, ...tensorBytes(t) }
  })

  const w = new ByteWriter()
  w.u32(GGUF_MAGIC)
  w.u32(spec.version ?? 3)
  w.u64(tensors.length)
  w.u64(metadata.length)
  for (const [k, v] of metadata) {
    w.string(k)
    w.u32(GGUF_VALUE_TYPE[v.type])
    writeValue(w, v)
  }

  let offset = 0
  for (const t of tensors) {
    w.string(t.spec.name)
    w.u32(t.spec.dims.length)
    for (const d of t.spec.dims) w.u64(d)
    w.u32(t.type)
    w.u64(offset)
    offset += Math.ceil(t.bytes.length / alignment) * alignment
  }

  w.padTo(alignment)
  for (const t of tensors) {
    w.bytes(t.bytes)
    // ggml pads every tensor, the last included, and checks the data section's full size.
    w.padTo(alignment)
  }
  return w.result()
}

/** Writes a GGUF v3 file built from `spec` to `path`. */
export async function writeGguf (path: string, spec: GgufSpec): Promise<void> {
  await writeFile(path, buildGgufBuffer(spec))
}
