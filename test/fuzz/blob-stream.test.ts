/**
 * Fuzzing `/shepherd/blob/2.0.0` (src/p2p/blob-protocol.ts) between real libp2p hosts on
 * loopback, with a real file served from a temp directory.
 *
 * Server side: raw streams carry random bytes, hostile texts, valid requests (for the served
 * file at any offset, with the right or a wrong digest, or for files it does not have), broken
 * and mutated requests, data frames and truncated frames. A stream that closes before a request
 * is closed; one without a valid request is reset and counted once as a violation; a valid one
 * gets the header, exactly the file's bytes from the offset, and `end`, or the one error frame
 * its request deserves. Client side: `openBlob` against a hostile host resolves only on a valid
 * header and yields only bytes the host announced, or fails with a `BlobTransferError` or
 * `WireError`. No unhandled rejection, no leaked stream, bounded heap.
 *
 *   node --import tsx --test test/fuzz/blob-stream.test.ts   (FUZZ_SEED=<n> replays)
 */
import '../../src/polyfill.js'
import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { createHash, randomBytes } from 'node:crypto'
import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import fc from 'fast-check'
import {
  BLOB_PROTOCOL, encodeControlFrame, encodeDataFrame, isBlobControl, isBlobRequest, MAX_BLOB_CHUNK_BYTES, MAX_BLOB_CONTROL_BYTES, MAX_BLOB_REQUEST_BYTES,
  type BlobRequestFrame
} from '../../src/p2p/blob-messages.js'
import { BlobService, BlobTransferError, openBlob } from '../../src/p2p/blob-protocol.js'
import { WireError } from '../../src/errors.js'
import { logSink, setLogSink } from '../../src/logger.js'
import type { Host } from '../../src/p2p/host.js'
import { assertHeapBounded, checkAsync, concat, deadline, heapUsed, ProcessWatch, until, varint } from '../support/fuzz-harness.js'
import { broken, hostileBytes, hostileJsonText, mutateBytes, mutated } from '../support/fuzz-arbitraries.js'
import { blobControl, blobRequest, blobRequestBreaks } from '../support/fuzz-messages.js'
import { modelBlob, splitAt, type BlobModelFrame } from '../support/fuzz-frames.js'
import { exchange, newHost } from '../support/fuzz-hosts.js'

const enc = new TextEncoder()
const FP = 'ab'.repeat(32)
const SIZE = 100_000
const CHUNK = 16 * 1024
const serverOpts = { maxControlBytes: MAX_BLOB_REQUEST_BYTES, maxDataBytes: 0 }
const clientOpts = { maxControlBytes: MAX_BLOB_CONTROL_BYTES, maxDataBytes: MAX_BLOB_CHUNK_BYTES }
const cuts = fc.array(fc.nat(), { maxLength: 4 })

