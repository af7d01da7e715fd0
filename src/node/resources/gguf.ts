/**
 * Reads the header of a GGUF file (metadata key/values and tensor infos) without touching the
 * tensor data. Every length read from the file is checked against hard caps and against the
 * bytes the file can still hold, so a hostile or truncated file fails fast with
 * `GgufFormatError` instead of hanging or allocating what it declares.
 */
import { createHash } from 'node:crypto'
import { open, type FileHandle } from 'node:fs/promises'
import { ShepherdError } from '../../errors.js'

/** A malformed, truncated or unsupported GGUF file. */
export class GgufFormatError extends ShepherdError {
  /** The file at fault. */
  readonly path: string

  constructor (path: string, message: string, cause?: unknown) {
    super(`${path}: ${message}`, { code: 'invalid_gguf', status: 422, cause })
    this.path = path
  }
}

/** A large array left out of `metadata` to keep memory bounded; only its shape is kept. */
export interface GgufArraySummary {
  readonly kind: 'array-summary'
  itemType: GgufValueTypeName
  length: number
}

export type GgufMetadataValue = number | bigint | string | boolean | GgufMetadataValue[] | GgufArraySummary

export type GgufValueTypeName =
  | 'uint8' | 'int8' | 'uint16' | 'int16' | 'uint32' | 'int32' | 'float32' | 'bool' | 'string'
  | 'array' | 'uint64' | 'int64' | 'float64'

const VALUE_TYPES: readonly GgufValueTypeName[] = [
  'uint8', 'int8', 'uint16', 'int16', 'uint32', 'int32', 'float32', 'bool', 'string', 'array', 'uint64', 'int64', 'float64'
]

/** Byte size of the fixed-width value types; strings and arrays are variable. */
const FIXED_SIZE: Partial<Record<GgufValueTypeName, number>> = {
  uint8: 1, int8: 1, uint16: 2, int16: 2, uint32: 4, int32: 4, float32: 4, bool: 1, uint64: 8, int64: 8, float64: 8
}

/** ggml tensor type names by id (ggml.h `enum ggml_type`; gaps are removed types). */
export const GGML_TYPE_NAMES: Readonly<Record<number, string>> = {
  0: 'F32',
  1: 'F16',
  2: 'Q4_0',
  3: 'Q4_1',
  6: 'Q5_0',
  7: 'Q5_1',
  8: 'Q8_0',
  9: 'Q8_1',
  10: 'Q2_K',
  11: 'Q3_K',
  12: 'Q4_K',
  13: 'Q5_K',
  14: 'Q6_K',
  15: 'Q8_K',
  16: 'IQ2_XXS',
  17: 'IQ2_XS',
  18: 'IQ3_XXS',
  19: 'IQ1_S',
  20: 'IQ4_NL',
  21: 'IQ3_S',
  22: 'IQ2_S',
  23: 'IQ4_XS',
  24: 'I8',
  25: 'I16',
  26: 'I32',
  27: 'I64',
  28: 'F64',
  29: 'IQ1_M',
  30: 'BF16',
  34: 'TQ1_0',
  35: 'TQ2_0',
  39: 'MXFP4'
}

/** [block size, bytes per block] by ggml type id (gguf-py GGML_QUANT_SIZES). */
const GGML_TYPE_SIZES: Readonly<Record<number, readonly [number, number]>> = {
  0: [1, 4],
  1: [1, 2],
  2: [32, 18],
  3: [32, 20],
  6: [32, 22],
  7: [32, 24],
  8: [32, 34],
  9: [32, 36],
  10: [256, 84],
  11: [256, 110],
  12: [256, 144],
  13: [256, 176],
  14: [256, 210],
  15: [256, 292],
  16: [256, 66],
  17: [256, 74],
  18: [256, 98],
  19: [256, 50],
  20: [32, 18],
  21: [256, 110],
  22: [256, 82],
  23: [256, 136],
  24: [1, 1],
  25: [1, 2],
  26: [1, 4],
  27: [1, 8],
  28: [1, 8],
  29: [256, 56],
  30: [1, 2],
  34: [256, 54],
  35: [256, 66],
  39: [32, 17]
}

