/**
 * The redialer's dial slots, on a real libp2p host: targets whose handshakes stall (a TCP port
 * that accepts and then says nothing, as a peer swamped with work looks from outside) are dialed
 * a few at a time, not all at once, in half the slots; every waiting target still gets its turn,
 * and a real peer met before is dialed beside them at once.
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

  it('dials peers heard of through gossip in half the slots at most; each waits its turn, and a peer met before goes beside them', async () => {
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
    const started = performance.now()
    const redialer = new Redialer(dialer, {
      minMs: 100,
      maxMs: 400,
      dialTimeoutMs: 600,
      maxDialsInFlight: 4,
      hintDialsPerSec: 100,
      onRefused: () => {},
      isWanted: () => true
    })
    try {
      for (const t of tarpits) assert.ok(redialer.addHint(t.id, [t.addr]))
      // The real peer comes last: it waits for a slot like the others.
      redialer.addPeer(peer.peerId.toString(), [`${peer.getMultiaddrs()[0].toString()}`])
      redialer.start()
      // Hinted targets (heard of through gossip) take half the slots at most: the peer this node
      // met is dialed beside them, not after them.
      await waitFor('the real peer connected', () => dialer.getConnections(peer.peerId).length > 0, 10_000)
      assert.ok(performance.now() - started < 600, 'the met peer did not wait for a stalled dial to time out')
      await waitFor('every stalled target dialed', () => dialedPorts.size === tarpits.length, 10_000)
      assert.equal(maxInFlight, 3, `${maxInFlight} dials at once (2 hinted slots, and the met peer)`)
      assert.ok(redialer.stats.failed >= tarpits.length, `failed dials ${redialer.stats.failed}`)
    } finally {
      redialer.stop()
    }
  })
})
