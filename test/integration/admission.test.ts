/**
 * Admission (issue 11 item 1) with real node processes on loopback, in the product default mode
 * (no swarm key): a newcomer is pending and gets nothing until a member admits it; admission and
 * revocation are signed and synced to every member; invites join unattended, once, in time; a
 * hostile peer built from the project's own libp2p host is ignored, audited, and the node serves.
 */
import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import path from 'node:path'
import { peerIdFromString } from '@libp2p/peer-id'
import { createTinyModel } from '../support/tiny-model.js'
import { getJson, runCli, startNode, stopNode, tempDir, waitFor, type NodeProcess } from '../support/cluster.js'
import { exchange, newHost } from '../support/fuzz-hosts.js'
import { ADMISSION_PROTOCOL, INFERENCE_PROTOCOL, MEMBERSHIP_TOPIC, encodeMembership, type Host } from '../../src/p2p/index.js'
import { COMMAND_PROTOCOL } from '../../src/p2p/command-messages.js'

const MODEL = 'tiny-adm'

const post = async (url: string, body: unknown = {}): Promise<{ status: number, body: any }> => {
  const res = await fetch(url, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body), signal: AbortSignal.timeout(10_000) })
  return { status: res.status, body: await res.json().catch(() => null) }
}
const peersOf = async (n: NodeProcess): Promise<any[]> => (await getJson(`${n.api}/api/peers`)).peers
const peerOn = async (n: NodeProcess, id: string): Promise<any> => (await peersOf(n)).find(p => p.id === id)
const memberStatus = async (n: NodeProcess, id: string): Promise<string | undefined> => (await getJson(`${n.api}/api/members`)).members.find((m: any) => m.id === id)?.status
const modelIds = async (n: NodeProcess): Promise<string[]> => (await getJson(`${n.api}/v1/models`)).data.map((m: any) => m.id)
const chat = async (n: NodeProcess, model = MODEL): Promise<{ status: number, body: any }> =>
  await post(`${n.api}/v1/chat/completions`, { model, messages: [{ role: 'user', content: 'hi' }], max_tokens: 4, temperature: 0 })

/** Length-prefixed JSON frame, as src/p2p/framing.ts writes it. */
function frame (obj: unknown): Uint8Array {
  const body = new TextEncoder().encode(JSON.stringify(obj))
  const len: number[] = []
  let n = body.byteLength
  do { let b = n & 0x7f; n >>>= 7; if (n > 0) b |= 0x80; len.push(b) } while (n > 0)
  return new Uint8Array([...len, ...body])
}

