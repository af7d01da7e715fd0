/**
 * Attacks found in the review of issue 11, each against the real parts: a real LevelDB store, the
 * node's Membership on a real libp2p host, hostile raw libp2p hosts speaking the admission
 * protocol, and a real node process.
 * - A revoked member's key signs statements dated before its revocation (an admit of a fresh key,
 *   a revoke of the member that revoked it) and a fresh identity relays them: refused, audited.
 * - One invite token presented by two peers at the same moment: exactly one is admitted.
 * - Credentials given as flags (`--api-key`, `--join`) do not stay readable in `ps`.
 * - A peer-chosen name with C1 and bidi controls does not reach stderr raw through a log line.
 * - A lone node that has served for a while is not taken over by a stranger's ledger that
 *   "admits" it (trust on first use ends TOFU_WINDOW_MS after its founding).
 * - A new data dir (it holds the node key) is readable by its owner only.
 * - A non-member cycling fresh peer ids does not grow the node's peer table, nor wash the audit
 *   log with refusals.
 */
import { after, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import fs from 'node:fs/promises'
import { peerIdFromString } from '@libp2p/peer-id'
import type { PrivateKey } from '@libp2p/interface'
import { multiaddr } from '@multiformats/multiaddr'
import { Store } from '../../src/node/store.js'
import { Membership } from '../../src/node/membership.js'
import { createHost, type Host } from '../../src/p2p/host.js'
import { createIdentity, peerIdOf } from '../../src/p2p/identity.js'
import { ADMISSION_PROTOCOL, MAX_ADMISSION_FRAME_BYTES, isAdmissionResponse, signStatement, type AdmissionRequest, type AdmissionResponse, type Statement } from '../../src/p2p/admission-messages.js'
import { TOFU_WINDOW_MS, replay } from '../../src/p2p/ledger.js'
import { foundMesh } from '../../src/p2p/admission.js'
import { statementId } from '../../src/p2p/admission-messages.js'
import { Mesh } from '../../src/p2p/mesh.js'
import { TrustPolicy } from '../../src/p2p/trust.js'
import { FramedStream } from '../../src/p2p/framing.js'
import { maskSecretArgs } from '../../src/cli/start.js'
import { createLogger, logSink, setLogSink } from '../../src/logger.js'
import { startNode, stopNode, tempDir, waitFor, type NodeProcess } from '../support/cluster.js'

async function victim (hosts: Host[], foundedAgoMs = 0): Promise<{ m: Membership, host: Host, store: Store, self: string }> {
  const key = await createIdentity()
  const self = peerIdOf(key)
  const store = await Store.open(await tempDir('shepherd-review-'))
  if (foundedAgoMs > 0) {
    // A node that founded its mesh a while ago (what Membership.open does at a first start, back then).
    const mesh = 'ab'.repeat(16)
    const found = await signStatement(key, { v: 1, t: 'found', mesh, subject: self, issuer: self, name: 'victim', at: Date.now() - foundedAgoMs })
    await store.table<Statement>('ledger').put(statementId(found), found)
    await store.putMeta('membership', { mesh })
  }
  const m = await Membership.open({ store, key, selfId: self, name: 'victim', mode: 'admission', allow: [], deny: [] })
  const host = await createHost({ privateKey: key, listen: ['/ip4/127.0.0.1/tcp/0'], mdns: false, mdnsIntervalMs: 1000, trust: m.trust })
  hosts.push(host)
  await m.start(host)
  return { m, host, store, self }
}

/** A hostile raw host (no trust policy, no admission service) connected to `target`. */
async function hostile (hosts: Host[], target: Host, privateKey?: PrivateKey): Promise<Host> {
  const h = await createHost({ privateKey: privateKey ?? await createIdentity(), listen: ['/ip4/127.0.0.1/tcp/0'], mdns: false, mdnsIntervalMs: 1000 })
  hosts.push(h)
  await h.dial(multiaddr(`${target.getMultiaddrs()[0].toString()}`))
  return h
}

async function ask (from: Host, to: string, frame: AdmissionRequest): Promise<AdmissionResponse> {
  const signal = AbortSignal.timeout(10_000)
  const stream = await from.dialProtocol(peerIdFromString(to), ADMISSION_PROTOCOL, { signal })
  const framed = new FramedStream(stream, MAX_ADMISSION_FRAME_BYTES)
  await framed.write(frame, signal)
  const res = await framed.read(signal, 10_000)
  await stream.close().catch(() => {})
  assert.ok(isAdmissionResponse(res), 'a well-formed admission answer')
  return res
}

describe('trust review: ledger, invites and secrets under attack', () => {
  const hosts: Host[] = []
  const stores: Store[] = []
  const nodes: NodeProcess[] = []
  after(async () => {
    await Promise.all(nodes.map(async n => { await stopNode(n, 'SIGKILL') }))
    await Promise.all(hosts.map(async h => { try { await h.stop() } catch {} }))
    await Promise.all(stores.map(async s => { try { await s.close() } catch {} }))
  })

  it('a revoked member cannot undo its revocation with back-dated statements relayed by a fresh key', async () => {
    const v = await victim(hosts)
    stores.push(v.store)
    const rKey = await createIdentity()
    const r = peerIdOf(rKey)
    await v.m.admit(r)
    await new Promise(resolve => setTimeout(resolve, 50))
    await v.m.revoke(r)
    const ledger = v.m.trust.ledger!
    const revokeAt = ledger.revoked.get(r)!
    const admitAt = [...ledger.statements.values()].find(s => s.t === 'admit' && s.subject === r)!.at
    assert.ok(revokeAt - admitAt >= 2, 'room for a statement dated in between')

    // The revoked key (denied here, so it cannot connect) signs, dated while it was a member:
    // an admit of a fresh key X and a revoke of the victim (the founder that revoked it).
    const x = await hostile(hosts, v.host)
    const xId = x.peerId.toString()
    const at = revokeAt - 1
    const attack: Statement[] = [
      await signStatement(rKey, { v: 1, t: 'admit', mesh: ledger.mesh, subject: xId, issuer: r, name: 'x', at }),
      await signStatement(rKey, { v: 1, t: 'revoke', mesh: ledger.mesh, subject: v.self, issuer: r, at })
    ]
    // Without the check these would count: the replay alone makes X a member and the victim none.
    const naive = replay([...ledger.statements.values(), ...attack], ledger.mesh)
    assert.ok(naive?.members.has(xId) === true && !naive.members.has(v.self), 'the attack is real against a plain replay')

    // X (no member, not denied) relays them: anyone may push statements.
    const res = await ask(x, v.self, { v: 1, t: 'push', statements: [...ledger.statements.values(), ...attack] })
    assert.equal(res.t, 'ok')
    assert.ok(!v.m.trust.isMember(xId), 'X is no member')
    assert.ok(v.m.trust.isMember(v.self), 'the victim is still a member of its own mesh')
    assert.ok(!v.m.trust.isMember(r), 'R stays revoked')
    assert.equal(v.m.trust.ledger?.digest, ledger.digest, 'the ledger is unchanged')
    const { value: entry } = await waitFor('an audit entry', async () => (await v.store.auditLog(50)).find(e => e.peer === xId && /not_member/.test(String(e.detail))), 5000)
    assert.equal(entry.verdict, 'rejected')
    // A pull is still refused to X (it got nothing by pushing).
    const pulled = await ask(x, v.self, { v: 1, t: 'pull' })
    assert.equal(pulled.t, 'error')
    // And the victim can still admit and revoke: it kept its authority.
    const y = peerIdOf(await createIdentity())
    await v.m.admit(y)
    assert.ok(v.m.trust.isMember(y))
  })

  it('one invite presented by two peers at once admits exactly one of them', async () => {
    const v = await victim(hosts)
    stores.push(v.store)
    const { token } = await v.m.invite(60_000, v.host.getMultiaddrs().map(a => a.toString()))
    const joiners = await Promise.all([hostile(hosts, v.host), hostile(hosts, v.host), hostile(hosts, v.host)])
    const answers = await Promise.all(joiners.map(async j => await ask(j, v.self, { v: 1, t: 'join', token, name: 'j' })))
    const admitted = joiners.filter(j => v.m.trust.isMember(j.peerId.toString()))
    assert.equal(admitted.length, 1, `one token, one member (answers: ${answers.map(a => a.t === 'error' ? a.code : a.t).join(', ')})`)
    assert.equal(answers.filter(a => a.t === 'ledger').length, 1)
    assert.equal(answers.filter(a => a.t === 'error' && a.code === 'invite_used').length, 2)
    // Presented again later: still used.
    const again = await ask(joiners[0], v.self, { v: 1, t: 'join', token, name: 'j' })
    assert.ok(again.t === 'error' && again.code === 'invite_used')
  })

  it('credential flags are masked in the command line a running node shows (ps)', async () => {
    assert.deepEqual(maskSecretArgs(['node', 'run.ts', 'start', '--api-key', 'k1', '--join=shm1.abc', '--name', 'n', '--', '--api-key', 'x']),
      ['node', 'run.ts', 'start', '--api-key', '***', '--join=***', '--name', 'n', '--', '--api-key', 'x'])
    assert.deepEqual(maskSecretArgs(['start', '--name', 'n']), ['start', '--name', 'n'])
    const secret = 'review-secret-api-key-0123456789'
    const n = await startNode({ name: 'argv', membership: 'admission', args: ['--api-key', secret] })
    nodes.push(n)
    const cmdline = (await fs.readFile(`/proc/${n.child.pid!}/cmdline`, 'utf8')).replace(/\0/g, ' ')
    assert.ok(cmdline.includes('--api-key'), `the command line is still recognisable: ${cmdline}`)
    assert.ok(!cmdline.includes(secret), 'the API key is not in /proc/PID/cmdline')
    // The key still works: a request without it is refused, with it answered.
    const noKey = await fetch(`${n.api}/api/node`, { signal: AbortSignal.timeout(5000) })
    assert.equal(noKey.status, 401)
    const withKey = await fetch(`${n.api}/api/node`, { headers: { authorization: `Bearer ${secret}` }, signal: AbortSignal.timeout(5000) })
    assert.equal(withKey.status, 200)
    assert.ok(!(await withKey.text()).includes(secret), 'the API does not echo the key')
  })

  it('log lines carry no raw C1, DEL or bidi controls from peer-chosen strings, and stay the same JSON', () => {
    const hostileName = 'evil\u009b2J\u009d8;;http://x\u009c\u202efake\u2066\u007f\u001b[0m\u2028row'
    const lines: string[] = []
    const prev = logSink
    setLogSink(line => { lines.push(line) })
    try {
      createLogger('review').warn('refused a deployment record', { from: 'peer', detail: `deployment '${hostileName}'` })
    } finally {
      setLogSink(prev)
    }
    assert.equal(lines.length, 1)
    // eslint-disable-next-line no-control-regex
    assert.ok(!/[\u0000-\u001f\u007f-\u009f\u2028\u2029\u202a-\u202e\u2066-\u2069]/.test(lines[0]), `no raw control in ${JSON.stringify(lines[0])}`)
    assert.equal(JSON.parse(lines[0]).detail, `deployment '${hostileName}'`, 'the JSON still decodes to the same value')
  })

  it('a non-member cycling fresh peer ids leaves nothing in the peer table once it hangs up', async () => {
    const trust = new TrustPolicy({ mode: 'admission' })
    const mesh = new Mesh({
      privateKey: await createIdentity(), name: 'victim', groups: ['default'], listen: ['/ip4/127.0.0.1/tcp/0'], bootstrap: [], mdns: false, mdnsIntervalMs: 1000,
      heartbeatMs: 200, suspectAfterMs: 1000, deadAfterMs: 2000, snapshotIntervalMs: 5000, pingIntervalMs: 5000, redialMinMs: 200, redialMaxMs: 1000, trust,
      snapshotVersion: () => 1, snapshotData: () => ({}), validateSnapshot: (d: unknown): d is Record<string, unknown> => typeof d === 'object' && d !== null
    })
    await mesh.start()
    try {
      const target = mesh.libp2p.getMultiaddrs()[0].toString()
      for (let i = 0; i < 20; i++) {
        const h = await createHost({ privateKey: await createIdentity(), listen: ['/ip4/127.0.0.1/tcp/0'], mdns: false, mdnsIntervalMs: 1000 })
        await h.dial(multiaddr(target)).catch(err => { throw new Error(`dial ${i}: ${String(err)}`) })
        await waitFor('the connection on the victim', () => mesh.libp2p.getConnections(h.peerId).length > 0, 5000)
        await h.stop()
        // libp2p refuses more than 5 inbound connections a second from one address.
        await new Promise(resolve => setTimeout(resolve, 250))
      }
      await waitFor('every hostile id forgotten', () => mesh.libp2p.getConnections().length === 0 && mesh.table.list().length === 0, 10_000)
        .catch(() => { assert.fail(`${mesh.table.list().length} peer records left behind by 20 ids that never said anything`) })
    } finally {
      await mesh.stop()
    }
  })

  it('a non-member cycling fresh peer ids cannot flood the audit log with refusals', async () => {
    const v = await victim(hosts)
    stores.push(v.store)
    let served = 0
    await v.host.handle('/shepherd/cmd/1.0.0', stream => { served++; stream.abort(new Error('test')) })
    const target = v.host.getMultiaddrs()[0].toString()
    const attempt = async (): Promise<void> => {
      const h = await createHost({ privateKey: await createIdentity(), listen: ['/ip4/127.0.0.1/tcp/0'], mdns: false, mdnsIntervalMs: 1000 })
      try {
        await h.dial(multiaddr(target))
        for (let i = 0; i < 5; i++) {
          const s = await h.dialProtocol(v.host.peerId, '/shepherd/cmd/1.0.0').catch(() => undefined)
          s?.abort(new Error('done'))
        }
        await new Promise(resolve => setTimeout(resolve, 50))
      } finally {
        await h.stop()
      }
      // libp2p refuses more than 5 inbound connections a second from one address.
      await new Promise(resolve => setTimeout(resolve, 250))
    }
    for (let i = 0; i < 12; i++) await attempt()
    assert.equal(served, 0, 'no stream of a non-member reached the handler')
    const refusals = async (): Promise<Array<{ detail?: string }>> => (await v.store.auditLog(1000)).filter(e => e.kind === 'untrusted_peer')
    const flood = await refusals()
    assert.ok(flood.length >= 10, `refusals are audited (${flood.length})`)
    assert.ok(flood.length <= 31, `60 refusals by 12 fresh ids wrote ${flood.length} audit entries`)
    // Later, one more refusal is recorded and says how many were not.
    await new Promise(resolve => setTimeout(resolve, 5500))
    await attempt()
    const { value: note } = await waitFor('the suppression note', async () => (await refusals()).find(e => /more refusals not recorded/.test(String(e.detail))), 5000)
    assert.match(String(note.detail), /\((\d+) more refusals not recorded/)
  })

  it('a stranger cannot take over a lone node that has served for a while by "admitting" it into its own mesh', async () => {
    // The attack: a non-member founds its own mesh, signs an admit of the victim and pushes it.
    const offer = async (v: { host: Host, self: string }): Promise<{ x: Host, mesh: string }> => {
      const key = await createIdentity()
      const x = await hostile(hosts, v.host, key)
      const xId = x.peerId.toString()
      const own = await foundMesh(key, xId, 'attacker')
      const admit = await signStatement(key, { v: 1, t: 'admit', mesh: own.mesh, subject: v.self, issuer: xId, name: 'victim', at: Date.now() + 1 })
      const res = await ask(x, v.self, { v: 1, t: 'push', statements: [...own.statements.values(), admit] })
      assert.equal(res.t, 'ok')
      return { x, mesh: own.mesh }
    }
    const old = await victim(hosts, TOFU_WINDOW_MS + 60_000)
    stores.push(old.store)
    const before = old.m.trust.ledger?.mesh
    const a = await offer(old)
    assert.equal(old.m.trust.ledger?.mesh, before, 'the node stays in its own mesh')
    assert.ok(!old.m.trust.isMember(a.x.peerId.toString()), 'the stranger is no member')
    await waitFor('an audit entry', async () => (await old.store.auditLog(50)).find(e => e.peer === a.x.peerId.toString() && /trust on first use ended/.test(String(e.detail))), 5000)
    // A node started just now still adopts the first mesh that admits it (the README's one-command
    // join): the same push takes it, which is what the window leaves open.
    const fresh = await victim(hosts)
    stores.push(fresh.store)
    const b = await offer(fresh)
    assert.equal(fresh.m.trust.ledger?.mesh, b.mesh)
  })

  it('a new data dir, which holds the node\'s private key, is the owner\'s alone', async () => {
    const dir = `${await tempDir('shepherd-review-')}/data`
    const store = await Store.open(dir)
    stores.push(store)
    assert.equal((await fs.stat(dir)).mode & 0o777, 0o700)
  })
})
