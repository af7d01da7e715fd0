/**
 * Fuzzing of the two stream framings over in-memory libp2p stream pairs (@libp2p/utils
 * `streamPair`): `FramedStream` (openai and cmd protocols) and `BlobFrameReader` (blob
 * protocol). Random bytes, valid frames, valid frames then garbage, and edits of them arrive in
 * random chunks; the reader must yield exactly what the reference model (test/support/fuzz-frames.ts)
 * says: the frames, then `null` at a clean end, or a `WireError` with the right code. Nothing else
 * may escape, and memory stays bounded.
 *
 *   node --import tsx --test test/fuzz/frame-readers.test.ts   (FUZZ_SEED=<n> replays)
 */
import '../../src/polyfill.js'
import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import fc from 'fast-check'
import { streamPair } from '@libp2p/utils'
import type { Stream } from '@libp2p/interface'
import { FramedStream } from '../../src/p2p/framing.js'
import { WireError } from '../../src/errors.js'
import {
  BlobFrameReader, encodeControlFrame, encodeDataFrame, MAX_BLOB_CHUNK_BYTES, MAX_BLOB_CONTROL_BYTES, MAX_BLOB_REQUEST_BYTES, type BlobFrame
} from '../../src/p2p/blob-messages.js'
import { assertHeapBounded, assertTyped, checkAsync, concat, deadline, heapUsed, ProcessWatch, sleep, varint } from '../support/fuzz-harness.js'
import { hostileJsonText, INVALID_UTF8, mutateBytes } from '../support/fuzz-arbitraries.js'
import { blobControl, blobRequest } from '../support/fuzz-messages.js'
import { describeValue, framedBytes, jsonEqual, modelBlob, modelFramed, splitAt, type BlobModelFrame, type FrameEnd } from '../support/fuzz-frames.js'

const enc = new TextEncoder()
/** Small limit, so the fuzzer reaches it often; the unread buffer bound is this + 16. */
const MAX = 1024
const READ_TIMEOUT_MS = 3000

/**
 * Opens a pair, sends `chunks` from the outbound end, closes its write side; returns both ends
 * after `waitMs`: with a wait, everything (the close included) has arrived before the reader exists.
 */
async function deliver (chunks: Uint8Array[], close = true, waitMs = 0): Promise<{ out: Stream, inb: Stream }> {
  const [out, inb] = await streamPair()
  for (const c of chunks) if (c.byteLength > 0 && !out.send(c)) await out.onDrain()
  if (close) void out.close().catch(() => {})
  if (waitMs > 0) await sleep(waitMs)
  return { out, inb }
}

/** Whether the reader starts before the bytes arrive (0) or after all of them and the close (ms). */
const wait = fc.constantFrom(0, 0, 5)

function release (...streams: Stream[]): void {
  for (const s of streams) s.abort(new Error('case over'))
}

async function readFramed (f: FramedStream): Promise<{ frames: unknown[], end: unknown }> {
  const frames: unknown[] = []
  for (;;) {
    let v: unknown
    try {
      v = await f.read(AbortSignal.timeout(READ_TIMEOUT_MS))
    } catch (err) {
      return { frames, end: err }
    }
    if (v === null) return { frames, end: null }
    frames.push(v)
  }
}

function assertEnd (end: unknown, want: FrameEnd, orEnd?: FrameEnd): void {
  if (want === null) {
    assert.equal(end, null, `expected a clean end, got ${(end as Error)?.name}: ${(end as Error)?.message}`)
    return
  }
  assertTyped(end, orEnd != null ? [want, orEnd] : [want], WireError)
}

async function readBlob (r: BlobFrameReader): Promise<{ frames: BlobModelFrame[], end: unknown }> {
  const frames: BlobModelFrame[] = []
  for (;;) {
    let f: BlobFrame | null
    try {
      f = await r.read(AbortSignal.timeout(READ_TIMEOUT_MS))
    } catch (err) {
      return { frames, end: err }
    }
    if (f === null) return { frames, end: null }
    frames.push(f.kind === 'control' ? { kind: 'control', value: f.value } : { kind: 'data', bytes: concat(...f.chunks) })
  }
}

const cuts = fc.array(fc.nat(), { maxLength: 6 })