describe('fuzz: /shepherd/blob/2.0.0 between real hosts', () => {
  const watch = new ProcessWatch()
  let server: Host, client: Host, hostile: Host
  let service: BlobService
  let dir: string
  let data: Buffer
  let digest: string
  let nextAnswer: Uint8Array[] = []
  const originalSink = logSink
  let logLines = 0
  let heapBefore = 0

  before(async () => {
    watch.start()
    setLogSink(() => { logLines++ })
    dir = await mkdtemp(join(tmpdir(), 'shepherd-fuzz-blob-'))
    data = randomBytes(SIZE)
    digest = createHash('sha256').update(data).digest('hex')
    const file = join(dir, 'm.gguf')
    await writeFile(file, data)
    ;[server, client, hostile] = await Promise.all([newHost(), newHost(), newHost()])
    service = new BlobService(server)
    await service.serve((name, fp) => name === 'm' && fp === FP ? { path: file, size: SIZE } : undefined, { chunkBytes: CHUNK, maxConcurrent: 8 })
    await hostile.handle(BLOB_PROTOCOL, stream => {
      const chunks = nextAnswer
      void (async () => {
        try {
          for (const c of chunks) if (c.byteLength > 0 && !stream.send(c)) await stream.onDrain()
          await stream.close()
        } catch {}
      })()
    }, { maxInboundStreams: 256 })
    await client.dial(server.getMultiaddrs()[0])
    await client.dial(hostile.getMultiaddrs()[0])
    heapBefore = await heapUsed()
  })

  after(async () => {
    await service?.stop()
    await Promise.all([server?.stop(), client?.stop(), hostile?.stop()])
    await rm(dir, { recursive: true, force: true })
    setLogSink(originalSink)
    console.log(`# fuzz blob protocol: ${JSON.stringify(service.stats)}; ${logLines} log lines`)
    watch.stop()
    watch.assertClean()
  })

  const openStreams = (peer: Host): number => client.getConnections(peer.peerId).flatMap(c => c.streams).filter(s => s.protocol === BLOB_PROTOCOL).length

  /** Requests for the served file: any offset around its size, the right digest, a wrong one, or none. */
  const servedRequest: fc.Arbitrary<BlobRequestFrame> = fc.record({
    v: fc.constant(1 as const),
    name: fc.constant('m'),
    fingerprint: fc.constant(FP),
    offset: fc.oneof(fc.constant(0), fc.constant(SIZE), fc.integer({ min: 0, max: SIZE + 10 }), fc.constant(SIZE + 1)),
    sha256: fc.constantFrom('right', 'wrong')
  }, { requiredKeys: ['v', 'name', 'fingerprint', 'offset'] }).map(r => {
    if (r.sha256 === undefined) return r
    return { ...r, sha256: r.sha256 === 'right' ? 'DIGEST' : 'cd'.repeat(32) }
  })

  const requestInput: fc.Arbitrary<Uint8Array> = fc.oneof(
    { arbitrary: servedRequest.map(r => encodeControlFrame(r)), weight: 4 },
    { arbitrary: blobRequest.map(r => encodeControlFrame(r)), weight: 2 },
    mutated(servedRequest).map(v => encodeControlFrame(v as BlobRequestFrame)),
    broken(blobRequest, blobRequestBreaks).map(b => encodeControlFrame(b.value as BlobRequestFrame)),
    hostileBytes,
    hostileJsonText.map(t => { const p = enc.encode(t); return concat(varint(p.byteLength + 1), Uint8Array.from([0]), p) }),
    fc.uint8Array({ maxLength: 64 }).map(encodeDataFrame),
    fc.tuple(servedRequest.map(r => encodeControlFrame(r)), fc.nat()).map(([b, n]) => b.subarray(0, n % b.byteLength)),
    fc.tuple(fc.constantFrom(0, 1, MAX_BLOB_REQUEST_BYTES + 1, MAX_BLOB_REQUEST_BYTES + 2, 2 ** 34), fc.nat({ max: 3 }), fc.uint8Array({ maxLength: 16 })).map(([n, k, rest]) => concat(varint(n), Uint8Array.from([k]), rest)),
    mutateBytes(servedRequest.map(r => encodeControlFrame(r)))
  ).map(b => replaceDigest(b))

  /** Puts the real digest where a request says DIGEST (it is only known once the file exists). */
  function replaceDigest (b: Uint8Array): Uint8Array {
    if (!Buffer.from(b).includes('"DIGEST"')) return b
    // Re-encode the request frame whole: the length prefix changes with the payload.
    const f = modelBlob(b, serverOpts).frames[0]
    if (f?.kind === 'control' && (f.value as { sha256?: string } | null)?.sha256 === 'DIGEST') return encodeControlFrame({ ...(f.value as BlobRequestFrame), sha256: digest })
    return b
  }

  /** What the server must answer a valid request with. */
  function expectedAnswer (req: BlobRequestFrame): BlobModelFrame[] {
    if (req.name !== 'm' || req.fingerprint !== FP) return [{ kind: 'control', value: { t: 'error', code: 'model_unavailable', message: `no model '${req.name}' with fingerprint ${req.fingerprint.slice(0, 12)}… here` } }]
    if (req.offset > SIZE) return [{ kind: 'control', value: { t: 'error', code: 'bad_offset', message: `offset ${req.offset} is past the end (${SIZE} bytes)` } }]
    if (req.sha256 !== undefined && req.sha256 !== digest) return [{ kind: 'control', value: { t: 'error', code: 'content_mismatch', message: 'this node holds other content under that name and fingerprint' } }]
    const body: BlobModelFrame[] = []
    for (let at = req.offset; at < SIZE; at += CHUNK) body.push({ kind: 'data', bytes: new Uint8Array(data.subarray(at, Math.min(SIZE, at + CHUNK))) })
    return [{ kind: 'control', value: { t: 'header', size: SIZE, sha256: digest } }, ...body, { kind: 'control', value: { t: 'end' } }]
  }

  async function probe (bytes: Uint8Array, cs: number[], alone: boolean): Promise<'served' | 'closed' | 'violation'> {
    const model = modelBlob(bytes.subarray(0, 2 * (MAX_BLOB_REQUEST_BYTES + 6)), serverOpts)
    const first = model.frames[0]
    const before = service.stats.violations
    const ex = await exchange(client, server.peerId, BLOB_PROTOCOL, splitAt(bytes, cs))
    if (first === undefined && model.end === null) {
      assert.equal(ex.end, 'closed', 'a stream closed before a request is closed in turn')
      assert.equal(ex.bytes.byteLength, 0)
      return 'closed'
    }
    if (first === undefined || first.kind !== 'control' || !isBlobRequest(first.value)) {
      assert.equal(ex.end, 'reset', `a stream without a valid request ended ${ex.end}`)
      assert.equal(ex.bytes.byteLength, 0)
      if (alone) await until('the violation to be counted', () => service.stats.violations === before + 1, 2000)
      return 'violation'
    }
    assert.equal(ex.end, 'closed', `a valid request was answered by ${ex.end}`)
    const answer = modelBlob(ex.bytes, clientOpts)
    assert.equal(answer.end, null)
    const want = expectedAnswer(first.value)
    // Data may arrive re-chunked: compare the control frames in order and the body bytes whole.
    const controls = (fs: BlobModelFrame[]): unknown[] => fs.filter(f => f.kind === 'control').map(f => (f as { value: unknown }).value)
    const body = (fs: BlobModelFrame[]): Uint8Array => concat(...fs.filter(f => f.kind === 'data').map(f => (f as { bytes: Uint8Array }).bytes))
    assert.deepEqual(controls(answer.frames), controls(want))
    assert.ok(Buffer.from(body(answer.frames)).equals(Buffer.from(body(want))), 'the body is the file from the offset')
    if (alone) assert.equal(service.stats.violations, before)
    return 'served'
  }

  it('serves each valid request exactly, closes an empty stream, and resets every other one', async () => {
    await checkAsync('blob server stream', fc.tuple(requestInput, cuts), 500, async ([b, cs]) => { await probe(b, cs, true) })
    await stillServing()
  })

  it('keeps every answer right when many hostile and valid streams arrive at once', async () => {
    await checkAsync('blob server burst', fc.array(fc.tuple(requestInput, cuts), { minLength: 4, maxLength: 8 }), 25, async cases => {
      const before = service.stats.violations
      const outcomes = await Promise.all(cases.map(async ([b, cs]) => await probe(b, cs, false)))
      const expected = outcomes.filter(o => o === 'violation').length
      await until(`${expected} violations to be counted`, () => service.stats.violations === before + expected, 2000)
    })
    await stillServing()
  })

  async function stillServing (): Promise<void> {
    const dl = await openBlob(client, server.peerId.toString(), { name: 'm', fingerprint: FP, offset: 0 })
    const parts: Uint8Array[] = []
    for await (const chunks of dl.chunks) parts.push(...chunks)
    assert.ok(Buffer.concat(parts).equals(data))
  }

  const answerBytes: fc.Arbitrary<Uint8Array> = fc.oneof(
    // A header, some data, an end: sizes that match or not.
    fc.tuple(fc.integer({ min: 0, max: 64 }), fc.array(fc.uint8Array({ maxLength: 24 }), { maxLength: 4 }), fc.boolean()).map(([size, parts, end]) =>
      concat(encodeControlFrame({ t: 'header', size, sha256: FP }), ...parts.map(encodeDataFrame), ...(end ? [encodeControlFrame({ t: 'end' })] : []))),
    fc.array(fc.oneof(blobControl.map(f => encodeControlFrame(f)), fc.uint8Array({ maxLength: 32 }).map(encodeDataFrame)), { minLength: 1, maxLength: 5 }).map(fs => concat(...fs)),
    fc.tuple(blobControl.map(f => encodeControlFrame(f)), fc.oneof(hostileBytes, fc.uint8Array({ maxLength: 16 }))).map(([f, g]) => concat(f, g)),
    hostileBytes,
    mutated(blobControl).map(v => encodeControlFrame(v as any)),
    mutateBytes(fc.array(blobControl.map(f => encodeControlFrame(f)), { minLength: 1, maxLength: 3 }).map(fs => concat(...fs)))
  )

  it('a client facing a hostile host gets exactly the announced bytes or a typed error, and leaks no stream', async () => {
    const peer = hostile.peerId.toString()
    const req = { name: 'm', fingerprint: FP, offset: 0 }
    await checkAsync('blob client', fc.tuple(answerBytes, cuts), 500, async ([bytes, cs]) => {
      nextAnswer = splitAt(bytes, cs)
      const { frames } = modelBlob(bytes, clientOpts)
      const first = frames[0]
      const header = first?.kind === 'control' && isBlobControl(first.value) && first.value.t === 'header' ? first.value : undefined
      const typed = (err: unknown): boolean => err instanceof BlobTransferError || err instanceof WireError
      try {
        let dl
        try {
          dl = await deadline(openBlob(client, peer, req, { headerTimeoutMs: 3000, idleTimeoutMs: 3000 }), 8000, 'openBlob')
        } catch (err) {
          assert.ok(typed(err), `openBlob threw ${(err as Error)?.name}: ${(err as Error)?.message}`)
          assert.equal(header, undefined, `a valid header was refused: ${(err as Error).message}`)
          if (first?.kind === 'control' && isBlobControl(first.value) && first.value.t === 'error') {
            assert.ok(err instanceof BlobTransferError)
            assert.equal(err.code, ['model_unavailable', 'busy', 'bad_offset', 'content_mismatch', 'internal_error'].includes(first.value.code) ? first.value.code : 'remote_error')
          }
          return
        }
        assert.ok(header !== undefined, `resolved without a header: ${JSON.stringify(first)}`)
        assert.equal(dl.size, header.size)
        const got: Uint8Array[] = []
        let failed: unknown
        try {
          await deadline((async () => { for await (const chunks of dl.chunks) got.push(...chunks) })(), 8000, 'the body')
        } catch (err) {
          failed = err
        }
        const sent = concat(...frames.slice(1).filter(f => f.kind === 'data').map(f => (f as { bytes: Uint8Array }).bytes))
        const body = concat(...got)
        assert.ok(body.byteLength <= header.size, 'never more bytes than announced')
        assert.ok(Buffer.from(sent.subarray(0, body.byteLength)).equals(Buffer.from(body)), 'only bytes the host sent, in order')
        if (failed !== undefined) assert.ok(typed(failed), `the body threw ${(failed as Error)?.name}: ${(failed as Error)?.message}`)
        else assert.equal(body.byteLength, header.size, 'a body that ended cleanly is complete')
      } finally {
        await until('the client to release its blob streams', () => openStreams(hostile) === 0, 3000)
      }
    })
  })

  it('keeps the heap bounded over the whole run', async () => {
    await assertHeapBounded(heapBefore, 32 * 1024 * 1024, 'blob protocol')
  })

  describe('regressions', () => {
    it('maps an error code named like an Object.prototype key to remote_error with a numeric status', async () => {
      // Both match the control schema (^[a-z_]{1,64}$); `code in REMOTE_CODES` is true for them.
      for (const code of ['__proto__', 'constructor']) {
        nextAnswer = [encodeControlFrame({ t: 'error', code, message: 'hostile' })]
        await assert.rejects(openBlob(client, hostile.peerId.toString(), { name: 'm', fingerprint: FP, offset: 0 }), (err: unknown) => {
          assert.ok(err instanceof BlobTransferError)
          assert.equal(err.code, 'remote_error', `code ${code} became ${String(err.code)}`)
          assert.equal(typeof err.status, 'number', `code ${code} gave the status ${String(err.status)}`)
          assert.equal(err.status, 502)
          return true
        })
      }
    })
  })
})
