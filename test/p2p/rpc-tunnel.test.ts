/**
 * `/shepherd/rpc-tunnel/1.0.0` between real libp2p hosts (tcp + noise + yamux) on loopback: bytes
 * go through unchanged both ways with back-pressure; a member without a granted split, a bad
 * header and a host outside the mesh are refused; either end closing ends the other (no hang).
 */
import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import net from 'node:net'
import { networkInterfaces } from 'node:os'
import { createHash, randomBytes } from 'node:crypto'
import { setLogSink } from '../../src/logger.js'
import { createHost, type Host } from '../../src/p2p/host.js'
import { createIdentity } from '../../src/p2p/identity.js'
import { TrustPolicy } from '../../src/p2p/trust.js'
import { RPC_TUNNEL_PROTOCOL, RpcTunnelService, decodeTunnelHeader, encodeTunnelHeader, type TunnelVerdict } from '../../src/p2p/rpc-tunnel.js'

/** A TCP server on loopback that answers every byte with its sha256 once the client ends, or echoes. */
async function echoServer (): Promise<{ port: number, sockets: Set<net.Socket>, close: () => Promise<void> }> {
  const sockets = new Set<net.Socket>()
  const server = net.createServer(s => {
    sockets.add(s)
    s.on('close', () => sockets.delete(s))
    s.on('error', () => {})
    s.pipe(s)
  })
  await new Promise<void>(resolve => server.listen(0, '127.0.0.1', resolve))
  return {
    port: (server.address() as net.AddressInfo).port,
    sockets,
    close: async () => { for (const s of sockets) s.destroy(); await new Promise<void>(resolve => server.close(() => resolve())) }
  }
}

/** 64 MiB: more than yamux's largest stream window (16 MiB), as one tensor of a real model is. */
const BIG = 64 * 1024 * 1024

/**
 * A slow reader on loopback, like rpc-server copying a large tensor: it stops reading for a while
 * every few MiB, then answers with the sha256 of the BIG bytes it got.
 */
async function slowSink (): Promise<{ port: number, close: () => Promise<void> }> {
  const sockets = new Set<net.Socket>()
  const server = net.createServer(s => {
    sockets.add(s)
    s.on('close', () => sockets.delete(s))
    s.on('error', () => {})
    const hash = createHash('sha256')
    let got = 0
    let sinceStall = 0
    s.on('data', (d: Buffer) => {
      hash.update(d)
      got += d.byteLength
      sinceStall += d.byteLength
      if (got >= BIG) { s.write(hash.digest()); return }
      if (sinceStall >= 4 * 1024 * 1024) {
        sinceStall = 0
        s.pause()
        setTimeout(() => { s.resume() }, 150)
      }
    })
  })
  await new Promise<void>(resolve => server.listen(0, '127.0.0.1', resolve))
  return {
    port: (server.address() as net.AddressInfo).port,
    close: async () => { for (const s of sockets) s.destroy(); await new Promise<void>(resolve => server.close(() => resolve())) }
  }
}

async function connect (port: number, host = '127.0.0.1'): Promise<net.Socket> {
  return await new Promise((resolve, reject) => {
    const s = net.connect({ host, port }, () => resolve(s))
    s.once('error', reject)
  })
}

/** Resolves with how the socket ended: 'end' (clean), 'error' or 'close'. */
async function ended (s: net.Socket, ms = 10_000): Promise<string> {
  return await new Promise((resolve, reject) => {
    const t = setTimeout(() => reject(new Error('socket stayed open')), ms)
    const done = (how: string) => () => { clearTimeout(t); resolve(how) }
    s.once('end', done('end'))
    s.once('error', done('error'))
    s.once('close', done('close'))
  })
}

describe('rpc tunnel header', () => {
  it('round-trips a model name and refuses empty or too long names', () => {
    const h = encodeTunnelHeader('tiny-model')
    assert.deepEqual(decodeTunnelHeader(h), { model: 'tiny-model', used: 11 })
    assert.equal(decodeTunnelHeader(h.subarray(0, 5)), null)
    assert.equal(decodeTunnelHeader(new Uint8Array(0)), null)
    assert.throws(() => decodeTunnelHeader(Uint8Array.of(0)))
    assert.throws(() => encodeTunnelHeader(''))
    assert.throws(() => encodeTunnelHeader('x'.repeat(256)))
    assert.throws(() => decodeTunnelHeader(Uint8Array.of(2, 0xff, 0xfe)))
  })
})

