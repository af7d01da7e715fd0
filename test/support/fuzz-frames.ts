/**
 * Reference models of the two framings, written from their contracts rather than their code:
 * what a reader must return for a byte string that arrived whole before the remote closed.
 *
 * - `FramedStream` (src/p2p/framing.ts): varint length + UTF-8 JSON; `null` for a clean end
 *   between frames; `frame_too_large` for a length (or a length prefix) beyond the limit;
 *   `truncated_frame` for a frame cut off by the end; `invalid_frame` for a payload that is
 *   not UTF-8 JSON.
 * - `BlobFrameReader` (src/p2p/blob-messages.ts): varint length + kind byte + payload.
 */
import { concat, varint } from './fuzz-harness.js'

const strictUtf8 = new TextDecoder('utf-8', { fatal: true })
const enc = new TextEncoder()

export type FrameEnd = null | 'frame_too_large' | 'invalid_frame' | 'truncated_frame'

export interface FramedOutcome {
  frames: unknown[]
  end: FrameEnd
  /**
   * Also right: a prefix of exactly the longest allowed length, unterminated, cut off by the end
   * is either refused at once (`frame_too_large`) or found cut off (`truncated_frame`).
   */
  orEnd?: FrameEnd
}

/** Bytes of the varint that encodes `n`: a longer prefix cannot describe a frame of at most `n` bytes. */
export function varintLength (n: number): number {
  return varint(n).byteLength
}

function json (payload: Uint8Array): { ok: true, value: unknown } | { ok: false } {
  try {
    return { ok: true, value: JSON.parse(strictUtf8.decode(payload)) }
  } catch {
    return { ok: false }
  }
}

export interface RawOutcome {
  bodies: Uint8Array[]
  end: null | 'frame_too_large' | 'truncated_frame'
  orEnd?: 'truncated_frame'
}

/** What `FramedStream.readBytes`, called until it ends, must yield for `bytes` followed by a close. */
export function modelRawFramed (bytes: Uint8Array, maxFrameBytes: number): RawOutcome {
  const maxPrefix = varintLength(maxFrameBytes)
  const bodies: Uint8Array[] = []
  let at = 0
  for (;;) {
    if (at === bytes.byteLength) return { bodies, end: null }
    let len = 0
    let scale = 1
    let n = 0
    let terminated = false
    while (at + n < bytes.byteLength && n < maxPrefix) {
      const b = bytes[at + n++]
      len += (b & 0x7f) * scale
      scale *= 0x80
      if (b < 0x80) { terminated = true; break }
    }
    if (!terminated && n === maxPrefix) return at + n === bytes.byteLength ? { bodies, end: 'frame_too_large', orEnd: 'truncated_frame' } : { bodies, end: 'frame_too_large' }
    if (!terminated) return { bodies, end: 'truncated_frame' }
    if (len > maxFrameBytes) return { bodies, end: 'frame_too_large' }
    if (at + n + len > bytes.byteLength) return { bodies, end: 'truncated_frame' }
    bodies.push(bytes.subarray(at + n, at + n + len))
    at += n + len
  }
}

/** What `FramedStream.read`, called until it ends, must yield for `bytes` followed by a clean close. */
export function modelFramed (bytes: Uint8Array, maxFrameBytes: number): FramedOutcome {
  const raw = modelRawFramed(bytes, maxFrameBytes)
  const frames: unknown[] = []
  for (const body of raw.bodies) {
    const parsed = json(body)
    if (!parsed.ok) return { frames, end: 'invalid_frame' }
    // The JSON frame `null` reads as `null`, like the end: a caller cannot tell them apart (no protocol sends one).
    if (parsed.value === null) return { frames, end: null }
    frames.push(parsed.value)
  }
  return raw.orEnd !== undefined ? { frames, end: raw.end, orEnd: raw.orEnd } : { frames, end: raw.end }
}

/** One JSON frame as `FramedStream.write` sends it (a value with no JSON form becomes an empty frame). */
export function framedBytes (value: unknown): Uint8Array {
  const payload = enc.encode(JSON.stringify(value) ?? '')
  return concat(varint(payload.byteLength), payload)
}

export type BlobModelFrame = { kind: 'control', value: unknown } | { kind: 'data', bytes: Uint8Array }

