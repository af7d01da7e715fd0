/**
 * `/shepherd/blob/2.0.0` between real libp2p hosts (tcp + noise + yamux) on loopback.
 */
import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { createHash, randomBytes } from 'node:crypto'
import { mkdtemp, rm, stat, utimes, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import type { Stream } from '@libp2p/interface'
import { setLogSink } from '../../src/logger.js'
import { createHost, type Host } from '../../src/p2p/host.js'
import { createIdentity } from '../../src/p2p/identity.js'
import {
  BLOB_PROTOCOL, BlobFrameReader, FRAME_CONTROL, MAX_BLOB_CHUNK_BYTES, encodeControlFrame, encodeDataFrame, isBlobControl, isBlobRequest, isSafeModelName
} from '../../src/p2p/blob-messages.js'
import { BlobService, BlobTransferError, FileDigests, type BlobDownload } from '../../src/p2p/blob-protocol.js'

const FP = 'ab'.repeat(32)

async function newHost (): Promise<Host> {
  return await createHost({ privateKey: await createIdentity(), listen: ['/ip4/127.0.0.1/tcp/0'], mdns: false, mdnsIntervalMs: 1000 })
}

function sha256 (b: Uint8Array): string {
  return createHash('sha256').update(b).digest('hex')
}

async function drain (dl: BlobDownload): Promise<Buffer> {
  const parts: Uint8Array[] = []
  for await (const chunks of dl.chunks) parts.push(...chunks)
  return Buffer.concat(parts)
}

async function waitFor (what: string, cond: () => boolean, ms = 5000): Promise<void> {
  const end = Date.now() + ms
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`)
    await new Promise(resolve => setTimeout(resolve, 10))
  }
}

/** Resolves when the stream closes; whether the remote reset it. */
async function closed (stream: Stream, ms = 5000): Promise<string> {
  if (stream.status !== 'open') return stream.status
  await new Promise<void>((resolve, reject) => {
    const t = setTimeout(() => { reject(new Error('stream stayed open')) }, ms)
    stream.addEventListener('close', () => { clearTimeout(t); resolve() }, { once: true })
  })
  return stream.status
}

/** Digests that wait for `open()` first, so a transfer can be held in its slot. */
class GatedDigests extends FileDigests {
  private release!: () => void
  private gate = new Promise<void>(resolve => { this.release = resolve })
  waiting = 0
  open (): void { this.release() }
  override async sha256 (path: string, size: number, mtimeMs: number): Promise<string> {
    this.waiting++
    await this.gate
    return await super.sha256(path, size, mtimeMs)
  }
}

describe('blob messages', () => {
  it('accepts model names that stay inside a directory (folders included) and nothing else', () => {
    for (const ok of ['llama-3.2-1b-instruct-Q4_K_M', 'a', 'tiny chat', 'qwen2.5:7b', 'é', 'Qwen/x', 'a/b/c/d']) assert.equal(isSafeModelName(ok), true, ok)
    for (const bad of ['', '.', '..', '../x', 'a/../b', 'a//b', 'a/', 'a/.b', 'a/b/c/d/e', 'a\\b', '/etc/passwd', '.hidden', 'a\u0000b', 'a\nb', 'x'.repeat(201)]) assert.equal(isSafeModelName(bad), false, JSON.stringify(bad))
  })

  it('validates requests and control frames by schema', () => {
    assert.equal(isBlobRequest({ v: 1, name: 'm', fingerprint: FP, offset: 0 }), true)
    assert.equal(isBlobRequest({ v: 1, name: 'm', fingerprint: FP, offset: 5, sha256: 'cd'.repeat(32) }), true)
    for (const bad of [
      { v: 2, name: 'm', fingerprint: FP, offset: 0 },
      { v: 1, name: '../m', fingerprint: FP, offset: 0 },
      { v: 1, name: 'm', fingerprint: 'ZZ', offset: 0 },
      { v: 1, name: 'm', fingerprint: FP, offset: -1 },
      { v: 1, name: 'm', fingerprint: FP, offset: 1.5 },
      { v: 1, name: 'm', fingerprint: FP, offset: 0, path: '/etc/passwd' }
    ]) assert.equal(isBlobRequest(bad), false, JSON.stringify(bad))
    assert.equal(isBlobControl({ t: 'header', size: 3, sha256: FP }), true)
    assert.equal(isBlobControl({ t: 'end' }), true)
    assert.equal(isBlobControl({ t: 'error', code: 'busy', message: 'x' }), true)
    assert.equal(isBlobControl({ t: 'header', size: -1, sha256: FP }), false)
    assert.equal(isBlobControl({ t: 'error', code: 'Busy!', message: 'x' }), false)
  })

  it('frames control and data with a kind byte after the length', () => {
    const c = encodeControlFrame({ t: 'end' })
    assert.equal(c[0], c.byteLength - 1)
    assert.equal(c[1], FRAME_CONTROL)
    const d = encodeDataFrame(new Uint8Array(300).fill(7))
    assert.deepEqual([...d.subarray(0, 3)], [0xad, 0x02, 1]) // varint 301, kind 1
    assert.equal(d.byteLength, 303)
  })
})

describe('blob protocol over libp2p', () => {
  let server: Host, client: Host, fake: Host
  let service: BlobService
  let dir: string
  let data: Buffer
  let path: string
  const served = new Map<string, { path: string, size: number }>()
  const logs: string[] = []

  before(async () => {
    setLogSink(line => { logs.push(line) })
    dir = await mkdtemp(join(tmpdir(), 'shepherd-blob-'))
    data = randomBytes(3 * 1024 * 1024 + 12345)
    path = join(dir, 'm.gguf')
    await writeFile(path, data)
    served.set(`m/${FP}`, { path, size: data.byteLength })
    ;[server, client, fake] = await Promise.all([newHost(), newHost(), newHost()])
    await client.dial(server.getMultiaddrs()[0])
    await client.dial(fake.getMultiaddrs()[0])
    service = new BlobService(server)
    await service.serve((name, fp) => served.get(`${name}/${fp}`))
  })

  after(async () => {
    setLogSink(line => { process.stderr.write(line + '\n') })
    await service.stop()
    await Promise.all([server.stop(), client.stop(), fake.stop()])
    await rm(dir, { recursive: true, force: true })
  })

  it('sends a whole file with its size and sha256, and remembers the digest', async () => {
    const before = { ...service.digests.stats }
    const dl = await new BlobService(client).open(server.peerId.toString(), { name: 'm', fingerprint: FP, offset: 0 })
    assert.equal(dl.size, data.byteLength)
    assert.equal(dl.sha256, sha256(data))
    const got = await drain(dl)
    assert.equal(got.byteLength, data.byteLength)
    assert.equal(sha256(got), sha256(data))

    const again = await new BlobService(client).open(server.peerId.toString(), { name: 'm', fingerprint: FP, offset: 0 })
    again.cancel()
    assert.equal(service.digests.stats.computed - before.computed, 1)
    assert.equal(service.digests.stats.hits - before.hits, 1)
  })

  it('starts at the requested offset and sends only the rest', async () => {
    await waitFor('idle server', () => service.stats.active === 0)
    const sent = service.stats.bytesSent
    const offset = 1024 * 1024 + 7
    const dl = await new BlobService(client).open(server.peerId.toString(), { name: 'm', fingerprint: FP, offset, sha256: sha256(data) })
    const got = await drain(dl)
    assert.deepEqual(got, data.subarray(offset))
    assert.equal(service.stats.bytesSent - sent, data.byteLength - offset)

    const end = await new BlobService(client).open(server.peerId.toString(), { name: 'm', fingerprint: FP, offset: data.byteLength })
    assert.equal((await drain(end)).byteLength, 0)
  })

  it('answers typed errors: unknown name or fingerprint, offset past the end, other content', async () => {
    const blob = new BlobService(client)
    const peer = server.peerId.toString()
    await assert.rejects(blob.open(peer, { name: 'nope', fingerprint: FP, offset: 0 }), (e: any) => e instanceof BlobTransferError && e.code === 'model_unavailable' && e.status === 404)
    await assert.rejects(blob.open(peer, { name: 'm', fingerprint: 'cd'.repeat(32), offset: 0 }), { code: 'model_unavailable' })
    await assert.rejects(blob.open(peer, { name: 'm', fingerprint: FP, offset: data.byteLength + 1 }), { code: 'bad_offset' })
    await assert.rejects(blob.open(peer, { name: 'm', fingerprint: FP, offset: 0, sha256: 'ee'.repeat(32) }), { code: 'content_mismatch' })
  })

  it('never reads a path it was not given, whatever the name says', async () => {
    const asked: string[] = []
    const s2 = await newHost()
    try {
      await client.dial(s2.getMultiaddrs()[0])
      const svc = new BlobService(s2)
      await svc.serve(name => { asked.push(name); return undefined })
      const blob = new BlobService(client)
      for (const name of ['../../etc/passwd', '/etc/passwd', '..', '.ssh', 'a/../b']) {
        // The client refuses to send these at all; a raw request with them is a violation.
        const raw = await client.dialProtocol(s2.peerId, BLOB_PROTOCOL)
        raw.send(encodeControlFrame({ v: 1, name, fingerprint: FP, offset: 0 }))
        assert.equal(await closed(raw), 'reset', name)
      }
      await assert.rejects(blob.open(s2.peerId.toString(), { name: 'passwd', fingerprint: FP, offset: 0 }), { code: 'model_unavailable' })
      assert.deepEqual(asked, ['passwd'])
      assert.equal(svc.stats.violations, 5)
    } finally {
      await s2.stop()
    }
  })

  it('resets the stream on oversized or garbage frames and keeps serving', async () => {
    const violations = service.stats.violations
    const json = (s: string): Uint8Array => { const b = Buffer.from(s); return Buffer.concat([Buffer.from([b.byteLength + 1, FRAME_CONTROL]), b]) }
    const garbage: Array<[string, Uint8Array]> = [
      ['a 100 MB length', Uint8Array.from([0x80, 0x80, 0x80, 0x32, 0])],
      ['a length prefix that never ends', Uint8Array.from([0xff, 0xff, 0xff, 0xff, 0xff, 0xff])],
      ['a request just over the size cap', Buffer.concat([Buffer.from([0x82, 0x20, FRAME_CONTROL]), Buffer.alloc(4097, 0x20)])],
      ['not JSON', json('{"v":1,')],
      ['not UTF-8', Buffer.from([3, FRAME_CONTROL, 0xff, 0xfe])],
      ['JSON of the wrong shape', json('{"v":1,"name":"m"}')],
      ['a data frame as request', encodeDataFrame(new Uint8Array(10))],
      ['an unknown frame kind', Uint8Array.from([2, 9, 0])],
      ['an empty frame', Uint8Array.from([0])]
    ]
    for (const [what, bytes] of garbage) {
      const raw = await client.dialProtocol(server.peerId, BLOB_PROTOCOL)
      raw.send(bytes)
      assert.equal(await closed(raw), 'reset', what)
    }
    assert.equal(service.stats.violations - violations, garbage.length)
    assert.ok(logs.some(l => l.includes('protocol violation') && l.includes('exceeds')), 'violations are logged with their reason')
    const dl = await new BlobService(client).open(server.peerId.toString(), { name: 'm', fingerprint: FP, offset: 0 })
    assert.equal(sha256(await drain(dl)), sha256(data))
  })

  it('resets a stream that sends no request in time', async () => {
    const s2 = await newHost()
    try {
      await client.dial(s2.getMultiaddrs()[0])
      const svc = new BlobService(s2)
      await svc.serve(() => undefined, { requestTimeoutMs: 200 })
      const raw = await client.dialProtocol(s2.peerId, BLOB_PROTOCOL)
      raw.send(Uint8Array.from([10, FRAME_CONTROL])) // a frame that never completes
      assert.equal(await closed(raw), 'reset')
      assert.equal(svc.stats.violations, 1)
    } finally {
      await s2.stop()
    }
  })

  it('answers busy beyond maxConcurrent transfers and frees the slot when one ends', async () => {
    const s2 = await newHost()
    try {
      await client.dial(s2.getMultiaddrs()[0])
      const digests = new GatedDigests()
      const svc = new BlobService(s2, { digests })
      await svc.serve((name, fp) => served.get(`${name}/${fp}`), { maxConcurrent: 1 })
      const blob = new BlobService(client)
      const peer = s2.peerId.toString()
      const first = blob.open(peer, { name: 'm', fingerprint: FP, offset: 0 })
      await waitFor('the first transfer to hold its slot', () => digests.waiting === 1)
      await assert.rejects(blob.open(peer, { name: 'm', fingerprint: FP, offset: 0 }), (e: any) => e.code === 'busy' && e.status === 503)
      assert.equal(svc.stats.busy, 1)
      digests.open()
      assert.equal(sha256(await drain(await first)), sha256(data))
      await waitFor('the slot to be free', () => svc.stats.active === 0)
      assert.equal(sha256(await drain(await blob.open(peer, { name: 'm', fingerprint: FP, offset: 0 }))), sha256(data))
      await waitFor('both transfers counted', () => svc.stats.served === 2)
    } finally {
      await s2.stop()
    }
  })

  it('waits for a slow reader instead of buffering the file (back-pressure)', async () => {
    const big = randomBytes(64 * 1024 * 1024)
    const bigPath = join(dir, 'big.gguf')
    await writeFile(bigPath, big)
    served.set(`big/${FP}`, { path: bigPath, size: big.byteLength })
    await waitFor('idle server', () => service.stats.active === 0)
    const sent = service.stats.bytesSent
    const dl = await new BlobService(client).open(server.peerId.toString(), { name: 'big', fingerprint: FP, offset: 0 })
    await new Promise(resolve => setTimeout(resolve, 500))
    const inFlight = service.stats.bytesSent - sent
    // Bounded by the reader's high-water mark (4 MiB), yamux's window (16 MiB at most) and socket
    // buffers, not by the file. Before stream-drain.ts the server ran the whole 64 MiB ahead once
    // yamux's window updates were batched (20 MiB before that: the time, not back-pressure, bounded it).
    assert.ok(inFlight < 24 * 1024 * 1024, `server ran ${inFlight} bytes ahead of a stalled reader`)
    assert.equal(sha256(await drain(dl)), sha256(big))
    console.log(`# ${(inFlight / 1048576).toFixed(1)} MiB in flight while the reader stalled`)
  })

  it('keeps the digest only while size and mtime are unchanged', async () => {
    const p = join(dir, 'd.bin')
    await writeFile(p, 'one')
    const when = new Date('2024-01-01T00:00:00Z')
    await utimes(p, when, when)
    const d = new FileDigests()
    const st = await stat(p)
    assert.equal(await d.sha256(p, st.size, st.mtimeMs), sha256(Buffer.from('one')))
    await writeFile(p, 'two')
    const st2 = await stat(p)
    assert.equal(await d.sha256(p, st2.size, st2.mtimeMs), sha256(Buffer.from('two')))
    assert.deepEqual(d.stats, { hits: 0, computed: 2 })
    assert.equal(await d.sha256(p, st2.size, st2.mtimeMs), sha256(Buffer.from('two')))
    assert.deepEqual(d.stats, { hits: 1, computed: 2 })
  })

  describe('against a misbehaving server', () => {
    type Script = (stream: Stream) => Promise<void>
    let script: Script

    before(async () => {
      await fake.handle(BLOB_PROTOCOL, (stream) => {
        void (async () => {
          const reader = new BlobFrameReader(stream, { maxControlBytes: 4096, maxDataBytes: 0 })
          await reader.read()
          reader.dispose()
          await script(stream)
        })().catch(err => { stream.abort(err) })
      })
    })

    const open = async (): Promise<BlobDownload> => await new BlobService(client).open(fake.peerId.toString(), { name: 'm', fingerprint: FP, offset: 0 }, { idleTimeoutMs: 300, headerTimeoutMs: 2000 })
    const header = encodeControlFrame({ t: 'header', size: 100, sha256: FP })

    it('an oversized control frame: frame_too_large, stream reset', async () => {
      let stream!: Stream
      script = async s => { stream = s; s.send(Buffer.concat([Buffer.from([0x81, 0x80, 0x01, FRAME_CONTROL]), Buffer.alloc(10)])) }
      await assert.rejects(open(), (e: any) => e.code === 'frame_too_large')
      assert.equal(await closed(stream), 'reset')
    })

    it('an oversized data frame: frame_too_large', async () => {
      script = async s => { s.send(header); s.send(encodeDataFrame(new Uint8Array(MAX_BLOB_CHUNK_BYTES + 1))) }
      await assert.rejects(drain(await open()), (e: any) => e.code === 'frame_too_large')
    })

    it('data before the header: invalid_frame', async () => {
      script = async s => { s.send(encodeDataFrame(new Uint8Array(10))) }
      await assert.rejects(open(), (e: any) => e.code === 'invalid_frame')
    })

    it('more bytes than announced: transfer_corrupt', async () => {
      script = async s => { s.send(header); s.send(encodeDataFrame(new Uint8Array(101))) }
      await assert.rejects(drain(await open()), (e: any) => e.code === 'transfer_corrupt')
    })

    it('end before all bytes: transfer_truncated', async () => {
      script = async s => { s.send(header); s.send(encodeDataFrame(new Uint8Array(60))); s.send(encodeControlFrame({ t: 'end' })) }
      await assert.rejects(drain(await open()), (e: any) => e.code === 'transfer_truncated')
    })

    it('a reset mid-way: transfer_truncated, after the bytes that did arrive', async () => {
      script = async s => {
        s.send(header)
        s.send(encodeDataFrame(new Uint8Array(60)))
        await new Promise(resolve => setTimeout(resolve, 50))
        s.abort(new Error('gone'))
      }
      const dl = await open()
      let got = 0
      await assert.rejects((async () => { for await (const chunks of dl.chunks) for (const c of chunks) got += c.byteLength })(), (e: any) => e.code === 'transfer_truncated')
      assert.equal(got, 60)
    })

    it('silence mid-way: transfer_stalled', async () => {
      script = async s => { s.send(header); s.send(encodeDataFrame(new Uint8Array(10))) }
      await assert.rejects(drain(await open()), (e: any) => e.code === 'transfer_stalled')
    })

    it('an error frame mid-way: its code', async () => {
      script = async s => { s.send(header); s.send(encodeControlFrame({ t: 'error', code: 'internal_error', message: 'disk on fire' })) }
      await assert.rejects(drain(await open()), (e: any) => e.code === 'internal_error' && e.message === 'disk on fire')
    })

    it('an unknown error code arrives as remote_error', async () => {
      script = async s => { s.send(encodeControlFrame({ t: 'error', code: 'weird', message: 'x' })) }
      await assert.rejects(open(), (e: any) => e.code === 'remote_error')
    })
  })
})