describe('rpc tunnel between hosts', () => {
  let head: Host
  let worker: Host
  let outsider: Host
  let headTunnel: RpcTunnelService
  let workerTunnel: RpcTunnelService
  let outsiderTunnel: RpcTunnelService
  let target: Awaited<ReturnType<typeof echoServer>>
  let sink: Awaited<ReturnType<typeof slowSink>>
  const refusals: Array<{ peer: string, model: string, reason: string }> = []
  const trustRefusals: string[] = []

  before(async () => {
    setLogSink(() => {})
    target = await echoServer()
    sink = await slowSink()
    const headKey = await createIdentity()
    const workerKey = await createIdentity()
    const outsiderKey = await createIdentity()
    const { peerIdFromPrivateKey } = await import('@libp2p/peer-id')
    const headId = peerIdFromPrivateKey(headKey).toString()
    const workerId = peerIdFromPrivateKey(workerKey).toString()
    // Admission mode: only the listed peers are members. The outsider can connect (no swarm key
    // here) but is no member, the case a pnet-less LAN peer or a revoked one is in.
    const workerTrust = new TrustPolicy({ mode: 'admission', allow: [headId] })
    workerTrust.on('refused', (peer, protocol) => { if (protocol === RPC_TUNNEL_PROTOCOL) trustRefusals.push(peer) })
    head = await createHost({ privateKey: headKey, listen: ['/ip4/127.0.0.1/tcp/0'], mdns: false, mdnsIntervalMs: 1000, trust: new TrustPolicy({ mode: 'admission', allow: [workerId] }) })
    worker = await createHost({ privateKey: workerKey, listen: ['/ip4/127.0.0.1/tcp/0'], mdns: false, mdnsIntervalMs: 1000, trust: workerTrust })
    outsider = await createHost({ privateKey: outsiderKey, listen: ['/ip4/127.0.0.1/tcp/0'], mdns: false, mdnsIntervalMs: 1000 })
    headTunnel = new RpcTunnelService(head)
    workerTunnel = new RpcTunnelService(worker)
    outsiderTunnel = new RpcTunnelService(outsider)
    await workerTunnel.serve({
      authorize: (peer, model): TunnelVerdict => peer === headId && model === 'big' ? { port: target.port } : peer === headId && model === 'slow' ? { port: sink.port } : { refused: `no split of '${model}' granted to ${peer.slice(-6)}` },
      onRefused: (peer, model, reason) => { refusals.push({ peer, model, reason }) }
    })
    for (const h of [head, outsider]) await h.dial(worker.getMultiaddrs()[0])
  })

  after(async () => {
    await headTunnel.stop()
    await workerTunnel.stop()
    await outsiderTunnel.stop()
    await Promise.all([head.stop(), worker.stop(), outsider.stop()])
    await target.close()
    await sink.close()
    setLogSink(() => {})
  })

  it('carries bytes unchanged both ways, megabytes at a time, with back-pressure', async () => {
    const l = await headTunnel.listen(worker.peerId.toString(), 'big')
    const s = await connect(l.port)
    const payload = randomBytes(6 * 1024 * 1024)
    const got: Buffer[] = []
    let n = 0
    const all = new Promise<void>(resolve => s.on('data', (d: Buffer) => { got.push(d); n += d.byteLength; if (n >= payload.byteLength) resolve() }))
    s.write(payload)
    await all
    assert.equal(createHash('sha256').update(Buffer.concat(got)).digest('hex'), createHash('sha256').update(payload).digest('hex'))
    assert.ok(workerTunnel.stats.bytesToWorker >= payload.byteLength)
    // The client ends: the worker's socket to rpc-server ends too.
    s.end()
    await ended(s)
    const deadline = Date.now() + 10_000
    while (target.sockets.size > 0 && Date.now() < deadline) await new Promise(resolve => setTimeout(resolve, 20))
    assert.equal(target.sockets.size, 0, 'the worker side closed its rpc-server connection')
    await l.close()
  })

  it('carries a transfer larger than a yamux window to a reader that stalls, without a reset', async () => {
    // A paused stream still receives what the remote's window allowed (up to 16 MiB): the read
    // buffer limit must hold that, or a slow rpc-server resets the tunnel mid-tensor.
    const l = await headTunnel.listen(worker.peerId.toString(), 'slow')
    const s = await connect(l.port)
    const chunk = randomBytes(1024 * 1024)
    const expected = createHash('sha256')
    const answer = new Promise<Buffer>((resolve, reject) => {
      let buf = Buffer.alloc(0)
      s.on('data', (d: Buffer) => { buf = Buffer.concat([buf, d]); if (buf.byteLength >= 32) resolve(buf) })
      s.once('close', () => { reject(new Error('the tunnel closed before the answer')) })
    })
    for (let sent = 0; sent < BIG; sent += chunk.byteLength) {
      expected.update(chunk)
      if (!s.write(chunk)) await new Promise(resolve => s.once('drain', resolve))
    }
    assert.deepEqual(await answer, expected.digest())
    s.end()
    await l.close()
  })

  it('listens on loopback only: the machine\'s other addresses refuse the port', async () => {
    const l = await headTunnel.listen(worker.peerId.toString(), 'big')
    const others = Object.values(networkInterfaces()).flat().filter(a => a != null && !a.internal && a.family === 'IPv4').map(a => a!.address)
    assert.ok(others.length > 0, 'this test needs a non-loopback interface')
    for (const addr of others) {
      await assert.rejects(connect(l.port, addr), (err: NodeJS.ErrnoException) => err.code === 'ECONNREFUSED')
    }
    await l.close()
  })

  it('refuses a member asking for a split it was not granted, and audits it', async () => {
    const l = await headTunnel.listen(worker.peerId.toString(), 'other-model')
    const before = workerTunnel.stats.refused
    const s = await connect(l.port)
    s.write('hello')
    await ended(s)
    assert.equal(workerTunnel.stats.refused, before + 1)
    assert.equal(refusals.at(-1)?.model, 'other-model')
    assert.match(refusals.at(-1)?.reason ?? '', /no split/)
    assert.equal(target.sockets.size, 0, 'nothing reached rpc-server')
    await l.close()
  })

  it('refuses a host outside the mesh before its header is read', async () => {
    const l = await outsiderTunnel.listen(worker.peerId.toString(), 'big')
    const s = await connect(l.port)
    s.write('x')
    await ended(s)
    assert.ok(trustRefusals.includes(outsider.peerId.toString()), 'the host guard refused the outsider')
    assert.equal(target.sockets.size, 0, 'nothing reached rpc-server')
    await l.close()
  })

  it('refuses a stream that never sends its header, in bounded time', async () => {
    const stream = await head.dialProtocol(worker.peerId, RPC_TUNNEL_PROTOCOL)
    const t0 = Date.now()
    await new Promise<void>((resolve, reject) => {
      const t = setTimeout(() => reject(new Error('stream stayed open')), 15_000)
      stream.addEventListener('close', () => { clearTimeout(t); resolve() }, { once: true })
    })
    assert.ok(Date.now() - t0 < 14_000)
  })

  it('ends the client connection when the worker side dies (no hang)', async () => {
    const l = await headTunnel.listen(worker.peerId.toString(), 'big')
    const s = await connect(l.port)
    s.write('ping')
    await new Promise<void>(resolve => s.once('data', () => resolve()))
    // rpc-server killed: its connections drop.
    for (const sock of target.sockets) sock.destroy()
    const how = await ended(s)
    assert.ok(['end', 'error', 'close'].includes(how))
    await l.close()
  })

  it('ends connections at once when the worker is unreachable', async () => {
    const gone = await createHost({ privateKey: await createIdentity(), listen: ['/ip4/127.0.0.1/tcp/0'], mdns: false, mdnsIntervalMs: 1000 })
    const id = gone.peerId.toString()
    await gone.stop()
    const l = await headTunnel.listen(id, 'big')
    const s = await connect(l.port)
    await ended(s, 15_000)
    await l.close()
  })
})

