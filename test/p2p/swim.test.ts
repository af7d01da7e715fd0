/**
 * The SWIM + Lifeguard state machine (src/p2p/swim.ts) driven with a fake clock: probes, indirect
 * probes, suspicion and its confirmations, refutation, incarnation rules, local health; then the
 * simulator (src/p2p/swim-sim.ts) for what only many nodes show: a node's messages a second do
 * not grow with the mesh, and detection and convergence complete without false positives.
 */
import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { SWIM_LAN_DEFAULTS, initSwim, memberOf, nextDeadline, step, type SwimAction, type SwimMessage, type SwimState } from '../../src/p2p/swim.js'
import { suspicionMinMs, suspicionTimeoutMs } from '../../src/p2p/suspicion.js'
import { simulate } from '../../src/p2p/swim-sim.js'

const sends = (actions: SwimAction[]): Array<{ to: string, msg: SwimMessage }> => actions.flatMap(a => a.t === 'send' ? [{ to: a.to, msg: a.msg }] : [])
const changes = (actions: SwimAction[]): string[] => actions.flatMap(a => a.t === 'change' ? [`${a.id}:${a.status}@${a.inc}`] : [])

/** Ticks `s` at each of its deadlines up to `until`, collecting what it does. */
function runUntil (s: SwimState, from: number, until: number): { actions: SwimAction[], now: number } {
  const actions: SwimAction[] = []
  let now = from
  for (let guard = 0; guard < 10_000; guard++) {
    const d = Math.max(now, nextDeadline(s))
    if (d > until) break
    now = d
    actions.push(...step(s, { t: 'tick' }, now).actions)
    if (nextDeadline(s) <= now) now++
  }
  return { actions, now: until }
}

describe('suspicion timing (Lifeguard)', () => {
  it('starts at the maximum and reaches the minimum after k confirmations', () => {
    assert.equal(suspicionMinMs(4, 1000, 1000), 12_000, '4 × log10(1000) × 1 s')
    assert.equal(suspicionMinMs(4, 3, 1000), 4000, 'log10 is at least 1')
    assert.equal(suspicionTimeoutMs(4000, 24_000, 2, 0), 24_000)
    const one = suspicionTimeoutMs(4000, 24_000, 2, 1)
    assert.ok(one < 24_000 && one > 4000, `one confirmation: ${one}`)
    assert.equal(suspicionTimeoutMs(4000, 24_000, 2, 2), 4000)
    assert.equal(suspicionTimeoutMs(4000, 24_000, 2, 9), 4000, 'never below the minimum')
  })
})

