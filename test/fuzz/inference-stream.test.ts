/**
 * Fuzzing `/shepherd/openai/2.0.0` (src/p2p/inference.ts) between real libp2p hosts on loopback
 * (tcp + noise + yamux).
 *
 * Server side: raw streams carry random bytes, whole valid requests (call head, body blocks,
 * end), runs of them, mutated and broken ones, lying sizes, truncated frames and valid requests
 * followed by garbage, in random chunks. Every complete valid request is answered in turn with
 * exactly the frames its handler implies; a stream of nothing but valid requests is closed when
 * the requester closes it; any other is reset after the answers to the valid requests before the
 * first bad frame, and counted once as a violation.
 * Client side: a hostile host answers `request()` with well-formed and broken frames; the client
 * resolves with a well-formed reply or rejects with a `ShepherdError`, nothing else.
 * Throughout: no unhandled rejection, bounded heap, the service keeps serving.
 *
 *   node --import tsx --test test/fuzz/inference-stream.test.ts   (FUZZ_SEED=<n> replays)
 */
import '../../src/polyfill.js'
import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import fc from 'fast-check'
import { InferenceService, RemoteError, type RelayReply, type RelayRequest } from '../../src/p2p/inference.js'
import { decodeRequestFrame, decodeResponseFrame, FRAME_TYPE, type CallHead, type ResponseFrame } from '../../src/p2p/inference-messages.js'
import { INFERENCE_PROTOCOL, MAX_INFERENCE_REQUEST_BYTES, MAX_INFERENCE_RESPONSE_BYTES } from '../../src/p2p/constants.js'
import { ModelNotFoundError, ShepherdError, WireError } from '../../src/errors.js'
import type { Host } from '../../src/p2p/host.js'
import { logSink, setLogSink } from '../../src/logger.js'
import { assertHeapBounded, checkAsync, concat, deadline, heapUsed, ProcessWatch, until, varint } from '../support/fuzz-harness.js'
import { hostileBytes, mutateBytes } from '../support/fuzz-arbitraries.js'
import { splitAt } from '../support/fuzz-frames.js'
import { exchange, newHost } from '../support/fuzz-hosts.js'
import { badResponseFrame, callHead, frame, jsonFrame, modelRawFramed, responseFrame, validRequest } from '../support/fuzz-inference.js'

const enc = new TextEncoder()
type Behaviour = 'result' | 'stream' | 'passthrough' | 'typed_error' | 'crash'
const BEHAVIOURS: Behaviour[] = ['result', 'stream', 'passthrough', 'typed_error', 'crash']

/** What the test handler does with a request: chosen by its model name, so the expected answer is known. */
function behaviourOf (model: string): Behaviour {
  let h = 0
  for (const ch of model) h = (h * 31 + ch.codePointAt(0)!) % 1_000_003
  return BEHAVIOURS[h % BEHAVIOURS.length]
}

/** The frames (bodies, type byte first) the service must send for `head`, given the handler below. */
function expectedFrames (head: CallHead): Uint8Array[] {
  const body = (f: Uint8Array): Uint8Array => f.subarray(varint(f.byteLength).byteLength) // drop the prefix (all frames here are short)
  const strip = (f: Uint8Array): Uint8Array => { const p = modelRawFramed(f, MAX_INFERENCE_RESPONSE_BYTES); return p.bodies[0] ?? body(f) }
  switch (behaviourOf(head.model)) {
    case 'result': return [strip(jsonFrame(FRAME_TYPE.result, { op: head.op, model: head.model, size: head.size }))]
    case 'stream': return [...Array.from({ length: head.model.length % 4 }, (_, i) => strip(jsonFrame(FRAME_TYPE.chunk, { i }))), strip(frame(FRAME_TYPE.end))]
    case 'passthrough': return [strip(jsonFrame(FRAME_TYPE.head, { status: 201, headers: { 'content-type': 'audio/mpeg' } })), strip(frame(FRAME_TYPE.data, enc.encode('hello'))), strip(frame(FRAME_TYPE.end))]
    case 'typed_error': {
      const e = new ModelNotFoundError(head.model)
      return [strip(jsonFrame(FRAME_TYPE.error, { status: 404, error: { message: e.message, type: e.type, param: 'model', code: 'model_not_found' } }))]
    }
    case 'crash': return [strip(jsonFrame(FRAME_TYPE.error, { status: 500, error: { message: 'Internal error on the host node', type: 'server_error', param: null, code: 'internal_error' } }))]
  }
}