/** Byte strings a framed reader must survive, all within MAX + 16 bytes (the unread buffer bound). */
const framedInput: fc.Arbitrary<Uint8Array> = fc.oneof(
  fc.uint8Array({ maxLength: 64 }),
  fc.uint8Array({ maxLength: MAX + 16 }),
  // Valid frames, back to back.
  fc.array(fc.jsonValue({ maxDepth: 2 }), { minLength: 1, maxLength: 4 }).map(vs => concat(...vs.map(framedBytes))),
  // A valid frame, then garbage.
  fc.tuple(fc.jsonValue({ maxDepth: 2 }), fc.uint8Array({ minLength: 1, maxLength: 32 })).map(([v, g]) => concat(framedBytes(v), g)),
  // Hostile texts, correctly framed (invalid JSON, invalid UTF-8, deep nesting that fits).
  fc.oneof(hostileJsonText.map(t => enc.encode(t)), fc.constantFrom(...INVALID_UTF8).map(b => Uint8Array.from(b))).map(p => concat(varint(p.byteLength), p)),
  // Length prefixes: zero, at and past the limit, long and non-minimal, never terminated.
  fc.tuple(fc.constantFrom(0, 1, MAX - 1, MAX, MAX + 1, 2 ** 21, 2 ** 32, 2 ** 49), fc.uint8Array({ maxLength: 32 })).map(([n, rest]) => concat(varint(n), rest)),
  fc.tuple(fc.integer({ min: 1, max: 12 }), fc.uint8Array({ maxLength: 8 })).map(([n, rest]) => concat(new Uint8Array(n).fill(0x80), Uint8Array.from([0]), rest)),
  fc.integer({ min: 1, max: 64 }).map(n => new Uint8Array(n).fill(0xff))
).chain(b => fc.oneof(fc.constant(b), mutateBytes(fc.constant(b)))).map(b => b.subarray(0, MAX + 16))