describe('SWIM step', () => {
  const base = ['a', 'b', 'c', 'd']

  it('probes one member per interval; an ack settles it and lowers local health', () => {
    const a = initSwim('a', SWIM_LAN_DEFAULTS, { base, seed: 1 })
    a.awareness = 2
    const t0 = a.nextProbeAt
    const out = step(a, { t: 'tick' }, t0).actions
    const pings = sends(out)
    assert.equal(pings.length, 1, 'one probe, to one member')
    assert.equal(pings[0].msg.t, 'ping')
    const target = pings[0].to
    const b = initSwim(target, SWIM_LAN_DEFAULTS, { base, seed: 2 })
    const reply = sends(step(b, { t: 'recv', from: 'a', msg: pings[0].msg }, t0 + 2).actions)
    assert.deepEqual(reply.map(r => [r.to, r.msg.t]), [['a', 'ack']])
    step(a, { t: 'recv', from: target, msg: reply[0].msg }, t0 + 4)
    assert.equal(a.awareness, 1)
    const rest = runUntil(a, t0 + 4, a.nextProbeAt - 1).actions
    assert.deepEqual(sends(rest), [], 'nothing more within the interval: no indirect probe, no gossip')
    assert.deepEqual(changes(rest), [])
  })

  it('asks k others when the direct probe times out, suspects at the end of the interval, declares dead when the suspicion expires', () => {
    const a = initSwim('a', SWIM_LAN_DEFAULTS, { base, seed: 3 })
    const t0 = a.nextProbeAt
    const target = sends(step(a, { t: 'tick' }, t0).actions)[0].to
    const req = sends(runUntil(a, t0, t0 + SWIM_LAN_DEFAULTS.probeTimeoutMs).actions)
    assert.equal(req.length, 2, 'the two other members are asked')
    assert.ok(req.every(r => r.msg.t === 'ping-req' && r.msg.target === target && r.to !== target))
    const endOfInterval = runUntil(a, t0 + SWIM_LAN_DEFAULTS.probeTimeoutMs, t0 + SWIM_LAN_DEFAULTS.probeIntervalMs)
    assert.ok(changes(endOfInterval.actions).includes(`${target}:suspect@0`))
    assert.equal(memberOf(a, target)?.status, 'suspect')
    // No nacks came from the two asked: this node trusts itself less (its timing stretches).
    assert.equal(a.awareness, 2)
    // n = 4, min = 4 × 1 × 1 s; k = 2 (4 - 2), 2 other members can confirm: max = 6 × min.
    const suspectedAt = t0 + SWIM_LAN_DEFAULTS.probeIntervalMs
    const before = runUntil(a, endOfInterval.now, suspectedAt + 24_000 - 1)
    assert.ok(!changes(before.actions).includes(`${target}:dead@0`), 'not dead before the maximum without confirmations')
    const at = runUntil(a, before.now, suspectedAt + 24_000 + 1)
    assert.ok(changes(at.actions).includes(`${target}:dead@0`), `dead at the maximum: ${changes(at.actions).join()}`)
  })

  it('smooths the round trip of direct acks (RFC 6298), leaving relayed acks and the timing alone', () => {
    const c = { ...SWIM_LAN_DEFAULTS, probeIntervalMs: 500, probeTimeoutMs: 250 }
    const a = initSwim('a', c, { base, seed: 5 })
    assert.equal(a.rtt, null)
    /** One probe, acked `rttMs` later by `by` (the target itself unless a helper relays it). */
    const probeOnce = (rttMs: number, relayed = false): void => {
      const t0 = a.nextProbeAt
      const ping = sends(step(a, { t: 'tick' }, t0).actions)[0]
      runUntil(a, t0, t0 + rttMs - 1)
      const by = relayed ? base.find(m => m !== 'a' && m !== ping.to)! : ping.to
      step(a, { t: 'recv', from: by, msg: { t: 'ack', seq: (ping.msg as { seq: number }).seq, u: [] } }, t0 + rttMs)
      runUntil(a, t0 + rttMs, a.nextProbeAt - 1)
    }
    probeOnce(8)
    assert.deepEqual(a.rtt, { srtt: 8, rttvar: 4 })
    probeOnce(16)
    assert.deepEqual(a.rtt, { srtt: 9, rttvar: 5 })
    probeOnce(300, true)
    assert.deepEqual(a.rtt, { srtt: 9, rttvar: 5 }, 'an ack relayed by an indirect prober is no round trip sample')
    assert.equal(a.nextProbeAt - a.probe!.sentAt, 500 * (a.awareness + 1), 'timing follows awareness only')
  })

  it('shortens a suspicion with independent confirmations', () => {
    const a = initSwim('a', SWIM_LAN_DEFAULTS, { base, seed: 4 })
    step(a, { t: 'recv', from: 'b', msg: { t: 'gossip', u: [['d', 0, 'suspect', 'b']] } }, 1000)
    assert.equal(memberOf(a, 'd')?.status, 'suspect')
    step(a, { t: 'recv', from: 'c', msg: { t: 'gossip', u: [['d', 0, 'suspect', 'c']] } }, 1100)
    step(a, { t: 'recv', from: 'b', msg: { t: 'gossip', u: [['d', 0, 'suspect', 'b']] } }, 1200)
    // b's repeat is no new confirmation; b and c are two: with a's own failed probes aside, one of k = 2.
    const s = a.suspicions.get('d')
    assert.equal(s?.confirmedBy.size, 2)
    step(a, { t: 'recv', from: 'a2', msg: { t: 'gossip', u: [['d', 0, 'suspect', 'a2']] } }, 1300)
    const { actions } = runUntil(a, 1300, 1000 + 4000 + 1)
    assert.ok(changes(actions).includes('d:dead@0'), 'k confirmations: dead at the minimum (4 s)')
  })

  it('refutes a suspicion of itself with a higher incarnation, which clears it elsewhere', () => {
    const a = initSwim('a', SWIM_LAN_DEFAULTS, { base, seed: 5 })
    const b = initSwim('b', SWIM_LAN_DEFAULTS, { base, seed: 6 })
    step(b, { t: 'recv', from: 'c', msg: { t: 'gossip', u: [['a', 0, 'suspect', 'c']] } }, 10)
    assert.equal(memberOf(b, 'a')?.status, 'suspect')
    // The buddy system: b's probe of a suspect carries the suspicion.
    const out = step(a, { t: 'recv', from: 'b', msg: { t: 'ping', seq: 1, u: [['a', 0, 'suspect', 'c']] } }, 20).actions
    assert.equal(a.incarnation, 1)
    const ack = sends(out).find(x => x.msg.t === 'ack')
    assert.ok(ack?.msg.u.some(u => u[0] === 'a' && u[1] === 1 && u[2] === 'alive'), 'the refutation rides on the ack')
    step(b, { t: 'recv', from: 'a', msg: ack!.msg }, 30)
    assert.deepEqual(memberOf(b, 'a'), { inc: 1, status: 'alive' })
    assert.equal(b.suspicions.has('a'), false)
  })

  it('after a partition each side holds the other dead: told so directly, a member refutes to the teller, who takes it back', () => {
    const a = initSwim('a', SWIM_LAN_DEFAULTS, { base, seed: 7 })
    const c = initSwim('c', SWIM_LAN_DEFAULTS, { base, seed: 8 })
    // Each learnt the other dead on its own side of the cut; neither probes a dead member.
    step(a, { t: 'recv', from: 'b', msg: { t: 'gossip', u: [['c', 0, 'dead', 'b']] } }, 10)
    step(c, { t: 'recv', from: 'd', msg: { t: 'gossip', u: [['a', 0, 'dead', 'd']] } }, 10)
    assert.equal(memberOf(a, 'c')?.status, 'dead')
    assert.equal(memberOf(c, 'a')?.status, 'dead')
    // Healed: a tells c what it holds (the driver's poke). c refutes, and answers a itself, since
    // its broadcasts go only to members it holds live, and it holds a dead.
    const out = sends(step(c, { t: 'recv', from: 'a', msg: { t: 'gossip', u: [['c', 0, 'dead', 'a']] } }, 20).actions)
    assert.equal(c.incarnation, 1)
    const answer = out.find(x => x.to === 'a')
    assert.ok(answer != null, `c answers a directly: ${JSON.stringify(out)}`)
    assert.ok(answer.msg.u.some(u => u[0] === 'c' && u[1] === 1 && u[2] === 'alive'))
    step(a, { t: 'recv', from: 'c', msg: answer.msg }, 30)
    assert.deepEqual(memberOf(a, 'c'), { inc: 1, status: 'alive' })
    // A claim at an old incarnation: nothing to refute, but its teller missed the refutation
    // (b holds c dead at 0 still): answered with the current incarnation, which b takes.
    const b = initSwim('b', SWIM_LAN_DEFAULTS, { base, seed: 9 })
    step(b, { t: 'recv', from: 'd', msg: { t: 'gossip', u: [['c', 0, 'dead', 'd']] } }, 10)
    const stale = sends(step(c, { t: 'recv', from: 'b', msg: { t: 'gossip', u: [['c', 0, 'dead', 'b']] } }, 40).actions).filter(x => x.to === 'b')
    assert.equal(c.incarnation, 1, 'no new incarnation for a stale claim')
    assert.equal(stale.length, 1)
    assert.deepEqual(stale[0].msg.u, [['c', 1, 'alive', 'c']])
    step(b, { t: 'recv', from: 'c', msg: stale[0].msg }, 50)
    assert.deepEqual(memberOf(b, 'c'), { inc: 1, status: 'alive' })
    // On a ping the ack is the answer (every frame carries the sender's incarnation): no extra frame.
    const onPing = sends(step(c, { t: 'recv', from: 'b', msg: { t: 'ping', seq: 9, u: [['c', 0, 'suspect', 'b']] } }, 60).actions).filter(x => x.to === 'b')
    assert.deepEqual(onPing.map(x => x.msg.t), ['ack'])
  })

  it('applies an update only when its incarnation allows it; left is sticky for its incarnation', () => {
    const a = initSwim('a', SWIM_LAN_DEFAULTS, { base, seed: 7 })
    step(a, { t: 'recv', from: 'b', msg: { t: 'gossip', u: [['c', 2, 'alive', 'c']] } }, 1)
    step(a, { t: 'recv', from: 'b', msg: { t: 'gossip', u: [['c', 1, 'dead', 'b']] } }, 2)
    assert.deepEqual(memberOf(a, 'c'), { inc: 2, status: 'alive' }, 'an older incarnation\'s death is stale')
    step(a, { t: 'recv', from: 'b', msg: { t: 'gossip', u: [['c', 2, 'left', 'c']] } }, 3)
    step(a, { t: 'recv', from: 'b', msg: { t: 'gossip', u: [['c', 2, 'alive', 'c']] } }, 4)
    assert.equal(memberOf(a, 'c')?.status, 'left')
    step(a, { t: 'recv', from: 'b', msg: { t: 'gossip', u: [['c', 3, 'alive', 'c']] } }, 5)
    assert.deepEqual(memberOf(a, 'c'), { inc: 3, status: 'alive' }, 'a restart is a new incarnation')
    step(a, { t: 'recv', from: 'b', msg: { t: 'gossip', u: [['e', -1, 'alive', 'e'], ['e', 1.5, 'alive', 'e']] } }, 6)
    assert.equal(memberOf(a, 'e'), undefined, 'malformed incarnations are ignored')
    assert.equal(memberOf(a, 'b')?.status, 'alive')
  })

  it('relays an indirect probe: forwards the ack, or a nack when none came in time', () => {
    const r = initSwim('r', SWIM_LAN_DEFAULTS, { base: [...base, 'r'], seed: 8 })
    const ping = sends(step(r, { t: 'recv', from: 'a', msg: { t: 'ping-req', seq: 41, target: 'b', u: [] } }, 100).actions)
    assert.equal(ping[0].to, 'b')
    assert.equal(ping[0].msg.t, 'ping')
    const fwd = sends(step(r, { t: 'recv', from: 'b', msg: { t: 'ack', seq: ping[0].msg.t === 'ping' ? ping[0].msg.seq : -1, u: [] } }, 110).actions)
    assert.deepEqual(fwd.map(f => [f.to, f.msg.t, 'seq' in f.msg ? f.msg.seq : null]), [['a', 'ack', 41]])
    step(r, { t: 'recv', from: 'a', msg: { t: 'ping-req', seq: 42, target: 'c', u: [] } }, 200)
    const nack = sends(runUntil(r, 200, 200 + 0.8 * SWIM_LAN_DEFAULTS.probeTimeoutMs + 1).actions).filter(x => x.msg.t === 'nack')
    assert.deepEqual(nack.map(f => [f.to, 'seq' in f.msg ? f.msg.seq : null]), [['a', 42]])
  })

  it('learns a new member from its join and gossips it on, then goes quiet', () => {
    const a = initSwim('a', SWIM_LAN_DEFAULTS, { base, seed: 9 })
    const out = step(a, { t: 'recv', from: 'new', msg: { t: 'gossip', u: [['new', 0, 'alive', 'new']] } }, 0).actions
    assert.ok(changes(out).includes('new:alive@0'))
    const { actions } = runUntil(a, 0, 10_000)
    const limit = SWIM_LAN_DEFAULTS.retransmitMult * Math.ceil(Math.log10(a.live + 2))
    // (Nobody answers this lone state's probes, so it also suspects others: only the join is counted.)
    const carried = sends(actions).flatMap(x => x.msg.u).filter(u => u[0] === 'new' && u[2] === 'alive').length
    assert.ok(carried >= 1 && carried <= limit, `sent ${carried} times, limit ${limit}`)
    assert.equal(a.broadcasts.filter(b => b.u[0] === 'new' && b.u[2] === 'alive').length, 0, 'then dropped from the queue')
  })
})