async function handler (req: RelayRequest): Promise<RelayReply> {
  switch (behaviourOf(req.model)) {
    case 'result': return { kind: 'result', data: enc.encode(JSON.stringify({ op: req.op, model: req.model, size: req.body.byteLength })) }
    case 'stream': return { kind: 'stream', chunks: (async function * () { for (let i = 0; i < req.model.length % 4; i++) yield enc.encode(JSON.stringify({ i })) })() }
    case 'passthrough': return { kind: 'passthrough', status: 201, headers: { 'content-type': 'audio/mpeg' }, body: (async function * () { yield enc.encode('hello') })() }
    case 'typed_error': throw new ModelNotFoundError(req.model)
    case 'crash': throw new TypeError('handler bug')
  }
}

/**
 * The protocol's contract for a requester's bytes (then a close): the complete valid requests,
 * in order, up to the first thing that breaks it, and whether the stream was clean (nothing but
 * complete requests, at least one).
 */
function modelServer (bytes: Uint8Array): { requests: CallHead[], clean: boolean } {
  const { bodies, end } = modelRawFramed(bytes, MAX_INFERENCE_REQUEST_BYTES)
  const requests: CallHead[] = []
  const decode = (b: Uint8Array): ReturnType<typeof decodeRequestFrame> | null => { try { return decodeRequestFrame(b) } catch { return null } }
  let i = 0
  for (;;) {
    if (i === bodies.length) return { requests, clean: end === null && requests.length > 0 }
    const first = decode(bodies[i++])
    if (first?.t !== 'call') return { requests, clean: false }
    let got = 0
    for (;;) {
      if (i === bodies.length) return { requests, clean: false }
      const f = decode(bodies[i++])
      if (f?.t === 'end') break
      if (f?.t !== 'data') return { requests, clean: false }
      got += f.bytes.byteLength
      if (got > first.head.size) return { requests, clean: false }
    }
    if (got !== first.head.size) return { requests, clean: false }
    requests.push(first.head)
  }
}

const call = (head: CallHead): Uint8Array => jsonFrame(FRAME_TYPE.call, head)
const valid = validRequest.map(r => r.bytes)

/** Request bytes a peer might send: valid, broken, lying about their size, raw garbage, cut off, followed by garbage. */
const requestBytes: fc.Arbitrary<Uint8Array> = fc.oneof(
  valid,
  fc.array(valid, { minLength: 2, maxLength: 4 }).map(bs => concat(...bs)),
  hostileBytes,
  mutateBytes(valid),
  fc.tuple(valid, fc.nat()).map(([b, n]) => b.subarray(0, n % b.byteLength)),
  fc.tuple(valid, fc.uint8Array({ minLength: 1, maxLength: 64 })).map(([b, g]) => concat(b, g)),
  fc.tuple(fc.array(valid, { minLength: 1, maxLength: 3 }), hostileBytes).map(([bs, g]) => concat(...bs, g)),
  // A size that lies: more or fewer bytes than announced.
  fc.tuple(callHead, fc.integer({ min: 0, max: 700 })).map(([h, n]) => concat(call(h), ...(n > 0 ? [frame(FRAME_TYPE.data, new Uint8Array(n))] : []), frame(FRAME_TYPE.end))),
  // Frames out of place: data or end first, a second call inside a body, response frames.
  fc.tuple(fc.constantFrom(FRAME_TYPE.data, FRAME_TYPE.end, FRAME_TYPE.result, FRAME_TYPE.chunk, FRAME_TYPE.error, FRAME_TYPE.head, 0, 99), fc.uint8Array({ maxLength: 8 })).map(([t, b]) => frame(t, b)),
  fc.tuple(callHead.filter(h => h.size > 0), callHead).map(([a, b]) => concat(call(a), call(b))),
  fc.tuple(fc.constantFrom(0, 1, MAX_INFERENCE_REQUEST_BYTES, MAX_INFERENCE_REQUEST_BYTES + 1, 2 ** 32), fc.uint8Array({ maxLength: 16 })).map(([n, rest]) => concat(varint(n), rest))
)