describe('fuzz: stream framings over in-memory streams', () => {
  const watch = new ProcessWatch()
  let heapBefore = 0

  before(async () => {
    watch.start()
    heapBefore = await heapUsed()
  })

  after(async () => {
    watch.stop()
    watch.assertClean()
    await assertHeapBounded(heapBefore, 32 * 1024 * 1024, 'frame readers')
  })

  describe('FramedStream (src/p2p/framing.ts)', () => {
    it('reads back every sequence of valid frames, then a clean end', async () => {
      const values = fc.array(fc.jsonValue({ maxDepth: 3 }), { minLength: 0, maxLength: 5 })
      await checkAsync('FramedStream round trip', fc.tuple(values, cuts, wait), 400, async ([vs, cs, ms]) => {
        const bytes = concat(...vs.map(framedBytes))
        fc.pre(bytes.byteLength <= MAX + 16)
        const { out, inb } = await deliver(splitAt(bytes, cs), true, ms)
        try {
          const got = await readFramed(new FramedStream(inb, MAX))
          const sent = JSON.parse(JSON.stringify(vs)) as unknown[]
          // A `null` frame reads as the end (see modelFramed).
          assert.deepEqual(got.frames, sent.includes(null) ? sent.slice(0, sent.indexOf(null)) : sent)
          assertEnd(got.end, null)
        } finally {
          release(out, inb)
        }
      })
    })

    it('answers random, hostile and edited bytes exactly as the framing contract says', async () => {
      await checkAsync('FramedStream hostile bytes', fc.tuple(framedInput, cuts, wait), 1000, async ([bytes, cs, ms]) => {
        const want = modelFramed(bytes, MAX)
        const { out, inb } = await deliver(splitAt(bytes, cs), true, ms)
        try {
          const got = await readFramed(new FramedStream(inb, MAX))
          assert.ok(jsonEqual(got.frames, want.frames), `frames ${describeValue(got.frames)}, expected ${describeValue(want.frames)}`)
          assertEnd(got.end, want.end, want.orEnd)
        } finally {
          release(out, inb)
        }
      })
    })

    it('refuses more bytes than a frame may hold as frame_too_large, whatever they are', async () => {
      const big = fc.tuple(fc.integer({ min: MAX + 17, max: 64 * 1024 }), fc.nat({ max: 255 })).map(([n, b]) => new Uint8Array(n).fill(b))
      await checkAsync('FramedStream oversized input', big, 100, async bytes => {
        const { out, inb } = await deliver([bytes])
        try {
          const got = await readFramed(new FramedStream(inb, MAX))
          // Whatever the first bytes said, more than the buffer bound arrived: the reader gives up typed.
          if (got.end !== null) assertTyped(got.end, ['frame_too_large', 'invalid_frame', 'truncated_frame'], WireError)
        } finally {
          release(out, inb)
        }
      })
    })

    it('write refuses a frame over its limit with a typed error and sends nothing', async () => {
      await checkAsync('FramedStream write limit', fc.string({ minLength: MAX, maxLength: 4 * MAX }), 100, async s => {
        const [out, inb] = await streamPair()
        try {
          await assert.rejects(new FramedStream(out, MAX).write({ s }), (err: unknown) => { assertTyped(err, ['frame_too_large'], WireError); return true })
          assert.equal(inb.readBufferLength, 0)
        } finally {
          release(out, inb)
        }
      })
    })

    describe('regressions', () => {
      it('returns null when the remote closes cleanly before a frame began', async () => {
        const { out, inb } = await deliver([])
        try {
          assert.equal(await new FramedStream(inb, MAX).read(AbortSignal.timeout(READ_TIMEOUT_MS)), null)
        } finally {
          release(out, inb)
        }
      })

      it('returns null after the last whole frame when the remote closes', async () => {
        const { out, inb } = await deliver([framedBytes({ a: 1 })])
        try {
          const f = new FramedStream(inb, MAX)
          assert.deepEqual(await f.read(AbortSignal.timeout(READ_TIMEOUT_MS)), { a: 1 })
          assert.equal(await f.read(AbortSignal.timeout(READ_TIMEOUT_MS)), null)
        } finally {
          release(out, inb)
        }
      })

      it('sees the end of a stream whose remote closed before the first read', async () => {
        // The frame and the close have both arrived before the reader exists.
        const { out, inb } = await deliver([framedBytes({ a: 1 })], true, 20)
        try {
          const f = new FramedStream(inb, MAX)
          assert.deepEqual(await f.read(AbortSignal.timeout(READ_TIMEOUT_MS)), { a: 1 })
          const end = f.read(AbortSignal.timeout(READ_TIMEOUT_MS))
          end.catch(() => {})
          assert.equal(await deadline(end, 1000, 'the read after the last frame'), null)
        } finally {
          release(out, inb)
        }
      })

      it('throws WireError truncated_frame for a frame cut off by the end of the stream', async () => {
        // A prefix announcing 5 bytes, then 2 of them, then a clean close.
        const { out, inb } = await deliver([Uint8Array.from([5, 0x7b, 0x7d])])
        try {
          await assert.rejects(new FramedStream(inb, MAX).read(AbortSignal.timeout(READ_TIMEOUT_MS)), (err: unknown) => { assertTyped(err, ['truncated_frame'], WireError); return true })
        } finally {
          release(out, inb)
        }
      })

      it('refuses a length prefix longer than any allowed frame at once, without waiting for more bytes', async () => {
        // 16 continuation bytes: no varint this long describes a frame of at most MAX bytes. The stream stays open.
        const { out, inb } = await deliver([new Uint8Array(16).fill(0xff)], false)
        try {
          const read = new FramedStream(inb, MAX).read(AbortSignal.timeout(READ_TIMEOUT_MS))
          read.catch(() => {})
          await assert.rejects(deadline(read, 1000, 'a 16-byte length prefix'), (err: unknown) => { assertTyped(err, ['frame_too_large'], WireError); return true })
        } finally {
          release(out, inb)
        }
      })
    })
  })

  describe('BlobFrameReader (src/p2p/blob-messages.ts)', () => {
    const serverOpts = { maxControlBytes: MAX_BLOB_REQUEST_BYTES, maxDataBytes: 0 }
    const clientOpts = { maxControlBytes: MAX_BLOB_CONTROL_BYTES, maxDataBytes: MAX_BLOB_CHUNK_BYTES, highWaterMark: 4 * 1024 * 1024 }
    /** The server reader buffers at most two frames' worth: inputs stay below, so the model is exact. */
    const SERVER_INPUT_MAX = 2 * (MAX_BLOB_REQUEST_BYTES + 1 + 5)

    const controlBytes = fc.oneof(blobControl, blobRequest).map(f => encodeControlFrame(f as any))
    const dataBytes = fc.uint8Array({ maxLength: 2048 }).map(encodeDataFrame)
    const blobInput = (withData: boolean): fc.Arbitrary<Uint8Array> => fc.oneof(
      fc.uint8Array({ maxLength: 64 }),
      fc.uint8Array({ maxLength: 4096 }),
      fc.array(withData ? fc.oneof(controlBytes, dataBytes) : controlBytes, { minLength: 1, maxLength: 4 }).map(fs => concat(...fs)),
      fc.tuple(controlBytes, fc.uint8Array({ minLength: 1, maxLength: 16 })).map(([f, g]) => concat(f, g)),
      // A kind byte other than 0 and 1, a zero length, lengths at and past each limit, long prefixes.
      fc.tuple(fc.constantFrom(0, 1, 2, 3, 4096, 4097, 4098, 8193, 8194, MAX_BLOB_CHUNK_BYTES + 1, MAX_BLOB_CHUNK_BYTES + 2, 2 ** 34), fc.nat({ max: 255 }), fc.uint8Array({ maxLength: 32 }))
        .map(([n, kind, rest]) => concat(varint(n), Uint8Array.from([kind]), rest)),
      fc.integer({ min: 1, max: 12 }).map(n => concat(new Uint8Array(n).fill(0x80), Uint8Array.from([1, 0]))),
      fc.oneof(hostileJsonText.map(t => enc.encode(t)), fc.constantFrom(...INVALID_UTF8).map(b => Uint8Array.from(b))).map(p => concat(varint(p.byteLength + 1), Uint8Array.from([0]), p))
    ).chain(b => fc.oneof(fc.constant(b), mutateBytes(fc.constant(b))))

    async function runBlob (bytes: Uint8Array, cs: number[], opts: typeof serverOpts | typeof clientOpts, waitMs = 0): Promise<void> {
      const want = modelBlob(bytes, opts)
      const { out, inb } = await deliver(splitAt(bytes, cs), true, waitMs)
      const reader = new BlobFrameReader(inb, opts)
      try {
        const got = await readBlob(reader)
        assert.ok(jsonEqual(got.frames, want.frames), `frames ${describeValue(got.frames)}, expected ${describeValue(want.frames)}`)
        assertEnd(got.end, want.end)
      } finally {
        reader.dispose()
        release(out, inb)
      }
    }

    it('server side (requests only, no data frames): answers hostile bytes as the model says', async () => {
      const input = blobInput(false).map(b => b.subarray(0, SERVER_INPUT_MAX))
      await checkAsync('BlobFrameReader server', fc.tuple(input, cuts, wait), 800, async ([bytes, cs, ms]) => { await runBlob(bytes, cs, serverOpts, ms) })
    })

    it('client side (control and data frames): answers hostile bytes as the model says', async () => {
      await checkAsync('BlobFrameReader client', fc.tuple(blobInput(true), cuts, wait), 800, async ([bytes, cs, ms]) => { await runBlob(bytes, cs, clientOpts, ms) })
    })

    it('round-trips data frames at every varint boundary of their length', async () => {
      for (const n of [0, 1, 126, 127, 128, 16382, 16383, 16384, 65535, 65536, MAX_BLOB_CHUNK_BYTES - 1, MAX_BLOB_CHUNK_BYTES]) {
        const data = new Uint8Array(n).map((_, i) => i * 7)
        const bytes = concat(encodeDataFrame(data), encodeControlFrame({ t: 'end' }))
        assert.deepEqual(modelBlob(bytes, clientOpts), { frames: [{ kind: 'data', bytes: data }, { kind: 'control', value: { t: 'end' } }], end: null })
        await runBlob(bytes, [], clientOpts)
      }
    })

    it('a server reader refuses a peer that sends far more than one request', async () => {
      await checkAsync('BlobFrameReader flood', fc.integer({ min: SERVER_INPUT_MAX + 1, max: 256 * 1024 }), 50, async n => {
        const { out, inb } = await deliver([new Uint8Array(n).fill(0x41)])
        const reader = new BlobFrameReader(inb, serverOpts)
        try {
          const got = await readBlob(reader)
          assert.notEqual(got.end, null)
          assertTyped(got.end, ['frame_too_large', 'invalid_frame'], WireError)
        } finally {
          reader.dispose()
          release(out, inb)
        }
      })
    })
  })
})