/** Bytes of tensor data, or null for a type this reader does not know. */
export function tensorByteSize (t: GgufTensorInfo): number | null {
  const size = GGML_TYPE_SIZES[t.type]
  if (size === undefined) return null
  const [block, bytes] = size
  const rows = t.dims.slice(1).reduce((a, b) => a * b, 1)
  return Math.ceil(t.dims[0] / block) * bytes * rows
}

/** Quantization names by `general.file_type` (llama.h `enum llama_ftype`, `LLAMA_FTYPE_MOSTLY_` dropped). */
export const LLAMA_FTYPE_NAMES: Readonly<Record<number, string>> = {
  0: 'F32',
  1: 'F16',
  2: 'Q4_0',
  3: 'Q4_1',
  7: 'Q8_0',
  8: 'Q5_0',
  9: 'Q5_1',
  10: 'Q2_K',
  11: 'Q3_K_S',
  12: 'Q3_K_M',
  13: 'Q3_K_L',
  14: 'Q4_K_S',
  15: 'Q4_K_M',
  16: 'Q5_K_S',
  17: 'Q5_K_M',
  18: 'Q6_K',
  19: 'IQ2_XXS',
  20: 'IQ2_XS',
  21: 'Q2_K_S',
  22: 'IQ3_XS',
  23: 'IQ3_XXS',
  24: 'IQ1_S',
  25: 'IQ4_NL',
  26: 'IQ3_S',
  27: 'IQ3_M',
  28: 'IQ2_S',
  29: 'IQ2_M',
  30: 'IQ4_XS',
  31: 'IQ1_M',
  32: 'BF16',
  36: 'TQ1_0',
  37: 'TQ2_0',
  38: 'MXFP4_MOE'
}

/** llama.h marks a file type it had to guess with this bit. */
const LLAMA_FTYPE_GUESSED = 1024

export interface GgufTensorInfo {
  name: string
  /** ggml order: ne0 first. */
  dims: number[]
  /** ggml type id. */
  type: number
  /** Offset of the data relative to the start of the data section. */
  offset: number
}

export interface GgufHeader {
  version: number
  /** Key/values in file order. Arrays longer than `maxArrayItemsKept` appear as summaries. */
  metadata: Map<string, GgufMetadataValue>
  tensors: GgufTensorInfo[]
  alignment: number
  /** File offset where tensor data begins (end of header, aligned). */
  dataOffset: number
  /** sha256 (hex) of the raw header bytes, magic to the last tensor info. */
  headerSha256: string
  architecture: string | null
  /** `general.parameter_count`, else the sum of the tensors' element counts. */
  parameterCount: number | null
  /** From `general.file_type`, else the ggml type holding most elements. */
  quantization: string | null
  contextLength: number | null
}

export interface ReadGgufHeaderOptions {
  /** Reject headers larger than this. Default 256 MiB (big vocabularies run to tens of MiB). */
  maxHeaderBytes?: number
  /** Reject strings longer than this. Default 64 MiB. */
  maxStringBytes?: number
  /** Reject arrays longer than this. Default 16 Mi items. */
  maxArrayLength?: number
  /** Reject more key/values than this. Default 65536. */
  maxKvCount?: number
  /** Reject more tensors than this. Default 1 Mi. */
  maxTensorCount?: number
  /** Arrays longer than this are summarized instead of kept. Default 1024. */
  maxArrayItemsKept?: number
}

const DEFAULTS: Required<ReadGgufHeaderOptions> = {
  maxHeaderBytes: 256 * 1024 * 1024,
  maxStringBytes: 64 * 1024 * 1024,
  maxArrayLength: 16 * 1024 * 1024,
  maxKvCount: 65536,
  maxTensorCount: 1024 * 1024,
  maxArrayItemsKept: 1024
}

const GGUF_MAGIC = 0x46554747
const GGML_MAX_DIMS = 4
const MAX_ARRAY_NESTING = 4
const CHUNK = 64 * 1024

const decoder = new TextDecoder('utf-8', { fatal: false })

/**
 * Buffered sequential reader over the front of a file. It only ever buffers what the caller
 * asked for (bounded by the caps checked before each request) plus one chunk, and hashes the
 * bytes it consumes.
 */
