/**
 * Fuzzing `/shepherd/openai/1.1.0` and `/1.0.0` (src/p2p/inference.ts) between real libp2p
 * hosts on loopback (tcp + noise + yamux).
 *
 * Server side: raw streams carry random bytes, hostile texts, valid request frames, runs of
 * them, mutated and broken ones, truncated frames and valid frames followed by garbage, in random
 * chunks. On 1.0.0 a stream whose first frame is a valid request is answered with exactly the
 * frames its handler implies, then closed; any other is reset, counted once as a violation, and
 * answered nothing. On 1.1.0 every valid request is answered in turn; a stream of nothing but
 * valid requests is closed when the requester closes it, any other is reset after the answers to
 * the valid requests before the first bad frame, and counted once as a violation.
 * Client side: a hostile host answers `request()` with the same kinds of bytes; the client
 * resolves with a well-formed reply or rejects with a `ShepherdError`, nothing else.
 * Throughout: no unhandled rejection, bounded heap, the service keeps serving.
 *
 *   node --import tsx --test test/fuzz/inference-stream.test.ts   (FUZZ_SEED=<n> replays)
 */
import '../../src/polyfill.js'
import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import fc from 'fast-check'
import { InferenceService, RemoteError, type InferenceReply } from '../../src/p2p/inference.js'
import { isInferenceRequest, isInferenceResponse, type InferenceRequestFrame, type InferenceResponseFrame } from '../../src/p2p/inference-messages.js'
import { INFERENCE_PROTOCOL, INFERENCE_PROTOCOL_SINGLE, MAX_INFERENCE_REQUEST_BYTES, MAX_INFERENCE_RESPONSE_BYTES } from '../../src/p2p/constants.js'
import { ModelNotFoundError, ShepherdError, WireError } from '../../src/errors.js'
import type { Host } from '../../src/p2p/host.js'
import { logSink, setLogSink } from '../../src/logger.js'
import { assertHeapBounded, checkAsync, concat, deadline, heapUsed, ProcessWatch, until, varint } from '../support/fuzz-harness.js'
import { broken, hostileBytes, hostileJsonText, mutateBytes, mutated } from '../support/fuzz-arbitraries.js'
import { inferenceRequest, inferenceRequestBreaks, inferenceResponse, inferenceResponseBreaks } from '../support/fuzz-messages.js'
import { framedBytes, modelFramed, splitAt } from '../support/fuzz-frames.js'
import { exchange, newHost } from '../support/fuzz-hosts.js'

const enc = new TextEncoder()
type Behaviour = 'result' | 'stream' | 'passthrough' | 'typed_error' | 'crash'
const BEHAVIOURS: Behaviour[] = ['result', 'stream', 'passthrough', 'typed_error', 'crash']

/** What the test handler does with a request: chosen by its model name, so the expected answer is known. */
function behaviourOf (req: InferenceRequestFrame): Behaviour {
  let h = 0
  for (const ch of req.model) h = (h * 31 + ch.codePointAt(0)!) % 1_000_003
  return BEHAVIOURS[h % BEHAVIOURS.length]
}

/** The frames the service must send for `req`, given the handler below. */
function expectedFrames (req: InferenceRequestFrame): InferenceResponseFrame[] {
  switch (behaviourOf(req)) {
    case 'result': return [{ t: 'result', data: { op: req.op, model: req.model } }]
    case 'stream': return [...Array.from({ length: req.model.length % 4 }, (_, i) => ({ t: 'chunk' as const, data: { i } })), { t: 'end' }]
    case 'passthrough': return [{ t: 'head', status: 201, headers: { 'content-type': 'audio/mpeg' } }, { t: 'bytes', b64: Buffer.from('hello').toString('base64') }, { t: 'end' }]
    case 'typed_error': {
      const e = new ModelNotFoundError(req.model)
      return [{ t: 'error', status: 404, error: { message: e.message, type: e.type, param: 'model', code: 'model_not_found' } }]
    }
    case 'crash': return [{ t: 'error', status: 500, error: { message: 'Internal error on the host node', type: 'server_error', param: null, code: 'internal_error' } }]
  }
}

async function handler (req: InferenceRequestFrame): Promise<InferenceReply> {
  switch (behaviourOf(req)) {
    case 'result': return { kind: 'result', data: { op: req.op, model: req.model } }
    case 'stream': return { kind: 'stream', chunks: (async function * () { for (let i = 0; i < req.model.length % 4; i++) yield { i } })() }
    case 'passthrough': return { kind: 'passthrough', status: 201, headers: { 'content-type': 'audio/mpeg' }, body: (async function * () { yield enc.encode('hello') })() }
    case 'typed_error': throw new ModelNotFoundError(req.model)
    case 'crash': throw new TypeError('handler bug')
  }
}