/** Response bytes a hostile host might send back. */
const responseBytes: fc.Arbitrary<Uint8Array> = fc.oneof(
  fc.array(responseFrame, { minLength: 1, maxLength: 4 }).map(fs => concat(...fs)),
  fc.tuple(fc.array(responseFrame, { maxLength: 3 }), badResponseFrame).map(([fs, b]) => concat(...fs, b)),
  hostileBytes,
  fc.tuple(responseFrame, fc.nat()).map(([b, n]) => b.subarray(0, n % b.byteLength)),
  mutateBytes(fc.array(responseFrame, { minLength: 1, maxLength: 3 }).map(fs => concat(...fs)))
)

const cuts = fc.array(fc.nat(), { maxLength: 4 })
const okRequest: RelayRequest = { id: 'fuzz-1', op: 'chat', stream: false, model: 'ok', body: enc.encode('{"model":"ok","messages":[]}') }

function decodedOrNull (b: Uint8Array | undefined): ResponseFrame | null {
  if (b === undefined) return null
  try { return decodeResponseFrame(b) } catch { return null }
}

describe('fuzz: /shepherd/openai/2.0.0 between real hosts', () => {
  const watch = new ProcessWatch()
  let server: Host, client: Host, hostile: Host
  let service: InferenceService
  let requester: InferenceService
  const violations: string[] = []
  /** What the hostile host answers the next request with. */
  let nextAnswer: Uint8Array[] = []
  let heapBefore = 0

  const originalSink = logSink
  let logLines = 0

  before(async () => {
    watch.start()
    // Every violation logs a warning: counted, not printed.
    setLogSink(() => { logLines++ })
    ;[server, client, hostile] = await Promise.all([newHost(), newHost(), newHost()])
    service = new InferenceService(server)
    await service.serve(async req => await handler(req), { onViolation: (_peer, reason) => { violations.push(reason) } })
    await hostile.handle(INFERENCE_PROTOCOL, stream => {
      const chunks = nextAnswer
      void (async () => {
        try {
          for (const c of chunks) if (c.byteLength > 0 && !stream.send(c)) await stream.onDrain()
          await stream.close()
        } catch {}
      })()
    }, { maxInboundStreams: 256 })
    requester = new InferenceService(client)
    await client.dial(server.getMultiaddrs()[0])
    await client.dial(hostile.getMultiaddrs()[0])
    heapBefore = await heapUsed()
  })

  after(async () => {
    await Promise.all([server?.stop(), client?.stop(), hostile?.stop()])
    setLogSink(originalSink)
    console.log(`# fuzz inference protocol: ${service.stats.violations} violations, ${service.stats.served} served, ${service.stats.failed} failed, ${logLines} log lines`)
    watch.stop()
    watch.assertClean()
  })

  async function stillServing (): Promise<void> {
    const reply = await requester.request(server.peerId.toString(), { ...okRequest, model: 'still-serving-a' }, { firstByteTimeoutMs: 5000 })
    assert.ok(reply.kind === 'result' || reply.kind === 'stream' || reply.kind === 'passthrough')
  }

  /**
   * Sends `bytes` in chunks and checks the service's answer against what its frames deserve;
   * returns whether it was a violation. Alone, it also checks the violation was counted once.
   */
  async function probe (bytes: Uint8Array, cs: number[], alone = true): Promise<boolean> {
    const model = modelServer(bytes)
    const before = service.stats.violations
    const ex = await exchange(client, server.peerId, INFERENCE_PROTOCOL, splitAt(bytes, cs))
    const reply = modelRawFramed(ex.bytes, MAX_INFERENCE_RESPONSE_BYTES)
    for (const f of reply.bodies) assert.ok(decodedOrNull(f) != null, `invalid response frame ${Buffer.from(f).toString('hex')}`)
    const expected = model.requests.flatMap(expectedFrames).map(b => Buffer.from(b).toString('hex'))
    const got = reply.bodies.map(b => Buffer.from(b).toString('hex'))
    if (model.clean) {
      assert.equal(ex.end, 'closed', `valid requests were answered by ${ex.end}`)
      assert.equal(reply.end, null)
      assert.deepEqual(got, expected)
      if (alone) assert.equal(service.stats.violations, before)
      return false
    }
    assert.equal(ex.end, 'reset', `a stream with a bad frame ended ${ex.end} after ${ex.ms.toFixed(0)} ms`)
    assert.deepEqual(got, expected.slice(0, got.length), 'answers before the bad frame, in order')
    if (alone) {
      await until('the violation to be counted', () => service.stats.violations === before + 1, 2000)
      assert.ok(violations.length > 0 && violations[violations.length - 1].length > 0)
    }
    return true
  }

  it('answers every valid request in turn and resets a stream at its first bad frame, one violation each', async () => {
    await checkAsync('inference server stream 2.0.0', fc.tuple(requestBytes, cuts), 600, async ([b, cs]) => { await probe(b, cs) })
    await stillServing()
  })

  it('keeps every answer right when hostile and valid streams arrive at once', async () => {
    await checkAsync('inference server burst', fc.array(fc.tuple(requestBytes, cuts), { minLength: 8, maxLength: 24 }), 25, async cases => {
      const before = service.stats.violations
      const outcomes = await Promise.all(cases.map(async ([b, cs]) => await probe(b, cs, false)))
      const expected = outcomes.filter(Boolean).length
      await until(`${expected} violations to be counted`, () => service.stats.violations === before + expected, 2000)
    })
    await stillServing()
  })

  /** Inference streams the client holds open towards the hostile host. */
  const openStreams = (): number => client.getConnections(hostile.peerId).flatMap(c => c.streams).filter(s => s.protocol === INFERENCE_PROTOCOL).length

  it('a client facing a hostile host gets a well-formed reply or a typed error, never anything else, and leaks no stream', async () => {
    await checkAsync('inference client', fc.tuple(responseBytes, cuts), 800, async ([bytes, cs]) => {
      try {
        await clientCase(bytes, cs)
      } finally {
        // Whatever the host sent, the request's stream is closed or reset afterwards: none is left open.
        await until('the client to release its inference streams', () => openStreams() === 0, 3000)
      }
    })
  })

  async function clientCase (bytes: Uint8Array, cs: number[]): Promise<void> {
    const target = hostile.peerId.toString()
    nextAnswer = splitAt(bytes, cs)
    const model = modelRawFramed(bytes, MAX_INFERENCE_RESPONSE_BYTES)
    const rawFirst = model.bodies[0]
    const first = decodedOrNull(rawFirst)
    let reply: RelayReply
    try {
      reply = await deadline(requester.request(target, okRequest, { firstByteTimeoutMs: 3000, connectTimeoutMs: 3000 }), 8000, 'request()')
    } catch (err) {
      assert.ok(err instanceof ShepherdError, `request() threw ${(err as Error)?.name}: ${(err as Error)?.message}`)
      if (rawFirst !== undefined && first == null) assert.ok(err instanceof WireError && err.code === 'invalid_frame', `${err.name} ${err.code}`)
      if (first?.t === 'error') {
        assert.ok(err instanceof RemoteError)
        assert.equal(err.status, first.status)
      }
      assert.ok(first?.t !== 'result', `a valid result frame was refused: ${err.message}`)
      if (first?.t === 'data') assert.ok(err instanceof WireError, `'data' before 'head' refused as ${err.name} ${err.code}`)
      return
    }
    // A reply may begin with result, chunk, head or end (an empty stream); `data` before `head` breaks the protocol.
    assert.ok(first != null && first.t !== 'error' && first.t !== 'data', `resolved on first frame ${JSON.stringify(first)}`)
    if (reply.kind === 'result') {
      assert.ok(first.t === 'result')
      assert.deepEqual(Buffer.from(reply.data), Buffer.from(first.bytes))
    } else {
      // Drain the rest: items or a typed error, never anything else, and never a hang.
      const items = reply.kind === 'stream' ? reply.chunks : reply.body
      try {
        await deadline((async () => { for await (const _ of items as AsyncIterable<unknown>) { /* drain */ } })(), 8000, 'draining the reply')
      } catch (err) {
        assert.ok(err instanceof ShepherdError, `the reply body threw ${(err as Error)?.name}: ${(err as Error)?.message}`)
      }
    }
  }

  it('keeps the heap bounded over the whole run', async () => {
    await assertHeapBounded(heapBefore, 32 * 1024 * 1024, 'inference protocol')
  })

  describe('regressions', () => {
    it('resets a stream whose length prefix can never end at once, not after the request timeout', async () => {
      const before = service.stats.violations
      // 16 continuation bytes: no request frame (at most 256 KiB + 1, a 3-byte prefix) starts like this. The stream stays open.
      const ex = await exchange(client, server.peerId, INFERENCE_PROTOCOL, [new Uint8Array(16).fill(0xff)], { close: false, ms: 3000 })
      assert.equal(ex.end, 'reset', `the stream ended ${ex.end} after ${ex.ms.toFixed(0)} ms`)
      assert.ok(ex.ms < 2000, `reset after ${ex.ms.toFixed(0)} ms`)
      assert.equal(service.stats.violations, before + 1)
      await stillServing()
    })

    it('times out a request whose body stalls, and counts it once', async () => {
      const other = await newHost()
      const quick = new InferenceService(other, { requestReadTimeoutMs: 300 })
      await quick.serve(async req => await handler(req))
      try {
        await client.dial(other.getMultiaddrs()[0])
        // Announces 100 bytes, sends 10, then nothing: never answered, reset once the read times out.
        const head: CallHead = { v: 2, id: 'stall', op: 'chat', model: 'm', stream: false, size: 100 }
        const ex = await exchange(client, other.peerId, INFERENCE_PROTOCOL, [concat(call(head), frame(FRAME_TYPE.data, new Uint8Array(10)))], { close: false, ms: 5000 })
        assert.equal(ex.end, 'reset', `the stream ended ${ex.end} after ${ex.ms.toFixed(0)} ms`)
        assert.equal(ex.bytes.byteLength, 0)
        assert.ok(ex.ms < 3000, `reset after ${ex.ms.toFixed(0)} ms`)
        assert.equal(quick.stats.violations, 1)
      } finally {
        await quick.stop()
        await other.stop()
      }
    })

    it('closes the stream of a reply that ends before its first chunk (an empty stream leaks nothing)', async () => {
      nextAnswer = [frame(FRAME_TYPE.end)]
      for (let i = 0; i < 20; i++) {
        const reply = await requester.request(hostile.peerId.toString(), okRequest, { firstByteTimeoutMs: 3000 })
        assert.equal(reply.kind, 'stream')
        if (reply.kind === 'stream') for await (const _ of reply.chunks) assert.fail('no chunk was sent')
      }
      await until('the 20 streams to be closed', () => openStreams() === 0, 3000)
    })

    it('refuses a reply that begins with data before any head as a protocol violation', async () => {
      nextAnswer = [frame(FRAME_TYPE.data, enc.encode('hi')), frame(FRAME_TYPE.end)]
      await assert.rejects(requester.request(hostile.peerId.toString(), okRequest, { firstByteTimeoutMs: 3000 }), (err: unknown) => err instanceof WireError)
      await until('the stream to be released', () => openStreams() === 0, 3000)
    })
  })
})