class HeaderReader {
  private buf = Buffer.alloc(CHUNK)
  /** Next unread byte in `buf`. */
  private pos = 0
  /** End of valid bytes in `buf`. */
  private end = 0
  /** Bytes of `buf` before this index are already hashed. */
  private hashed = 0
  /** File offset of `buf[0]`. */
  private base = 0
  private readonly hash = createHash('sha256')

  constructor (
    private readonly fh: FileHandle,
    readonly fileSize: number,
    readonly path: string,
    private readonly maxHeaderBytes: number
  ) {}

  /** File offset of the next unread byte. */
  get offset (): number { return this.base + this.pos }

  /** Bytes left in the file after the read position. */
  get remaining (): number { return this.fileSize - this.offset }

  fail (message: string): never {
    throw new GgufFormatError(this.path, `${message} (at byte ${this.offset})`)
  }

  private async ensure (n: number): Promise<void> {
    if (this.offset + n > this.maxHeaderBytes) this.fail(`header larger than ${this.maxHeaderBytes} bytes`)
    if (this.end - this.pos >= n) return
    if (n > this.remaining) this.fail(`truncated: needs ${n} more bytes, file has ${this.remaining}`)
    // Drop consumed bytes (hashing them first), then grow only if one item needs it.
    this.hash.update(this.buf.subarray(this.hashed, this.pos))
    const left = this.end - this.pos
    if (n > this.buf.length) {
      const next = Buffer.alloc(Math.max(n, CHUNK))
      this.buf.copy(next, 0, this.pos, this.end)
      this.buf = next
    } else {
      this.buf.copy(this.buf, 0, this.pos, this.end)
    }
    this.base += this.pos
    this.pos = 0
    this.hashed = 0
    this.end = left
    while (this.end < n) {
      const want = Math.min(this.buf.length - this.end, this.fileSize - (this.base + this.end))
      const { bytesRead } = await this.fh.read(this.buf, this.end, want, this.base + this.end)
      if (bytesRead === 0) this.fail('unexpected end of file')
      this.end += bytesRead
    }
  }

  async take (n: number): Promise<Buffer> {
    await this.ensure(n)
    const out = this.buf.subarray(this.pos, this.pos + n)
    this.pos += n
    return out
  }

  async u32 (): Promise<number> { return (await this.take(4)).readUInt32LE(0) }

  async u64 (): Promise<bigint> { return (await this.take(8)).readBigUInt64LE(0) }

  /** A u64 that must be a count or size no larger than `max`. */
  async count (what: string, max: number): Promise<number> {
    const v = await this.u64()
    if (v > BigInt(max)) this.fail(`${what} ${v} exceeds the limit of ${max}`)
    return Number(v)
  }

  digest (): string {
    this.hash.update(this.buf.subarray(this.hashed, this.pos))
    this.hashed = this.pos
    return this.hash.digest('hex')
  }
}

function toSafe (v: bigint): number | bigint {
  return v >= BigInt(Number.MIN_SAFE_INTEGER) && v <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(v) : v
}

class HeaderParser {
  constructor (private readonly r: HeaderReader, private readonly opts: Required<ReadGgufHeaderOptions>) {}

  private get path (): string { return this.r.path }

  async string (what: string): Promise<string> {
    const len = await this.r.count(`${what} length`, Math.min(this.opts.maxStringBytes, this.r.remaining))
    return len === 0 ? '' : decoder.decode(await this.r.take(len))
  }

  async valueType (): Promise<GgufValueTypeName> {
    const id = await this.r.u32()
    const name = VALUE_TYPES[id]
    if (name === undefined) this.r.fail(`unknown value type ${id}`)
    return name
  }