describe('admission: members only', { timeout: 240_000 }, () => {
  const all: NodeProcess[] = []
  const hostile: Host[] = []
  let a: NodeProcess, b: NodeProcess, c: NodeProcess
  let events = ''
  const sse = new AbortController()

  before(async () => {
    const dirB = await tempDir('shepherd-adm-models-')
    await createTinyModel(path.join(dirB, `${MODEL}.gguf`))
    a = await startNode({ name: 'adm-a', membership: 'admission', args: ['--threads', '1'] })
    all.push(a)
    assert.match(a.stderr.join(''), /with 1 member\(s\): new nodes wait as pending/)
    // Watch A's events from before B exists.
    const res = await fetch(`${a.api}/api/events`, { signal: sse.signal })
    void (async () => {
      const reader = res.body!.getReader()
      for (;;) {
        const { value, done } = await reader.read().catch(() => ({ value: undefined, done: true }))
        if (done === true) return
        events += new TextDecoder().decode(value)
      }
    })()
    b = await startNode({ name: 'adm-b', membership: 'admission', args: ['--bootstrap', `/ip4/127.0.0.1/tcp/${a.p2pPort}`, '--models-dir', dirB, '--threads', '1'] })
    all.push(b)
  })

  after(async () => {
    sse.abort()
    await Promise.all(hostile.map(async h => { try { await h.stop() } catch {} }))
    await Promise.all(all.map(async n => await stopNode(n, 'SIGKILL')))
  })

  it('a new node is pending on the member and gets no prompts; its state is not taken', async () => {
    await waitFor('B pending on A', async () => { const p = await peerOn(a, b.id); return p?.status === 'pending' && p.trust === 'pending' && p.name === 'adm-b' }, 10_000)
    await waitFor('A pending on B', async () => (await peerOn(b, a.id))?.trust === 'pending', 10_000)
    await waitFor('the SSE event', () => events.includes('event: peer:pending') && events.includes(b.id), 5000)
    // Several heartbeats and snapshots of B have gone by: none was taken.
    await new Promise(resolve => setTimeout(resolve, 2500))
    assert.ok(!(await modelIds(a)).includes(MODEL), 'B\'s model is not routable on A')
    const res = await chat(a)
    assert.equal(res.status, 404)
    assert.equal(res.body.error.code, 'model_not_found')
    assert.equal(await memberStatus(a, b.id), 'pending')
    const cli = await runCli(['peers', '--api', a.api])
    assert.equal(cli.code, 0, cli.err)
    assert.match(cli.out, /adm-b.*pending/)
  })

  it('admit by name with the CLI: a member both ways, B adopts A\'s mesh, prompts flow', async () => {
    const r = await runCli(['admit', 'adm-b', '--api', a.api])
    assert.equal(r.code, 0, r.err)
    assert.match(r.out, new RegExp(`admitted ${b.id}`))
    const meshA = (await getJson(`${a.api}/api/members`)).mesh
    await waitFor('B adopts A\'s mesh', async () => (await getJson(`${b.api}/api/members`)).mesh === meshA, 10_000)
    assert.equal(await memberStatus(b, a.id), 'member')
    await waitFor('A routes to B', async () => (await modelIds(a)).includes(MODEL), 15_000)
    await waitFor('B sees A alive', async () => (await peerOn(b, a.id))?.status === 'alive', 10_000)
    const res = await chat(a)
    assert.equal(res.status, 200, JSON.stringify(res.body))
  })

  it('a third node admitted through the API sees B as a member through the synced ledger', async () => {
    c = await startNode({ name: 'adm-c', membership: 'admission', args: ['--bootstrap', `/ip4/127.0.0.1/tcp/${a.p2pPort}`] })
    all.push(c)
    await waitFor('C pending on A', async () => (await peerOn(a, c.id))?.status === 'pending', 10_000)
    const res = await post(`${a.api}/api/members/${c.id}/admit`)
    assert.equal(res.status, 200, JSON.stringify(res.body))
    assert.equal(res.body.status, 'member')
    await waitFor('C has B as a member', async () => await memberStatus(c, b.id) === 'member', 10_000)
    await waitFor('B has C as a member', async () => await memberStatus(b, c.id) === 'member', 10_000)
    await waitFor('C routes to B', async () => (await modelIds(c)).includes(MODEL), 15_000)
  })

  it('a hostile peer\'s forged gossip and hello flood are ignored and audited; the node keeps serving', async () => {
    const evil = await newHost()
    hostile.push(evil)
    const aId = peerIdFromString(a.id)
    evil.services.pubsub.subscribe(MEMBERSHIP_TOPIC)
    let heard = 0
    evil.services.pubsub.addEventListener('message', evt => { if (evt.detail.topic === MEMBERSHIP_TOPIC) heard++ })
    await evil.dial((await import('@multiformats/multiaddr')).multiaddr(`/ip4/127.0.0.1/tcp/${a.p2pPort}/p2p/${a.id}`))
    const me = evil.peerId.toString()
    const snap = {
      version: '9', resources: { cpu: { cores: 64 }, memory: { totalBytes: 1e12 }, disk: {}, gpus: [], llamacpp: [] }, api: null,
      models: [{ name: 'evil-model', sizeBytes: 1, architecture: null, quantization: null, parameterCount: null, contextLength: null, fingerprint: '0'.repeat(64), state: 'loaded' }, { name: MODEL, sizeBytes: 1, architecture: null, quantization: null, parameterCount: null, contextLength: null, fingerprint: '0'.repeat(64), state: 'loaded' }],
      deployments: [{ model: 'evil-deploy', replicas: 3, group: 'default', updatedAt: 1e15, origin: me, deleted: false }]
    }
    for (let seq = 1; seq <= 30; seq++) {
      const msg = seq % 2 === 0
        ? { v: 1, t: 'hb', inc: 1, seq, at: Date.now(), name: 'evil', groups: ['default'], snap: seq, lead: [['default', 1e12, me]] }
        : { v: 1, t: 'snap', inc: 1, seq, at: Date.now(), name: 'evil', groups: ['default'], snap: seq, addrs: [], data: snap }
      await evil.services.pubsub.publish(MEMBERSHIP_TOPIC, encodeMembership(msg as any)).catch(() => {})
      await new Promise(resolve => setTimeout(resolve, 50))
    }
    // Streams on member-only protocols are reset.
    const inf = await exchange(evil, aId, INFERENCE_PROTOCOL, [frame({ v: 1, op: 'models' })], { ms: 3000 }).catch(() => ({ end: 'reset' }))
    assert.notEqual(inf.end, 'closed')
    const cmd = await exchange(evil, aId, COMMAND_PROTOCOL, [frame({ v: 1 })], { ms: 3000 }).catch(() => ({ end: 'reset' }))
    assert.notEqual(cmd.end, 'closed')
    // A hello flood: answered while within the rate, then reset; never more than one pending entry.
    const hello = frame({ v: 1, t: 'hello', mesh: '1'.repeat(32), name: 'evil\u001b[2J', digest: '0'.repeat(64), count: 0 })
    const ends = await Promise.all(Array.from({ length: 100 }, async () => (await exchange(evil, aId, ADMISSION_PROTOCOL, [hello], { ms: 3000 }).catch(() => ({ end: 'reset' }))).end))
    assert.ok(ends.includes('closed'), 'some hellos are answered')
    assert.ok(ends.filter(e => e !== 'closed').length >= 50, `the flood is reset: ${ends.join(',')}`)
    await new Promise(resolve => setTimeout(resolve, 1500))
    assert.equal(heard, 0, 'a non-member is sent no heartbeat or snapshot (no addresses, models, resources)')
    assert.ok(!(await modelIds(a)).includes('evil-model'))
    const models = (await getJson(`${a.api}/api/models`)).models.find((m: any) => m.name === MODEL)
    assert.ok(models.hosts.every((h: any) => h.id !== me), 'the attacker is no host of a real model')
    const groups = (await getJson(`${a.api}/api/groups`)).groups
    assert.ok(groups.every((g: any) => g.leader !== me), 'no leadership by claim')
    assert.ok(!(await getJson(`${a.api}/api/deployments`)).deployments.some((d: any) => d.model === 'evil-deploy'), 'no deployment taken')
    const seen = await peerOn(a, me)
    assert.equal(seen?.status, 'pending')
    assert.equal(seen?.name, 'evil[2J', 'control characters stripped')
    const audit = (await getJson(`${a.api}/api/commands`)).wire.filter((x: any) => x.peer === me)
    assert.ok(audit.some((x: any) => x.kind === 'untrusted_peer'), 'refused streams are audited')
    assert.ok(audit.length <= 10, `audit entries are rate-limited per peer (${audit.length})`)
    assert.equal((await chat(a)).status, 200, 'A keeps serving')
    // A second hostile peer under the same name: admitting by that name is ambiguous.
    const twin = await newHost()
    hostile.push(twin)
    const twinHello = frame({ v: 1, t: 'hello', mesh: '1'.repeat(32), name: 'evil[2J', digest: '0'.repeat(64), count: 0 })
    await twin.dial((await import('@multiformats/multiaddr')).multiaddr(`/ip4/127.0.0.1/tcp/${a.p2pPort}/p2p/${a.id}`))
    await exchange(twin, aId, ADMISSION_PROTOCOL, [twinHello], { ms: 3000 })
    const amb = await post(`${a.api}/api/members/${encodeURIComponent('evil[2J')}/admit`)
    assert.equal(amb.status, 409)
    assert.equal(amb.body.error.code, 'ambiguous_peer')
    assert.ok(amb.body.error.message.includes(me) && amb.body.error.message.includes(twin.peerId.toString()))
  })

  it('a malformed peer id on /api/trust is a 400 and changes nothing', async () => {
    const before = await getJson(`${a.api}/api/trust`)
    const res = await post(`${a.api}/api/trust`, { deny: ['A'.repeat(46)] })
    assert.equal(res.status, 400)
    assert.deepEqual(await getJson(`${a.api}/api/trust`), before)
    assert.equal((await post(`${a.api}/api/members/${'B'.repeat(46)}/admit`)).status, 400)
  })

  it('revoke: cut off at once on every member, no more prompts', async () => {
    const r = await runCli(['revoke', b.id, '--api', a.api])
    assert.equal(r.code, 0, r.err)
    await waitFor('C has B revoked', async () => await memberStatus(c, b.id) === 'revoked', 10_000)
    await waitFor('B cut off from A', async () => (await peerOn(b, a.id))?.status !== 'alive', 10_000)
    await waitFor('A stops routing to B', async () => !(await modelIds(a)).includes(MODEL), 10_000)
    assert.equal((await chat(a)).status, 404)
    assert.equal((await peerOn(a, b.id))?.trust, 'denied')
  })

  it('invite: start --join joins unattended; a used or expired invite is refused', async () => {
    const inv = await runCli(['invite', '--ttl', '10m', '--api', a.api])
    assert.equal(inv.code, 0, inv.err)
    const token = inv.out.trim()
    assert.match(token, /^shm1\./)
    const d = await startNode({ name: 'adm-d', membership: 'admission', env: { SHEPHERD_JOIN: token }, timeoutMs: 60_000 })
    all.push(d)
    const meshA = (await getJson(`${a.api}/api/members`)).mesh
    assert.equal((await getJson(`${d.api}/api/members`)).mesh, meshA, 'joined before the ready line')
    await waitFor('A has D as a member', async () => await memberStatus(a, d.id) === 'member', 10_000)
    await waitFor('C has D as a member', async () => await memberStatus(c, d.id) === 'member', 10_000)
    assert.ok(!d.stdout.join('').includes(token) && !d.stderr.join('').includes(token), 'the token is never printed')
    // The same token again, from another machine: refused.
    await assert.rejects(startNode({ name: 'adm-e', membership: 'admission', env: { SHEPHERD_JOIN: token }, timeoutMs: 60_000 }), /used/)
    const short = await post(`${a.api}/api/invites`, { ttlMs: 1000 })
    assert.equal(short.status, 200)
    await new Promise(resolve => setTimeout(resolve, 1500))
    await assert.rejects(startNode({ name: 'adm-f', membership: 'admission', env: { SHEPHERD_JOIN: short.body.token }, timeoutMs: 60_000 }), /expired/)
    const audit = (await getJson(`${a.api}/api/commands`)).wire
    assert.ok(audit.some((x: any) => /invite refused: invite_used/.test(x.detail)))
    assert.ok(audit.some((x: any) => /invite refused: invite_expired/.test(x.detail)))
  })
})

