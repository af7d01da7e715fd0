/**
 * The redialer's dial slots, on a real libp2p host: targets whose handshakes stall (a TCP port
 * that accepts and then says nothing, as a peer swamped with work looks from outside) are dialed
 * a few at a time, not all at once; every waiting target still gets its turn, and a real peer
 * queued behind them is connected.
 */
import { after, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import net from 'node:net'
import { newHost } from '../support/fuzz-hosts.js'
import { waitFor } from '../support/cluster.js'
import { createIdentity, peerIdOf } from '../../src/p2p/identity.js'
import { Redialer } from '../../src/p2p/redialer.js'
import type { Host } from '../../src/p2p/host.js'

describe('redialer dial slots', () => {
  const hosts: Host[] = []
  const servers: net.Server[] = []
  after(async () => {
    for (const s of servers) s.close()
    await Promise.all(hosts.map(async h => { await h.stop() }))
  })

  it('dials at most maxDialsInFlight at once; the others wait their turn, a real peer among them', async () => {
    // One tarpit port per stalled target: accepts, holds the socket, answers nothing.
    const dialedPorts = new Set<number>()
    const tarpits: Array<{ id: string, addr: string }> = []
    for (let i = 0; i < 6; i++) {
      const server = net.createServer(sock => {
        dialedPorts.add((server.address() as net.AddressInfo).port)
        sock.on('error', () => {})
      })
      servers.push(server)
      await new Promise<void>(resolve => server.listen(0, '127.0.0.1', resolve))
      const id = (await peerIdOf(await createIdentity())).toString()
      tarpits.push({ id, addr: `/ip4/127.0.0.1/tcp/${(server.address() as net.AddressInfo).port}/p2p/${id}` })
    }
    const dialer = await newHost()
    const peer = await newHost()
    hosts.push(dialer, peer)
    // Dials under way, as the host sees them (a timed-out dial's socket may linger in libp2p's
    // upgrader for a while, so the tarpits' sockets do not count them).
    let inFlight = 0
    let maxInFlight = 0
    const dial = dialer.dial.bind(dialer)
    dialer.dial = (async (...args: Parameters<Host['dial']>) => {
      inFlight++
      maxInFlight = Math.max(maxInFlight, inFlight)
      try { return await dial(...args) } finally { inFlight-- }
    }) as Host['dial']
    const redialer = new Redialer(dialer, {
      minMs: 100,
      maxMs: 400,
      dialTimeoutMs: 600,
      maxDialsInFlight: 2,
      hintDialsPerSec: 100,
      onRefused: () => {},
      isWanted: () => true
    })
    try {
      for (const t of tarpits) assert.ok(redialer.addHint(t.id, [t.addr]))
      // The real peer comes last: it waits for a slot like the others.
      redialer.addPeer(peer.peerId.toString(), [`${peer.getMultiaddrs()[0].toString()}`])
      redialer.start()
      await waitFor('every stalled target dialed', () => dialedPorts.size === tarpits.length, 10_000)
      await waitFor('the real peer connected', () => dialer.getConnections(peer.peerId).length > 0, 10_000)
      assert.equal(maxInFlight, 2, `${maxInFlight} dials at once`)
      assert.ok(redialer.stats.failed >= tarpits.length, `failed dials ${redialer.stats.failed}`)
    } finally {
      redialer.stop()
    }
  })
})
