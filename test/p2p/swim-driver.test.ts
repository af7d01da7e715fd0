/**
 * SWIM on real libp2p hosts (src/p2p/swim-driver.ts around swim.ts): members find each other
 * alive, a node gone silent as under SIGSTOP (its driver paused: no probes, no answers, its
 * connections open) is declared dead by every other node, and once it resumes it refutes with a
 * higher incarnation and is alive everywhere again. Then a hostile member built from the
 * project's own stack keeps telling everyone that an honest node is dead (with forged
 * confirmations): the honest node refutes, and nobody declares it dead. Last, a process kept off
 * the CPU past a probe's interval (its thread blocked just after a ping went out) does not call
 * the probe failed while the ack waits unread in its socket buffer. And a node that took a live
 * member for dead, with no connection to it, dials it to tell it (gossip to the dead): the member
 * refutes and is alive there again, though it never probes that node itself.
 */
import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { spawn, type ChildProcess } from 'node:child_process'
import { once } from 'node:events'
import { dirname, join, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'
import { multiaddr } from '@multiformats/multiaddr'
import { waitFor } from '../support/cluster.js'
import { newHost } from '../support/fuzz-hosts.js'
import type { Host } from '../../src/p2p/host.js'
import { FramedStream } from '../../src/p2p/framing.js'
import { SWIM_LAN_DEFAULTS, type SwimStatus } from '../../src/p2p/swim.js'
import { SwimDriver } from '../../src/p2p/swim-driver.js'
import { MAX_SWIM_FRAME_BYTES, SWIM_PROTOCOL, SWIM_SUSPICION_MAX_MULT, type SwimFrame } from '../../src/p2p/swim-protocol.js'

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..')

/** The live defaults (src/config/options.ts): 500 ms probes, 250 ms timeout. */
const CONFIG = { ...SWIM_LAN_DEFAULTS, probeIntervalMs: 500, probeTimeoutMs: 250, suspicionMaxMult: SWIM_SUSPICION_MAX_MULT }

interface Node { host: Host, id: string, swim: SwimDriver, changes: Array<{ id: string, status: SwimStatus, inc: number, at: number }> }

async function node (): Promise<Node> {
  const host = await newHost()
  const n: Node = { host, id: host.peerId.toString(), swim: undefined as any, changes: [] }
  n.swim = new SwimDriver(host, {
    config: CONFIG,
    incarnation: Date.now(),
    boot: Date.now(),
    snapshotVersion: () => 0,
    verified: id => host.getConnections().some(c => c.remotePeer.toString() === id),
    onChange: (id, status, inc) => { n.changes.push({ id, status, inc, at: Date.now() }) }
  })
  await n.swim.start()
  return n
}

describe('SWIM driver over real libp2p hosts', () => {
  let nodes: Node[] = []
  let attacker: Host

  before(async () => {
    nodes = await Promise.all([node(), node(), node(), node()])
    attacker = await newHost()
    const all = [...nodes.map(n => n.host), attacker]
    for (let i = 0; i < all.length; i++) {
      for (let j = i + 1; j < all.length; j++) await all[i].dial(all[j].getMultiaddrs()[0])
    }
    for (const n of nodes) for (const o of nodes) if (o !== n) n.swim.add(o.id)
  })

  after(async () => {
    for (const n of nodes) await n.swim.stop()
    await Promise.all([...nodes.map(async n => { await n.host.stop() }), attacker.stop()])
  })

  const statusOn = (n: Node, of: Node): SwimStatus | undefined => n.swim.member(of.id)?.status

  it('declares a silent member dead everywhere, and alive again once it resumes and refutes', async () => {
    const [a, b, c, d] = nodes
    await waitFor('all alive everywhere', () => nodes.every(n => nodes.every(o => o === n || statusOn(n, o) === 'alive')), 5000)
    const inc0 = d.swim.incarnation
    const sent0 = a.swim.stats.framesSent
    await new Promise(resolve => setTimeout(resolve, 2000))
    // One probe (and its ack, plus answers to others' probes) per interval: a handful of frames a second, not one per member.
    const perSec = (a.swim.stats.framesSent - sent0) / 2
    assert.ok(perSec < 12, `${perSec} frames/s`)

    d.swim.pause()
    const detect = (await waitFor('D dead on A, B and C', () => [a, b, c].every(n => statusOn(n, d) === 'dead'), 12_000)).ms
    console.log(`# silent member dead everywhere after ${detect.toFixed(0)} ms`)
    for (const n of [a, b, c]) assert.ok(n.changes.some(x => x.id === d.id && x.status === 'suspect'), 'suspected before dead')

    d.swim.resume()
    const back = (await waitFor('D alive again on A, B and C', () => [a, b, c].every(n => statusOn(n, d) === 'alive'), 8000)).ms
    console.log(`# resumed member alive everywhere after ${back.toFixed(0)} ms`)
    assert.ok(d.swim.incarnation > inc0, 'D refuted with a higher incarnation')
    // Nobody else was ever declared dead.
    for (const n of nodes) assert.deepEqual(n.changes.filter(x => x.status === 'dead' && x.id !== d.id), [])
  })

  it('a hostile member claiming an honest node dead: the node refutes, nobody declares it dead', async () => {
    const [a, b, c, d] = nodes
    await waitFor('all alive everywhere', () => nodes.every(n => nodes.every(o => o === n || statusOn(n, o) === 'alive')), 8000)
    const inc0 = b.swim.incarnation
    const mark = Date.now()
    // The attacker (a member: it holds a connection and speaks the protocol) tells A, C and D,
    // every 100 ms for 4 s, that B is dead at B's current incarnation, "confirmed" by C and D.
    const claim = async (to: Node): Promise<void> => {
      const inc = b.swim.incarnation
      const frame: SwimFrame = {
        v: 1, inc: 1, boot: 1, snap: 0,
        m: { t: 'gossip', u: [[b.id, inc, 'dead', attacker.peerId.toString()], [b.id, inc, 'dead', c.id], [b.id, inc, 'suspect', d.id], [b.id, inc, 'left', b.id]] }
      }
      try {
        const s = await attacker.dialProtocol(to.host.peerId, SWIM_PROTOCOL, { signal: AbortSignal.timeout(1000) })
        await new FramedStream(s, MAX_SWIM_FRAME_BYTES).write(frame)
        await s.close()
      } catch {}
    }
    while (Date.now() - mark < 4000) {
      await Promise.all([a, c, d].map(claim))
      await new Promise(resolve => setTimeout(resolve, 100))
    }
    // Suspicions come and go (B refutes each); a death never.
    await waitFor('B alive everywhere after the attack', () => [a, c, d].every(n => statusOn(n, b) === 'alive'), 5000)
    for (const n of [a, c, d]) assert.deepEqual(n.changes.filter(x => x.id === b.id && x.at >= mark && (x.status === 'dead' || x.status === 'left')), [])
    assert.ok(b.swim.incarnation > inc0, 'B refuted')
    assert.ok([a, c, d].some(n => n.changes.some(x => x.id === b.id && x.at >= mark && x.status === 'suspect')), 'the claims were heard (as suspicions)')
    assert.ok([a, c, d].reduce((sum, n) => sum + n.swim.stats.screened, 0) > 0)
  })
})

describe('SWIM driver: a member taken for dead with no connection to it', () => {
  it('is dialed and told, refutes, and is alive again there', async () => {
    const [x, y, z] = await Promise.all([node(), node(), node()])
    try {
      // Y knows only Z and is frozen before X ever speaks to it, so it will never probe X itself.
      y.swim.add(z.id)
      y.swim.pause()
      for (const [a, b] of [[x, y], [x, z], [y, z]]) await a.host.dial(b.host.getMultiaddrs()[0])
      x.swim.add(y.id)
      x.swim.add(z.id)
      z.swim.add(x.id)
      z.swim.add(y.id)
      await waitFor('Y dead on X and Z', () => x.swim.member(y.id)?.status === 'dead' && z.swim.member(y.id)?.status === 'dead', 12_000)
      // The link between X and Y goes: Z's word that Y lives is then no word X can verify.
      await x.host.hangUp(y.host.peerId)
      y.swim.resume()
      await waitFor('Y alive on Z (connected: poked, refuted)', () => z.swim.member(y.id)?.status === 'alive', 8000)
      const back = await waitFor('Y alive on X', () => x.swim.member(y.id)?.status === 'alive', 12_000)
      console.log(`# alive on X ${back.ms.toFixed(0)} ms after Z`)
      assert.ok(x.host.getConnections(y.host.peerId).length > 0, 'X dialed Y')
    } finally {
      for (const n of [x, y, z]) await n.swim.stop()
      await Promise.all([x, y, z].map(async n => { await n.host.stop() }))
    }
  })
})

describe('SWIM driver on a starved event loop', () => {
  let responder: ChildProcess | undefined
  let main: Node | undefined
  after(async () => {
    responder?.kill('SIGKILL')
    await main?.swim.stop()
    await main?.host.stop()
  })

  it('does not fail a probe whose ack came while this process was off the CPU', async () => {
    // The target runs in a process of its own, so it answers while this one is blocked.
    responder = spawn(process.execPath, ['--import', 'tsx', join(ROOT, 'test', 'support', 'swim-responder.ts')], { cwd: ROOT, stdio: ['ignore', 'pipe', 'inherit'] })
    let line = ''
    responder.stdout!.setEncoding('utf8')
    while (!line.includes('\n')) line += (await once(responder.stdout!, 'data') as [string])[0]
    const [targetId, addr] = line.trim().split(' ')
    main = await node()
    const m = main
    await m.host.dial(multiaddr(addr))
    m.swim.add(targetId)
    await waitFor('the target alive', () => m.swim.member(targetId)?.status === 'alive', 5000)
    await new Promise(resolve => setTimeout(resolve, 1500))
    const before = m.swim.health()
    assert.equal(before.failedProbes, 0, 'no probe failed on an idle loop')

    // Right after a ping goes out, block this thread past the probe's whole interval, as a
    // kernel that keeps the process off the CPU would: the ack is in the socket buffer, unread,
    // when the probe's deadlines come due.
    const driver = m.swim as unknown as { send: (to: string, msg: SwimFrame['m'], opts?: object) => Promise<void> }
    const send = driver.send.bind(driver)
    let armed = false
    let blocked = 0
    driver.send = async (to, msg, opts) => {
      await send(to, msg, opts)
      if (armed && msg.t === 'ping' && to === targetId) {
        armed = false
        // From the check phase: the loop's next stop is its timers, with the probe's deadline due.
        setImmediate(() => {
          blocked++
          const end = Date.now() + 1200
          while (Date.now() < end) { /* off the CPU */ }
        })
      }
    }
    for (let i = 0; i < 5; i++) {
      armed = true
      await waitFor('a blocked probe', () => !armed, 5000)
      await new Promise(resolve => setTimeout(resolve, 1000))
    }
    const after = m.swim.health()
    assert.equal(blocked, 5)
    // The blocks made ticks come due while this thread was off the CPU. Not one late tick per
    // block: how the ticks around a block fall depends on the frames read with them (the target's
    // probes of this node, its answers); 0 to 3 per block were seen, 4 to 8 in all.
    assert.ok(after.lateTicks - before.lateTicks >= 1, `the blocks made no tick late (${after.lateTicks - before.lateTicks})`)
    assert.equal(after.failedProbes, 0, 'no probe judged failed with its ack unread')
    assert.deepEqual(m.changes.filter(x => x.id === targetId && x.status !== 'alive'), [], 'the target was never suspected')
  })
})
