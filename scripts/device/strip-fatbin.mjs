/**
 * Blanks the GPU code a CUDA shared library carries for other GPUs, so that the library
 * compresses small enough to carry to a device machine (node-llama-cpp's libggml-cuda.so is
 * 159 MB, 124 MB even with xz -9, against a 64 MiB carry limit).
 *
 * The `.nv_fatbin` section holds one fatbin per CUDA module; each fatbin holds entries (SASS
 * for one sm_XX, or PTX for one compute_XX). Each fatbin is rewritten in place to list only the
 * kept entries, as if nvcc had been asked for those targets alone, and the rest of its space is
 * zeroed; on a GPU that a kept entry serves, the library behaves as before.
 *
 * Usage: node strip-fatbin.mjs [--ptx-isa 9.0] <in.so> <out.so> [keep...]   keep like `ptx90`
 * or `elf90` (default `ptx90`: node-llama-cpp 3.21's CUDA build has no sm_90 SASS, so an H100
 * JIT-compiles its compute_90 PTX anyway).
 *
 * `--ptx-isa 9.0` is a lab-only patch: it relabels the kept PTX as ISA 9.0 (`.version` line and
 * entry header), recompressing each entry with the zstd CLI (it may grow a little: the dropped
 * entries' space takes it). node-llama-cpp 3.21.1's PTX was
 * emitted by CUDA 13.1 (ISA 9.1), which a CUDA 13.0 driver (580.x) refuses with "the provided
 * PTX was compiled with an unsupported toolchain"; relabelling lets such a driver JIT it, which
 * is only sound while the PTX uses no ISA 9.1 feature (the JIT fails loudly if it does).
 */
import { spawnSync } from 'node:child_process'
import { readFileSync, writeFileSync } from 'node:fs'

const argv = process.argv.slice(2)
let ptxIsa
if (argv[0] === '--ptx-isa') {
  ptxIsa = argv[1].split('.').map(Number)
  argv.splice(0, 2)
}
const [input, output, ...keepArgs] = argv
if (input === undefined || output === undefined) {
  console.error('usage: strip-fatbin.mjs [--ptx-isa 9.0] <in.so> <out.so> [ptx90 elf90 ...]')
  process.exit(2)
}

/**
 * A kept PTX entry with its ISA version relabelled: the new header and payload (zstd again
 * when the entry was compressed, padded to 8 bytes as nvcc pads), and the old version.
 *
 * Entry header fields used (little-endian, as seen in CUDA 13 fatbins): +0 u16 kind (1 PTX,
 * 2 ELF), +4 u32 header size, +8 u64 payload size, +16 u32 compressed size, +24 u16 minor and
 * +26 u16 major PTX ISA version, +28 u32 sm arch, +40 u32 flags (0x8000: zstd-compressed),
 * +56 u64 uncompressed size. The zstd frame must carry its content size, as nvcc's do.
 */
function relabelPtx (header, payload) {
  header = Buffer.from(header)
  const compressed = (header.readUInt32LE(40) & 0x8000) !== 0
  const storedSize = compressed ? header.readUInt32LE(16) : payload.length
  const text = compressed
    ? spawnSync('zstd', ['-dcq'], { input: payload.subarray(0, storedSize), maxBuffer: 1 << 28 }).stdout
    : payload
  const str = text.toString('latin1')
  const m = /^\.version (\d+)\.(\d+)$/m.exec(str)
  if (m === null) throw new Error('PTX without a .version line')
  const relabelled = Buffer.from(`${str.slice(0, m.index)}.version ${ptxIsa[0]}.${ptxIsa[1]}${str.slice(m.index + m[0].length)}`, 'latin1')
  const packed = compressed ? spawnSync('zstd', ['-15', '--no-check', `--stream-size=${relabelled.length}`, '-cq'], { input: relabelled, maxBuffer: 1 << 28 }).stdout : relabelled
  const padded = Buffer.alloc(Math.ceil(packed.length / 8) * 8)
  packed.copy(padded)
  header.writeBigUInt64LE(BigInt(padded.length), 8)
  if (compressed) {
    header.writeUInt32LE(packed.length, 16)
    header.writeBigUInt64LE(BigInt(relabelled.length), 56) // the uncompressed size
  }
  // Header word at +24: PTX ISA version, minor in the low half, major in the high half.
  header.writeUInt16LE(ptxIsa[1], 24)
  header.writeUInt16LE(ptxIsa[0], 26)
  return { header, payload: padded, from: `${m[1]}.${m[2]}` }
}