/** Request bytes a peer might send: valid, mutated, broken, raw garbage, cut off, followed by garbage. */
const requestBytes: fc.Arbitrary<Uint8Array> = fc.oneof(
  inferenceRequest.map(framedBytes),
  mutated(inferenceRequest).map(framedBytes),
  broken(inferenceRequest, inferenceRequestBreaks).map(b => framedBytes(b.value)),
  hostileBytes,
  hostileJsonText.map(t => { const p = enc.encode(t); return concat(varint(p.byteLength), p) }),
  fc.tuple(inferenceRequest.map(framedBytes), fc.nat()).map(([b, n]) => b.subarray(0, n % b.byteLength)),
  fc.tuple(inferenceRequest.map(framedBytes), fc.uint8Array({ minLength: 1, maxLength: 64 })).map(([b, g]) => concat(b, g)),
  fc.tuple(fc.constantFrom(0, 1, MAX_INFERENCE_REQUEST_BYTES, MAX_INFERENCE_REQUEST_BYTES + 1, 2 ** 32), fc.uint8Array({ maxLength: 16 })).map(([n, rest]) => concat(varint(n), rest)),
  mutateBytes(inferenceRequest.map(framedBytes)),
  fc.array(inferenceRequest.map(framedBytes), { minLength: 2, maxLength: 4 }).map(bs => concat(...bs)),
  fc.tuple(fc.array(inferenceRequest.map(framedBytes), { minLength: 1, maxLength: 3 }), hostileBytes).map(([bs, g]) => concat(...bs, g))
)

/** Response bytes a hostile host might send back. */
const responseBytes: fc.Arbitrary<Uint8Array> = fc.oneof(
  fc.array(inferenceResponse, { minLength: 1, maxLength: 4 }).map(fs => concat(...fs.map(framedBytes))),
  fc.oneof(...inferenceResponseBreaks.map(([arb, spec]) => broken(arb, spec))).map(b => framedBytes(b.value)),
  fc.tuple(inferenceResponse, fc.array(fc.oneof(inferenceResponse, mutated(inferenceResponse)), { maxLength: 3 })).map(([f, rest]) => concat(framedBytes(f), ...rest.map(framedBytes))),
  hostileBytes,
  fc.tuple(inferenceResponse.map(framedBytes), fc.nat()).map(([b, n]) => b.subarray(0, n % b.byteLength)),
  mutateBytes(fc.array(inferenceResponse, { minLength: 1, maxLength: 3 }).map(fs => concat(...fs.map(framedBytes))))
)

const cuts = fc.array(fc.nat(), { maxLength: 4 })
const validRequest: InferenceRequestFrame = { v: 1, op: 'chat', stream: false, body: { messages: [] }, model: 'ok' }

