/**
 * `/shepherd/swim/1.1.0` links over real libp2p hosts: frames ride one long-lived stream per
 * pair of members (not a stream each), a member that speaks only 1.0.0 is still probed and
 * answered, idle links are closed and reopened when needed, and a hostile member on a link
 * (garbage after a valid frame, silence, a flood of valid frames, a link it never closes) gets a
 * reset, a report where it broke the protocol, and the node keeps answering others.
 */
import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import type { Stream } from '@libp2p/interface'
import { waitFor } from '../support/cluster.js'
import { newHost } from '../support/fuzz-hosts.js'
import type { Host } from '../../src/p2p/host.js'
import { FramedStream } from '../../src/p2p/framing.js'
import { SWIM_LAN_DEFAULTS, type SwimStatus } from '../../src/p2p/swim.js'
import { SwimDriver, type SwimDriverOptions } from '../../src/p2p/swim-driver.js'
import { MAX_SWIM_FRAME_BYTES, SWIM_LINK_PROTOCOL, encodeSwimFrame, type SwimFrame } from '../../src/p2p/swim-protocol.js'

interface Node { host: Host, id: string, swim: SwimDriver, changes: Array<{ id: string, status: SwimStatus }>, violations: string[] }

async function node (extra: Partial<SwimDriverOptions> = {}, probeIntervalMs = 200): Promise<Node> {
  const host = await newHost()
  const n: Node = { host, id: host.peerId.toString(), swim: undefined as any, changes: [], violations: [] }
  n.swim = new SwimDriver(host, {
    config: { ...SWIM_LAN_DEFAULTS, probeIntervalMs, probeTimeoutMs: 100 },
    incarnation: Date.now(),
    boot: Date.now(),
    snapshotVersion: () => 0,
    verified: id => host.getConnections().some(c => c.remotePeer.toString() === id),
    onChange: (id, status) => { n.changes.push({ id, status }) },
    onViolation: (_p, reason) => { n.violations.push(reason) },
    readTimeoutMs: 500,
    ...extra
  })
  await n.swim.start()
  return n
}

async function meshOf (nodes: Node[]): Promise<void> {
  for (let i = 0; i < nodes.length; i++) {
    for (let j = i + 1; j < nodes.length; j++) await nodes[i].host.dial(nodes[j].host.getMultiaddrs()[0])
  }
  for (const n of nodes) for (const o of nodes) if (o !== n) n.swim.add(o.id)
}

const statusOn = (n: Node, of: Node): SwimStatus | undefined => n.swim.member(of.id)?.status
const sleep = async (ms: number): Promise<void> => { await new Promise(resolve => setTimeout(resolve, ms)) }
const frame = (m: SwimFrame['m'], inc = 3): SwimFrame => ({ v: 1, inc, boot: 1, snap: 0, m })

/** How a stream ended, as seen by its opener within `ms`: reset by the other end, closed by it, or still open. */
async function ending (stream: Stream, ms: number): Promise<'reset' | 'closed' | 'open'> {
  const done = await Promise.race([
    new Promise<'reset' | 'closed'>(resolve => {
      stream.addEventListener('remoteCloseWrite', () => { resolve('closed') })
      stream.addEventListener('close', evt => { resolve((evt as any).error != null ? 'reset' : 'closed') })
    }),
    sleep(ms).then(() => 'open' as const)
  ])
  if (stream.status === 'reset' || stream.status === 'aborted') return 'reset'
  return done
}

describe('SWIM links between drivers', () => {
  let a: Node, b: Node, c: Node
  before(async () => {
    a = await node()
    b = await node()
    // C speaks only one frame per stream (a node of an earlier version).
    c = await node({ legacyOnly: true })
    await meshOf([a, b, c])
  })
  after(async () => {
    for (const n of [a, b, c]) await n.swim.stop()
    await Promise.all([a, b, c].map(async n => { await n.host.stop() }))
  })

  it('frames ride one link per pair, and a 1.0.0-only member is probed and answers', async () => {
    await waitFor('all alive everywhere', () => [a, b, c].every(n => [a, b, c].every(o => o === n || statusOn(n, o) === 'alive')), 5000)
    await sleep(500)
    const sent0 = a.swim.stats.framesSent + b.swim.stats.framesSent
    const links0 = a.swim.stats.linksOpened + b.swim.stats.linksOpened
    await sleep(2000)
    const sent = a.swim.stats.framesSent + b.swim.stats.framesSent - sent0
    // 200 ms probes: A and B each send ~10 probes and answer ~10 in 2 s, none on a new stream.
    assert.ok(sent >= 16, `${sent} frames sent`)
    assert.equal(a.swim.stats.linksOpened + b.swim.stats.linksOpened - links0, 0, 'no link opened while the pair talks')
    // A and B: one link each way at most (both may dial at once); C: none.
    assert.ok(a.swim.linkCount() >= 1 && a.swim.linkCount() <= 2, `A holds ${a.swim.linkCount()} links`)
    assert.equal(c.swim.stats.linksOpened, 0)
    assert.ok(c.swim.stats.framesReceived > 0 && c.swim.stats.framesSent > 0)
    for (const n of [a, b, c]) {
      assert.deepEqual(n.changes.filter(x => x.status !== 'alive'), [], 'nobody suspected')
      assert.equal(n.swim.stats.violations, 0)
    }
  })
})