  async scalar (type: GgufValueTypeName): Promise<GgufMetadataValue> {
    if (type === 'string') return await this.string('string')
    const size = FIXED_SIZE[type]
    if (size === undefined) this.r.fail(`unexpected value type ${type}`)
    const b = await this.r.take(size)
    switch (type) {
      case 'uint8': return b.readUInt8(0)
      case 'int8': return b.readInt8(0)
      case 'uint16': return b.readUInt16LE(0)
      case 'int16': return b.readInt16LE(0)
      case 'uint32': return b.readUInt32LE(0)
      case 'int32': return b.readInt32LE(0)
      case 'float32': return b.readFloatLE(0)
      case 'float64': return b.readDoubleLE(0)
      case 'bool': {
        const v = b.readUInt8(0)
        if (v > 1) this.r.fail(`bool value ${v}`)
        return v === 1
      }
      case 'uint64': return toSafe(b.readBigUInt64LE(0))
      default: return toSafe(b.readBigInt64LE(0))
    }
  }

  async value (type: GgufValueTypeName, depth = 0): Promise<GgufMetadataValue> {
    if (type !== 'array') return await this.scalar(type)
    if (depth >= MAX_ARRAY_NESTING) this.r.fail('arrays nested too deeply')
    const itemType = await this.valueType()
    // Every item takes at least one byte (a string at least 8), so a declared length the
    // rest of the file cannot hold is rejected before anything is allocated for it.
    const minItem = FIXED_SIZE[itemType] ?? (itemType === 'string' ? 8 : 12)
    const length = await this.r.count('array length', Math.min(this.opts.maxArrayLength, Math.floor(this.r.remaining / minItem)))
    const keep = length <= this.opts.maxArrayItemsKept
    const items: GgufMetadataValue[] = []
    const fixed = FIXED_SIZE[itemType]
    if (!keep && fixed !== undefined) {
      // Still read the bytes (in bounded slices) so the header hash covers them.
      let left = length * fixed
      while (left > 0) {
        const n = Math.min(left, CHUNK)
        await this.r.take(n)
        left -= n
      }
    } else {
      for (let i = 0; i < length; i++) {
        const v = await this.value(itemType, depth + 1)
        if (keep) items.push(v)
      }
    }
    return keep ? items : { kind: 'array-summary', itemType, length }
  }

  async parse (): Promise<Omit<GgufHeader, 'architecture' | 'parameterCount' | 'quantization' | 'contextLength'>> {
    const r = this.r
    const magic = await r.u32()
    if (magic !== GGUF_MAGIC) r.fail('not a GGUF file (bad magic)')
    const version = await r.u32()
    if (version === 1) r.fail('GGUF v1 is not supported')
    if (version !== 2 && version !== 3) {
      r.fail((version & 0xffff) === 0 ? 'big-endian GGUF is not supported' : `unsupported GGUF version ${version}`)
    }
    // Smallest tensor info: empty name (8) + n_dims (4) + one dim (8) + type (4) + offset (8).
    const tensorCount = await r.count('tensor count', this.opts.maxTensorCount)
    // Smallest key/value: empty key (8) + type (4) + one byte value.
    const kvCount = await r.count('metadata count', Math.min(this.opts.maxKvCount, Math.floor(r.remaining / 13)))
    if (tensorCount * 32 > r.remaining) r.fail(`tensor count ${tensorCount} cannot fit in the file`)

    const metadata = new Map<string, GgufMetadataValue>()
    for (let i = 0; i < kvCount; i++) {
      const key = await this.string('key')
      const type = await this.valueType()
      const value = await this.value(type)
      if (metadata.has(key)) r.fail(`duplicate key '${key}'`)
      metadata.set(key, value)
    }

    let alignment = 32
    const align = metadata.get('general.alignment')
    if (align !== undefined) {
      if (typeof align !== 'number' || !Number.isInteger(align) || align < 1 || (align & (align - 1)) !== 0) {
        r.fail(`general.alignment must be a power of two, got ${String(align)}`)
      } else {
        alignment = align
      }
    }

    const tensors: GgufTensorInfo[] = []
    for (let i = 0; i < tensorCount; i++) {
      const name = await this.string('tensor name')
      const nDims = await r.u32()
      if (nDims < 1 || nDims > GGML_MAX_DIMS) r.fail(`tensor '${name}' has ${nDims} dimensions`)
      const dims: number[] = []
      for (let d = 0; d < nDims; d++) {
        const ne = await r.u64()
        if (ne > BigInt(Number.MAX_SAFE_INTEGER)) r.fail(`tensor '${name}' dimension ${ne} too large`)
        dims.push(Number(ne))
      }
      const type = await r.u32()
      const offset = await r.u64()
      if (offset > BigInt(Number.MAX_SAFE_INTEGER) || offset % BigInt(alignment) !== 0n) {
        r.fail(`tensor '${name}' has a misaligned or impossible offset ${offset}`)
      }
      tensors.push({ name, dims, type, offset: Number(offset) })
    }
    const headerEnd = r.offset
    const headerSha256 = r.digest()
    const dataOffset = Math.ceil(headerEnd / alignment) * alignment
    // A partial download keeps a good header; catch it here rather than at load time.
    let dataEnd = tensors.length > 0 ? dataOffset : 0
    for (const t of tensors) dataEnd = Math.max(dataEnd, dataOffset + t.offset + (tensorByteSize(t) ?? 0))
    if (dataEnd > r.fileSize) {
      throw new GgufFormatError(this.path, `truncated: tensor data needs ${dataEnd} bytes, file has ${r.fileSize}`)
    }
    return { version, metadata, tensors, alignment, dataOffset, headerSha256 }
  }
}