const keep = new Set(keepArgs.length > 0 ? keepArgs : ['ptx90'])
const buf = readFileSync(input)
if (ptxIsa !== undefined && (ptxIsa.length !== 2 || ptxIsa.some(n => !Number.isInteger(n)))) throw new Error('--ptx-isa wants MAJOR.MINOR')

// ELF64 little-endian section headers.
if (buf.readUInt32BE(0) !== 0x7f454c46 || buf[4] !== 2 || buf[5] !== 1) throw new Error('not a little-endian ELF64 file')
const shoff = Number(buf.readBigUInt64LE(0x28))
const shentsize = buf.readUInt16LE(0x3a)
const shnum = buf.readUInt16LE(0x3c)
const shstrndx = buf.readUInt16LE(0x3e)
const sh = i => {
  const o = shoff + i * shentsize
  return { name: buf.readUInt32LE(o), offset: Number(buf.readBigUInt64LE(o + 0x18)), size: Number(buf.readBigUInt64LE(o + 0x20)) }
}
const strtab = sh(shstrndx)
const nameOf = s => buf.toString('latin1', strtab.offset + s.name, buf.indexOf(0, strtab.offset + s.name))
let section
for (let i = 0; i < shnum; i++) if (nameOf(sh(i)) === '.nv_fatbin') section = sh(i)
if (section === undefined) throw new Error('no .nv_fatbin section')

const FATBIN_MAGIC = 0xba55ed50
const stats = {}
let p = section.offset
const end = section.offset + section.size
let fatbins = 0
while (p < end) {
  if (buf.readUInt32LE(p) !== FATBIN_MAGIC) { p += 8; continue } // alignment padding between fatbins
  fatbins++
  const headerSize = buf.readUInt16LE(p + 6)
  const fatSize = Number(buf.readBigUInt64LE(p + 8))
  const kept = []
  let q = p + headerSize
  const qEnd = q + fatSize
  while (q < qEnd) {
    const kindId = buf.readUInt16LE(q)
    const kind = kindId === 1 ? 'ptx' : kindId === 2 ? 'elf' : `kind${kindId}`
    const entryHeaderSize = buf.readUInt32LE(q + 4)
    const payloadSize = Number(buf.readBigUInt64LE(q + 8))
    const arch = buf.readUInt32LE(q + 28)
    const key = `${kind}${arch}`
    stats[key] ??= { entries: 0, bytes: 0, kept: keep.has(key) }
    stats[key].entries++
    stats[key].bytes += payloadSize
    if (keep.has(key)) {
      let header = Buffer.from(buf.subarray(q, q + entryHeaderSize))
      let payload = Buffer.from(buf.subarray(q + entryHeaderSize, q + entryHeaderSize + payloadSize))
      if (ptxIsa !== undefined && kind === 'ptx') {
        const r = relabelPtx(header, payload)
        header = r.header
        payload = r.payload
        stats[key].relabelled ??= {}
        stats[key].relabelled[r.from] = (stats[key].relabelled[r.from] ?? 0) + 1
      }
      kept.push(header, payload)
    }
    q += entryHeaderSize + payloadSize
  }
  // The fatbin keeps its place (the module registration points at it) and lists only the kept
  // entries; the space the others took is zeroed.
  const body = Buffer.concat(kept)
  if (body.length > fatSize) throw new Error(`fatbin ${fatbins}: kept entries (${body.length} B) outgrow it (${fatSize} B)`)
  buf.fill(0, p + headerSize, qEnd)
  body.copy(buf, p + headerSize)
  buf.writeBigUInt64LE(BigInt(body.length), p + 8)
  p = qEnd
}
writeFileSync(output, buf)
console.log(JSON.stringify({ fatbins, entries: stats }, null, 1))