describe('SWIM links that go idle', () => {
  let a: Node, b: Node
  before(async () => {
    // Probes every 2.5 s, links closed after 600 ms idle: each probe finds its link closed.
    a = await node({ linkIdleMs: 600 }, 2500)
    b = await node({ linkIdleMs: 600 }, 2500)
    await meshOf([a, b])
  })
  after(async () => {
    for (const n of [a, b]) await n.swim.stop()
    await Promise.all([a, b].map(async n => { await n.host.stop() }))
  })

  it('are closed by both ends, reopened for the next probe, and nobody is suspected for it', async () => {
    await waitFor('A and B alive', () => statusOn(a, b) === 'alive' && statusOn(b, a) === 'alive', 8000)
    await waitFor('idle links closed on both ends', () => a.swim.linkCount() === 0 && b.swim.linkCount() === 0, 8000)
    const opened = a.swim.stats.linksOpened
    const received = a.swim.stats.framesReceived
    await waitFor('a link reopened for a probe', () => a.swim.stats.linksOpened > opened && a.swim.stats.framesReceived > received, 8000)
    await waitFor('closed again', () => a.swim.linkCount() === 0 && b.swim.linkCount() === 0, 8000)
    for (const n of [a, b]) {
      assert.deepEqual(n.changes.filter(x => x.status !== 'alive'), [])
      assert.equal(n.swim.stats.violations, 0)
      assert.equal(n.swim.stats.sendFailures, 0)
    }
  })
})

describe('a hostile member on a SWIM link', () => {
  let victim: Node
  let attacker: Host
  let honest: Host
  before(async () => {
    victim = await node({ maxFramesPerSec: 20, linkIdleMs: 800 })
    ;[attacker, honest] = await Promise.all([newHost(), newHost()])
    await attacker.dial(victim.host.getMultiaddrs()[0])
    await honest.dial(victim.host.getMultiaddrs()[0])
  })
  after(async () => {
    await victim.swim.stop()
    await Promise.all([victim.host.stop(), attacker.stop(), honest.stop()])
  })

  const open = async (from: Host): Promise<{ stream: Stream, framed: FramedStream }> => {
    const stream = await from.dialProtocol(victim.host.peerId, SWIM_LINK_PROTOCOL, { signal: AbortSignal.timeout(3000) })
    return { stream, framed: new FramedStream(stream, MAX_SWIM_FRAME_BYTES) }
  }

  it('garbage after a valid frame, or a link opened and left silent: reset and reported', async () => {
    const v0 = victim.violations.length
    const l1 = await open(attacker)
    await l1.framed.write(frame({ t: 'ping', seq: 1, u: [] }))
    const ack = await l1.framed.read(undefined, 3000) as SwimFrame
    assert.equal(ack.m.t, 'ack', 'a valid ping on a link is acked on it')
    l1.stream.send(new Uint8Array([5, 0x7b, 0x6e, 0x6f, 0x74, 0x20]))
    assert.equal(await ending(l1.stream, 3000), 'reset')
    const l2 = await open(attacker)
    assert.equal(await ending(l2.stream, 3000), 'reset', 'silent opener reset')
    assert.equal(victim.violations.length, v0 + 2, victim.violations.join('; '))
    assert.match(victim.violations[v0 + 1], /no frame/)
  })

  it('a flood of valid frames: dropped past the rate, then the link is reset and reported; others are still answered', async () => {
    const v0 = victim.violations.length
    const received0 = victim.swim.stats.framesReceived
    const l = await open(attacker)
    const gossip = encodeSwimFrame(frame({ t: 'gossip', u: [] }, 4))
    let sent = 0
    try {
      for (let burst = 0; burst < 100 && l.stream.writeStatus === 'writable'; burst++) {
        for (let i = 0; i < 10; i++) { await l.framed.writeBytes([gossip]); sent++ }
        await sleep(5)
      }
    } catch {}
    assert.equal(await ending(l.stream, 3000), 'reset')
    assert.ok(victim.swim.stats.rateLimited > 0)
    assert.ok(victim.swim.stats.framesReceived - received0 <= 60, `${victim.swim.stats.framesReceived - received0} of ${sent} frames taken`)
    assert.equal(victim.violations.length, v0 + 1)
    assert.match(victim.violations[v0], /frames\/s/)
    // Another member is answered as before.
    const h = await open(honest)
    await h.framed.write(frame({ t: 'ping', seq: 9, u: [] }))
    assert.equal((await h.framed.read(undefined, 3000) as SwimFrame).m.t, 'ack')
    h.stream.abort(new Error('done'))
  })

  it('a link its peer never closes is reset once idle, without a report', async () => {
    const v0 = victim.violations.length
    const third = await newHost()
    await third.dial(victim.host.getMultiaddrs()[0])
    const l = await open(third)
    // It says it is leaving (so it is neither probed nor poked): the link idles, and the victim
    // closes it; the peer never closes its side, and the link is reset after the grace period.
    const id = third.peerId.toString()
    await l.framed.write(frame({ t: 'gossip', u: [[id, 5, 'left', id]] }, 5))
    assert.equal(await ending(l.stream, 20_000), 'closed', 'closed by the victim')
    assert.equal(await ending(l.stream, 8000), 'reset', 'then reset')
    assert.equal(victim.violations.length, v0)
    await third.stop()
  })
})
