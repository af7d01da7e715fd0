/**
 * `/shepherd/openai/2.0.0` between real libp2p hosts (tcp + noise + yamux) on loopback: streams
 * reused between requests, every way a reused stream can go wrong, bodies relayed as bytes in
 * blocks (a 7.5 MiB body byte-identical), chunks forwarded as the host wrote them.
 */
import '../../src/polyfill.js'
import { createHash } from 'node:crypto'
import { after, afterEach, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import type { Stream } from '@libp2p/interface'
import { setLogSink, logSink } from '../../src/logger.js'
import { ShepherdError } from '../../src/errors.js'
import { INFERENCE_PROTOCOL, MAX_INFERENCE_REQUEST_BYTES, MAX_INFERENCE_RESPONSE_BYTES } from '../../src/p2p/constants.js'
import { FramedStream } from '../../src/p2p/framing.js'
import type { Host } from '../../src/p2p/host.js'
import { InferenceService, type RelayReply, type RelayRequest } from '../../src/p2p/inference.js'
import { decodeRequestFrame, encodeFrame, type CallHead, type ResponseFrame } from '../../src/p2p/inference-messages.js'
import { newHost } from '../support/fuzz-hosts.js'
import { until } from '../support/fuzz-harness.js'

const enc = (x: unknown): Uint8Array => new TextEncoder().encode(JSON.stringify(x))
const dec = (b: Uint8Array): unknown => JSON.parse(new TextDecoder().decode(b))
const req = (model: string, stream = false): RelayRequest => ({ id: `req-${model}`, op: 'chat', stream, model, body: enc({ model, messages: [] }) })

async function result (reply: Promise<RelayReply>): Promise<unknown> {
  const r = await reply
  assert.equal(r.kind, 'result')
  return dec((r as { data: Uint8Array }).data)
}

/** Writes one response frame by hand. */
async function send (framed: FramedStream, frame: ResponseFrame): Promise<void> {
  await framed.writeBytes(encodeFrame(frame))
}

/** Streams of `protocol` open between the two hosts, as `host` sees them. */
function openStreams (host: Host, peer: Host, protocol: string): Stream[] {
  return host.getConnections(peer.peerId).flatMap(c => c.streams).filter(s => s.protocol === protocol)
}

/** A host that answers by hand: `answer` runs for each request frame read on each stream. */
async function scriptedHost (protocol: string, answer: (req: CallHead, framed: FramedStream, stream: Stream, n: number) => Promise<'next' | 'stop'>): Promise<Host> {
  const host = await newHost()
  await host.handle(protocol, stream => {
    const framed = new FramedStream(stream, { read: MAX_INFERENCE_REQUEST_BYTES, write: MAX_INFERENCE_RESPONSE_BYTES })
    /** A call head, once its body was read to the end. */
    const readCall = async (): Promise<CallHead | null> => {
      const first = await framed.readBytes().catch(() => null)
      if (first == null) return null
      const f = decodeRequestFrame(first)
      if (f.t !== 'call') return null
      for (;;) {
        const b = await framed.readBytes()
        if (b == null || decodeRequestFrame(b).t === 'end') return f.head
      }
    }
    void (async () => {
      for (let n = 0; ; n++) {
        const r = await readCall().catch(() => null)
        if (r == null) break
        if (await answer(r, framed, stream, n) === 'stop') return
      }
      await stream.close().catch(() => {})
    })()
  })
  return host
}

describe('inference protocol 2.0.0: pooled streams, bytes as bytes', () => {
  let server: Host, client: Host
  let service: InferenceService, requester: InferenceService
  const extra: Host[] = []
  const violations: string[] = []
  const originalSink = logSink
  let aborted = 0

  before(async () => {
    setLogSink(() => {})
    ;[server, client] = await Promise.all([newHost(), newHost()])
    service = new InferenceService(server)
    await service.serve(async (r, ctx) => {
      if (r.model === 'slow-stream') {
        return {
          kind: 'stream',
          chunks: (async function * () {
            for (let i = 0; i < 1000; i++) {
              if (ctx.signal.aborted) { aborted++; return }
              yield enc({ i })
              await new Promise(resolve => setTimeout(resolve, 5))
            }
          })()
        }
      }
      if (r.model === 'three-chunks') return { kind: 'stream', chunks: (async function * () { yield enc({ i: 0 }); yield enc({ i: 1 }); yield enc({ i: 2 }) })() }
      // Formatting JSON.stringify would not write: a requester that parsed and re-serialized would lose it.
      if (r.model === 'verbatim') return { kind: 'stream', chunks: (async function * () { yield new TextEncoder().encode('{"x": 1.50, "y":"\\u00e9"}') })() }
      if (r.model === 'bad-chunk') return { kind: 'stream', chunks: (async function * () { yield new TextEncoder().encode('{"a":1}\n\ndata: {"injected":true}') })() }
      if (r.model === 'echo') return { kind: 'result', data: enc({ id: r.id, op: r.op, size: r.body.byteLength, sha: createHash('sha256').update(r.body).digest('hex'), pass: r.pass ?? null }) }
      if (r.model === 'fails') throw new ShepherdError('no such thing', { code: 'model_not_found', status: 404 })
      return { kind: 'result', data: enc({ model: r.model }) }
    }, { onViolation: (_p, reason) => { violations.push(reason) } })
    requester = new InferenceService(client, { requesterIdleMs: 60_000 })
    await client.dial(server.getMultiaddrs()[0])
  })

  afterEach(() => { violations.length = 0 })

  /** Connects the client to another host (stopped after the suite); its peer id. */
  async function meet (host: Host): Promise<string> {
    extra.push(host)
    await client.dial(host.getMultiaddrs()[0])
    return host.peerId.toString()
  }

  after(async () => {
    await requester.stop()
    await service.stop()
    await Promise.all([server.stop(), client.stop(), ...extra.map(async h => { await h.stop() })])
    setLogSink(originalSink)
  })

  it('sends one request after another on one stream, results, streams and errors alike', async () => {
    const peer = server.peerId.toString()
    const reused = requester.stats.reused
    for (let i = 0; i < 20; i++) {
      assert.deepEqual(await result(requester.request(peer, req(`m${i}`))), { model: `m${i}` })
      const r = await requester.request(peer, req('three-chunks', true))
      assert.equal(r.kind, 'stream')
      const got: unknown[] = []
      if (r.kind === 'stream') for await (const c of r.chunks) got.push(dec(c))
      assert.deepEqual(got, [{ i: 0 }, { i: 1 }, { i: 2 }])
      await assert.rejects(requester.request(peer, req('fails')), (err: any) => err.status === 404 && err.code === 'model_not_found')
    }
    // The first request of the test may open the stream; all others reuse it.
    assert.ok(requester.stats.reused - reused >= 59, `reused ${requester.stats.reused - reused} of 60`)
    assert.equal(openStreams(client, server, INFERENCE_PROTOCOL).length, 1)
    assert.equal(requester.pool.idleCount(peer), 1)
    assert.deepEqual(violations, [])
  })

  it('keeps as many idle streams as a burst needed, up to the cap, and closes the rest', async () => {
    const peer = server.peerId.toString()
    const capped = new InferenceService(client, { idleStreamsPerPeer: 4 })
    const replies = await Promise.all(Array.from({ length: 12 }, async (_, i) => await result(capped.request(peer, req(`burst${i}`)))))
    assert.equal(replies.length, 12)
    assert.equal(capped.pool.idleCount(peer), 4)
    await capped.stop()
    assert.equal(capped.pool.idleCount(), 0)
  })

  it('never reuses the stream of a request the client abandoned, and the host stops generating', async () => {
    const peer = server.peerId.toString()
    const ac = new AbortController()
    const before = aborted
    const r = await requester.request(peer, req('slow-stream', true), { signal: ac.signal })
    assert.equal(r.kind, 'stream')
    let n = 0
    await assert.rejects((async () => {
      if (r.kind === 'stream') for await (const _ of r.chunks) if (++n === 3) ac.abort(new ShepherdError('client left', { code: 'client_closed', status: 499 }))
    })())
    await until('the host to stop generating', () => aborted === before + 1, 3000)
    // The next request works on a stream that is open both ways.
    assert.deepEqual(await result(requester.request(peer, req('after-abort'))), { model: 'after-abort' })
    for (const s of openStreams(client, server, INFERENCE_PROTOCOL)) assert.equal(s.status, 'open')
  })

  it('closes idle streams after the requester idle time, and the host counts no violation', async () => {
    const peer = server.peerId.toString()
    const brief = new InferenceService(client, { requesterIdleMs: 100 })
    await result(brief.request(peer, req('brief')))
    assert.equal(brief.pool.idleCount(peer), 1)
    await until('the idle stream to be closed', () => brief.pool.idleCount(peer) === 0, 2000)
    await brief.stop()
    await until('the host to close its side', () => openStreams(server, client, INFERENCE_PROTOCOL).length <= openStreams(client, server, INFERENCE_PROTOCOL).length, 2000)
    assert.deepEqual(violations, [])
  })

  it('a host closes a stream left idle past its idle time, and the requester opens a new one', async () => {
    const host = await newHost()
    const impatient = new InferenceService(host, { hostIdleMs: 100 })
    await impatient.serve(async r => ({ kind: 'result', data: enc({ model: r.model }) }))
    const peer = await meet(host)
    await result(requester.request(peer, req('one')))
    await until('the host to close the idle stream', () => openStreams(client, host, INFERENCE_PROTOCOL).every(s => s.remoteWriteStatus !== 'writable'), 2000)
    assert.equal(impatient.stats.violations, 0)
    assert.deepEqual(await result(requester.request(peer, req('two'))), { model: 'two' })
  })

  it('sends a request again on a new stream when a reused one breaks before the answer', async () => {
    // Answers the first request of each stream, resets the stream on its second.
    const host = await scriptedHost(INFERENCE_PROTOCOL, async (r, framed, stream, n) => {
      if (n > 0) { stream.abort(new Error('gone')); return 'stop' }
      await send(framed, { t: 'result', bytes: enc({ model: r.model }) })
      return 'next'
    })
    const peer = await meet(host)
    const stale = requester.stats.staleRetries
    assert.deepEqual(await result(requester.request(peer, req('first'))), { model: 'first' })
    assert.deepEqual(await result(requester.request(peer, req('second'))), { model: 'second' })
    assert.equal(requester.stats.staleRetries, stale + 1)
  })

  it('does not dial again when the connection itself went away under a reused stream', async () => {
    let host: Host | undefined
    // Answers the first request; on the second, drops the whole connection without a word.
    host = await scriptedHost(INFERENCE_PROTOCOL, async (r, framed, _s, n) => {
      if (n > 0) {
        for (const c of host!.getConnections(client.peerId)) c.abort(new Error('link gone'))
        return 'stop'
      }
      await send(framed, { t: 'result', bytes: enc({ model: r.model }) })
      return 'next'
    })
    const peer = await meet(host)
    const stale = requester.stats.staleRetries
    await result(requester.request(peer, req('first')))
    const t0 = performance.now()
    await assert.rejects(requester.request(peer, req('second')), (err: any) => err.code === 'no_healthy_host')
    assert.equal(requester.stats.staleRetries, stale, 'no second try on a fresh stream')
    assert.equal(client.getConnections(host.peerId).length, 0, 'no new connection dialed')
    assert.ok(performance.now() - t0 < 1000)
  })

  it('does not resend on a new stream when the host broke the protocol', async () => {
    const host = await scriptedHost(INFERENCE_PROTOCOL, async (r, framed, _s, n) => {
      await (n === 0 ? send(framed, { t: 'result', bytes: enc({ model: r.model }) }) : framed.writeBytes([Uint8Array.of(9)]))
      return 'next'
    })
    const peer = await meet(host)
    const stale = requester.stats.staleRetries
    await result(requester.request(peer, req('first')))
    await assert.rejects(requester.request(peer, req('second')), (err: any) => err.code === 'invalid_frame' || err.name === 'WireError')
    assert.equal(requester.stats.staleRetries, stale)
  })

  it('drops a stream on which the host sent something between exchanges; a stray frame never answers a later request', async () => {
    const host = await scriptedHost(INFERENCE_PROTOCOL, async (r, framed) => {
      await send(framed, { t: 'result', bytes: enc({ model: r.model }) })
      setTimeout(() => { void send(framed, { t: 'result', bytes: enc({ model: 'stray' }) }).catch(() => {}) }, 30)
      return 'next'
    })
    const peer = await meet(host)
    const before = requester.stats.violations
    assert.deepEqual(await result(requester.request(peer, req('first'))), { model: 'first' })
    await new Promise(resolve => setTimeout(resolve, 100))
    assert.deepEqual(await result(requester.request(peer, req('second'))), { model: 'second' })
    assert.equal(requester.stats.violations, before + 1)
  })

  it('closes a pooled stream at once when its host closes its side while it idles', async () => {
    // Found by the fuzz test: a host that closed just after its answer left a half-closed stream
    // in the pool until the idle timeout.
    const host = await scriptedHost(INFERENCE_PROTOCOL, async (r, framed, stream) => {
      await send(framed, { t: 'result', bytes: enc({ model: r.model }) })
      setTimeout(() => { void stream.close().catch(() => {}) }, 50)
      return 'stop'
    })
    const peer = await meet(host)
    assert.deepEqual(await result(requester.request(peer, req('then-close'))), { model: 'then-close' })
    assert.equal(requester.pool.idleCount(peer), 1, 'pooled while the host has not closed yet')
    await until('the pool to let the stream go', () => requester.pool.idleCount(peer) === 0 && openStreams(client, host, INFERENCE_PROTOCOL).length === 0, 1000)
  })

  it('relays a 7.5 MiB body in blocks, byte for byte, with its request id and endpoint', async () => {
    const peer = server.peerId.toString()
    const body = new Uint8Array(7.5 * 1024 * 1024)
    for (let i = 0; i < body.length; i++) body[i] = (i * 31 + (i >> 11)) & 0xff
    const pass = { method: 'POST' as const, path: '/audio/transcriptions' as const, headers: { 'content-type': 'multipart/form-data; boundary=x' } }
    const got = await result(requester.request(peer, { id: 'audio-1', op: 'passthrough', stream: false, model: 'echo', pass, body }))
    assert.deepEqual(got, { id: 'audio-1', op: 'passthrough', size: body.length, sha: createHash('sha256').update(body).digest('hex'), pass })
    assert.deepEqual(violations, [])
  })

  it('forwards a chunk as the host serialized it (never parsed and written again)', async () => {
    const r = await requester.request(server.peerId.toString(), req('verbatim', true))
    assert.equal(r.kind, 'stream')
    const got: string[] = []
    if (r.kind === 'stream') for await (const c of r.chunks) got.push(new TextDecoder().decode(c))
    assert.deepEqual(got, ['{"x": 1.50, "y":"\\u00e9"}'])
  })

  it('refuses a chunk that would break the client\'s event stream (a line break), as a violation', async () => {
    const r = await requester.request(server.peerId.toString(), req('bad-chunk', true)).catch((err: unknown) => err)
    assert.ok(r instanceof ShepherdError && r.code === 'invalid_frame', String(r))
    assert.ok(requester.stats.violations > 0)
  })

  it('refuses a body longer or shorter than its call announced, and keeps serving', async () => {
    const peer = server.peerId.toString()
    for (const [size, sent] of [[4, 8], [8, 4]]) {
      const stream = await client.dialProtocol(server.peerId, INFERENCE_PROTOCOL)
      const framed = new FramedStream(stream, { read: MAX_INFERENCE_RESPONSE_BYTES, write: MAX_INFERENCE_REQUEST_BYTES })
      const head: CallHead = { v: 2, id: 'liar', op: 'chat', model: 'm', stream: false, size }
      await framed.writeBytes(encodeFrame({ t: 'call', head }))
      await framed.writeBytes(encodeFrame({ t: 'data', bytes: new Uint8Array(sent) }))
      await framed.writeBytes(encodeFrame({ t: 'end' }))
      await until('the host to reset the stream', () => stream.status !== 'open', 3000)
    }
    assert.equal(violations.length, 2, violations.join('; '))
    assert.ok(violations.every(v => /request body/.test(v)), violations.join('; '))
    assert.deepEqual(await result(requester.request(peer, req('still'))), { model: 'still' })
  })
})