describe('fuzz: /shepherd/openai/1.1.0 and 1.0.0 between real hosts', () => {
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
    const reply = await requester.request(server.peerId.toString(), { ...validRequest, model: 'still-serving-a' }, { firstByteTimeoutMs: 5000 })
    assert.ok(reply.kind === 'result' || reply.kind === 'stream' || reply.kind === 'passthrough')
  }

  /**
   * Sends `bytes` in chunks on `protocol` and checks the service's answer against what its
   * frames deserve; returns whether it was a violation. Alone, it also checks the violation was
   * counted once.
   */
  async function probe (bytes: Uint8Array, cs: number[], alone = true, protocol = INFERENCE_PROTOCOL_SINGLE): Promise<boolean> {
    const sent = modelFramed(bytes, MAX_INFERENCE_REQUEST_BYTES)
    const before = service.stats.violations
    const ex = await exchange(client, server.peerId, protocol, splitAt(bytes, cs))
    const reply = modelFramed(ex.bytes, MAX_INFERENCE_RESPONSE_BYTES)
    for (const f of reply.frames) assert.ok(isInferenceResponse(f), `invalid response frame ${JSON.stringify(f)}`)
    // 1.0.0 answers the first frame only; 1.1.0 every valid request up to the first bad frame.
    const considered = protocol === INFERENCE_PROTOCOL_SINGLE ? sent.frames.slice(0, 1) : sent.frames
    const bad = considered.findIndex(f => !isInferenceRequest(f))
    const valid = (bad < 0 ? considered : considered.slice(0, bad)) as InferenceRequestFrame[]
    const expected = valid.flatMap(expectedFrames)
    const clean = valid.length > 0 && (protocol === INFERENCE_PROTOCOL_SINGLE || (bad < 0 && sent.end === null))
    if (clean) {
      assert.equal(ex.end, 'closed', `valid requests were answered by ${ex.end}`)
      assert.equal(reply.end, null)
      assert.deepEqual(reply.frames, expected)
      if (alone) assert.equal(service.stats.violations, before)
      return false
    }
    assert.equal(ex.end, 'reset', `a stream with a bad frame ended ${ex.end} after ${ex.ms.toFixed(0)} ms`)
    if (protocol === INFERENCE_PROTOCOL_SINGLE) assert.equal(ex.bytes.byteLength, 0, 'no answer to a violation')
    else assert.deepEqual(reply.frames, expected.slice(0, reply.frames.length), 'answers before the bad frame, in order')
    if (alone) {
      await until('the violation to be counted', () => service.stats.violations === before + 1, 2000)
      assert.ok(violations.length > 0 && violations[violations.length - 1].length > 0)
    }
    return true
  }

  it('1.0.0: answers each valid first request exactly and resets every other stream, one violation each', async () => {
    await checkAsync('inference server stream 1.0.0', fc.tuple(requestBytes, cuts), 500, async ([b, cs]) => { await probe(b, cs) })
    await stillServing()
  })

  it('1.1.0: answers every valid request in turn and resets a stream at its first bad frame, one violation each', async () => {
    await checkAsync('inference server stream 1.1.0', fc.tuple(requestBytes, cuts), 500, async ([b, cs]) => { await probe(b, cs, true, INFERENCE_PROTOCOL) })
    await stillServing()
  })

  it('keeps every answer right when hostile and valid streams of both versions arrive at once', async () => {
    await checkAsync('inference server burst', fc.array(fc.tuple(requestBytes, cuts, fc.constantFrom(INFERENCE_PROTOCOL, INFERENCE_PROTOCOL_SINGLE)), { minLength: 8, maxLength: 24 }), 25, async cases => {
      const before = service.stats.violations
      const outcomes = await Promise.all(cases.map(async ([b, cs, protocol]) => await probe(b, cs, false, protocol)))
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
    const model = modelFramed(bytes, MAX_INFERENCE_RESPONSE_BYTES)
    const first = model.frames[0]
    let reply: InferenceReply
    try {
      reply = await deadline(requester.request(target, validRequest, { firstByteTimeoutMs: 3000, connectTimeoutMs: 3000 }), 8000, 'request()')
    } catch (err) {
      assert.ok(err instanceof ShepherdError, `request() threw ${(err as Error)?.name}: ${(err as Error)?.message}`)
      if (first !== undefined && !isInferenceResponse(first)) assert.ok(err instanceof WireError && err.code === 'invalid_frame', `${err.name} ${err.code}`)
      if (first !== undefined && isInferenceResponse(first) && first.t === 'error') {
        assert.ok(err instanceof RemoteError)
        assert.equal(err.status, first.status)
      }
      assert.ok(!(first !== undefined && isInferenceResponse(first) && first.t === 'result'), `a valid result frame was refused: ${err.message}`)
      if (first !== undefined && isInferenceResponse(first) && first.t === 'bytes') assert.ok(err instanceof WireError, `'bytes' before 'head' refused as ${err.name} ${err.code}`)
      return
    }
    // A reply may begin with result, chunk, head or end (an empty stream); `bytes` before `head` breaks the protocol.
    assert.ok(first !== undefined && isInferenceResponse(first) && first.t !== 'error' && first.t !== 'bytes', `resolved on first frame ${JSON.stringify(first)}`)
    if (reply.kind === 'result') {
      assert.deepEqual(reply.data, (first as { data: unknown }).data)
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
      // 16 continuation bytes: no request (at most 8 MiB, a 4-byte prefix) starts like this. The stream stays open.
      const ex = await exchange(client, server.peerId, INFERENCE_PROTOCOL, [new Uint8Array(16).fill(0xff)], { close: false, ms: 3000 })
      assert.equal(ex.end, 'reset', `the stream ended ${ex.end} after ${ex.ms.toFixed(0)} ms`)
      assert.ok(ex.ms < 2000, `reset after ${ex.ms.toFixed(0)} ms`)
      assert.equal(service.stats.violations, before + 1)
      await stillServing()
    })

    it('closes the stream of a reply that ends before its first chunk (an empty stream leaks nothing)', async () => {
      nextAnswer = [framedBytes({ t: 'end' })]
      for (let i = 0; i < 20; i++) {
        const reply = await requester.request(hostile.peerId.toString(), validRequest, { firstByteTimeoutMs: 3000 })
        assert.equal(reply.kind, 'stream')
        if (reply.kind === 'stream') for await (const _ of reply.chunks) assert.fail('no chunk was sent')
      }
      await until('the 20 streams to be closed', () => openStreams() === 0, 3000)
    })

    it('refuses a reply that begins with bytes before any head as a protocol violation', async () => {
      nextAnswer = [framedBytes({ t: 'bytes', b64: 'aGk=' }), framedBytes({ t: 'end' })]
      await assert.rejects(requester.request(hostile.peerId.toString(), validRequest, { firstByteTimeoutMs: 3000 }), (err: unknown) => err instanceof WireError)
      await until('the stream to be released', () => openStreams() === 0, 3000)
    })
  })
})