describe('SWIM simulator', () => {
  it('a node sends as many messages a second in a mesh of 1,000 as in one of 100', () => {
    const small = simulate({ nodes: 100, lossRate: 0, latencyMs: [1, 3], durationMs: 20_000, kill: 0, eventAtMs: 5000, seed: 3 })
    const big = simulate({ nodes: 1000, lossRate: 0, latencyMs: [1, 3], durationMs: 20_000, kill: 0, eventAtMs: 5000, seed: 3 })
    assert.ok(big.messagesPerNodePerSec <= small.messagesPerNodePerSec * 1.5, `per node per s: ${small.messagesPerNodePerSec.toFixed(2)} at 100, ${big.messagesPerNodePerSec.toFixed(2)} at 1,000`)
    assert.ok(big.messagesPerNodePerSec < 6, `${big.messagesPerNodePerSec}`)
    assert.ok(big.convergenceMs != null && big.convergenceMs <= 5000, `a join reaches all 1,000 in ${big.convergenceMs} ms`)
  })

  it('detects killed nodes everywhere, with loss and no false positive', () => {
    const r = simulate({ nodes: 300, lossRate: 0.02, latencyMs: [1, 10], durationMs: 60_000, kill: 3, eventAtMs: 5000, seed: 11 })
    assert.equal(r.falsePositives, 0, JSON.stringify(r))
    assert.ok(r.detectFirstMs != null && r.detectAllMs != null, `every killed node is declared dead by all: ${JSON.stringify(r)}`)
    assert.ok(r.detectAllMs - r.detectFirstMs < 5000, `then known everywhere fast: ${JSON.stringify(r)}`)
  })
})