function elementCount (t: GgufTensorInfo): number {
  return t.dims.reduce((a, b) => a * b, 1)
}

function asInteger (v: GgufMetadataValue | undefined): number | null {
  if (typeof v === 'number' && Number.isInteger(v) && v >= 0) return v
  if (typeof v === 'bigint' && v >= 0n) return Number(v)
  return null
}

/** The quantization name for a header's `general.file_type` or, failing that, its tensors. */
export function quantizationOf (metadata: Map<string, GgufMetadataValue>, tensors: GgufTensorInfo[]): string | null {
  const ftype = asInteger(metadata.get('general.file_type'))
  if (ftype !== null) {
    const name = LLAMA_FTYPE_NAMES[ftype & ~LLAMA_FTYPE_GUESSED]
    if (name !== undefined) return name
  }
  // No (known) file type: name the tensor type that holds the most weights.
  const byType = new Map<number, number>()
  for (const t of tensors) byType.set(t.type, (byType.get(t.type) ?? 0) + elementCount(t))
  let best: number | null = null
  let bestCount = -1
  for (const [type, count] of byType) {
    if (count > bestCount) { best = type; bestCount = count }
  }
  if (best === null) return null
  return GGML_TYPE_NAMES[best] ?? `type_${best}`
}

/**
 * Reads and validates the header of the GGUF file at `path`.
 * @throws GgufFormatError (`invalid_gguf`) for anything that is not a well-formed GGUF v2/v3 header.
 */
export async function readGgufHeader (path: string, options: ReadGgufHeaderOptions = {}): Promise<GgufHeader> {
  const opts = { ...DEFAULTS, ...options }
  let fh: FileHandle
  try {
    fh = await open(path, 'r')
  } catch (err) {
    throw new GgufFormatError(path, `cannot open: ${(err as Error).message}`, err)
  }
  try {
    const st = await fh.stat()
    // A FIFO or device would block or never end; only regular files are headers.
    if (!st.isFile()) throw new GgufFormatError(path, 'not a regular file')
    const parsed = await new HeaderParser(new HeaderReader(fh, st.size, path, opts.maxHeaderBytes), opts).parse()
    const { metadata, tensors } = parsed
    const arch = metadata.get('general.architecture')
    const architecture = typeof arch === 'string' && arch !== '' ? arch : null
    let parameterCount = asInteger(metadata.get('general.parameter_count'))
    if (parameterCount === null && tensors.length > 0) parameterCount = tensors.reduce((s, t) => s + elementCount(t), 0)
    const contextLength = architecture !== null ? asInteger(metadata.get(`${architecture}.context_length`)) : null
    return { ...parsed, architecture, parameterCount, quantization: quantizationOf(metadata, tensors), contextLength }
  } catch (err) {
    if (err instanceof GgufFormatError) throw err
    throw new GgufFormatError(path, `read failed: ${(err as Error).message}`, err)
  } finally {
    await fh.close()
  }
}