describe('swarm-key and open modes', { timeout: 120_000 }, () => {
  const all: NodeProcess[] = []
  after(async () => { await Promise.all(all.map(async n => await stopNode(n, 'SIGKILL'))) })

  it('with a swarm key a keyless attacker cannot connect at all; --open says so at start', async () => {
    const keyed = await startNode({ name: 'sk-a', membership: 'swarm-key' })
    all.push(keyed)
    assert.match(keyed.stderr.join(''), /private mesh/)
    const evil = await newHost()
    try {
      const { multiaddr } = await import('@multiformats/multiaddr')
      await assert.rejects(evil.dial(multiaddr(`/ip4/127.0.0.1/tcp/${keyed.p2pPort}/p2p/${keyed.id}`), { signal: AbortSignal.timeout(5000) }))
      assert.equal(evil.getConnections().length, 0)
      assert.deepEqual((await peersOf(keyed)).map(p => p.id), [], 'not even pending')
    } finally {
      await evil.stop()
    }
    const open = await startNode({ name: 'open-a', membership: 'open' })
    all.push(open)
    assert.match(open.stderr.join(''), /OPEN MESH: every shepherd-mesh node that can reach this one is a member/)
    assert.equal((await getJson(`${open.api}/api/members`)).mode, 'open')
  })
})