export interface BlobOutcome { frames: BlobModelFrame[], end: FrameEnd }

/** Longest length prefix `BlobFrameReader` reads (2^35 bytes). */
const MAX_BLOB_VARINT_BYTES = 5

/** What `BlobFrameReader.read`, called until it ends, must yield for `bytes` followed by a clean close. */
export function modelBlob (bytes: Uint8Array, opts: { maxControlBytes: number, maxDataBytes: number }): BlobOutcome {
  const maxFrame = Math.max(opts.maxControlBytes, opts.maxDataBytes) + 1
  const frames: BlobModelFrame[] = []
  let at = 0
  for (;;) {
    if (at === bytes.byteLength) return { frames, end: null }
    let len = 0
    let scale = 1
    let n = 0
    for (;;) {
      if (at + n === bytes.byteLength) return { frames, end: 'truncated_frame' }
      if (n === MAX_BLOB_VARINT_BYTES) return { frames, end: 'frame_too_large' }
      const b = bytes[at + n++]
      len += (b & 0x7f) * scale
      scale *= 0x80
      if (b < 0x80) break
    }
    if (len === 0) return { frames, end: 'invalid_frame' }
    if (len > maxFrame) return { frames, end: 'frame_too_large' }
    if (at + n >= bytes.byteLength) return { frames, end: 'truncated_frame' }
    const kind = bytes[at + n]
    if (kind === 0) {
      if (len - 1 > opts.maxControlBytes) return { frames, end: 'frame_too_large' }
    } else if (kind === 1) {
      if (opts.maxDataBytes === 0) return { frames, end: 'invalid_frame' }
      if (len - 1 > opts.maxDataBytes) return { frames, end: 'frame_too_large' }
    } else {
      return { frames, end: 'invalid_frame' }
    }
    if (at + n + len > bytes.byteLength) return { frames, end: 'truncated_frame' }
    const payload = bytes.subarray(at + n + 1, at + n + len)
    if (kind === 1) {
      frames.push({ kind: 'data', bytes: payload })
    } else {
      const parsed = json(payload)
      if (!parsed.ok) return { frames, end: 'invalid_frame' }
      frames.push({ kind: 'control', value: parsed.value })
    }
    at += n + len
  }
}

/** Splits `bytes` at the given cut points (any numbers; taken modulo the length, sorted, deduplicated). */
export function splitAt (bytes: Uint8Array, cuts: number[]): Uint8Array[] {
  if (bytes.byteLength === 0) return [bytes]
  const points = [...new Set(cuts.map(c => c % bytes.byteLength))].filter(c => c > 0).sort((a, b) => a - b)
  const out: Uint8Array[] = []
  let prev = 0
  for (const p of points) { out.push(bytes.subarray(prev, p)); prev = p }
  out.push(bytes.subarray(prev))
  return out
}

/**
 * Deep equality of JSON values without recursion: frames may nest thousands of levels deep,
 * deeper than `assert.deepStrictEqual` (recursive) can walk.
 */
export function jsonEqual (a: unknown, b: unknown): boolean {
  const stack: Array<[unknown, unknown]> = [[a, b]]
  while (stack.length > 0) {
    const [x, y] = stack.pop()!
    if (x instanceof Uint8Array || y instanceof Uint8Array) {
      if (!(x instanceof Uint8Array && y instanceof Uint8Array) || !Buffer.from(x).equals(Buffer.from(y))) return false
      continue
    }
    if (x === null || y === null || typeof x !== 'object' || typeof y !== 'object') {
      if (!Object.is(x, y)) return false
      continue
    }
    if (Array.isArray(x) !== Array.isArray(y)) return false
    const kx = Object.keys(x)
    const ky = Object.keys(y)
    if (kx.length !== ky.length) return false
    for (const k of kx) {
      if (!Object.hasOwn(y, k)) return false
      stack.push([(x as Record<string, unknown>)[k], (y as Record<string, unknown>)[k]])
    }
  }
  return true
}

/** A short description of a value for an assertion message; never throws. */
export function describeValue (v: unknown): string {
  try {
    const text = JSON.stringify(v, (_k, x) => x instanceof Uint8Array ? `<${x.byteLength} bytes>` : x)
    return text.length > 300 ? text.slice(0, 300) + '…' : text
  } catch {
    return '<too deep to print>'
  }
}
