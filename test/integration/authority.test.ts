/**
 * Authority needs proof (issue 11 item 2), against real node processes in `--open` mode (every
 * connected peer is a member, so the hostile peer below is one) and a hostile peer built from
 * the project's own p2p stack (a real Mesh: heartbeats, snapshots, /shepherd/vote, /shepherd/cmd).
 * It (a) announces leadership at terms 1e12 and 2^53, and at the next term with a forged
 * certificate, and asks for votes while the leader is alive, then with a certificate of its own
 * vote alone (no proof: the honest leader re-certifies above it); (b) sends each of the 7 command types
 * signed by itself as a self-made leader; (c) gossips a tombstone stamped 1e308 and a deployment
 * signed by a key that is not its origin. Every one is refused and audited; the honest leadership,
 * the deployment and chat keep working, also after the attacker left.
 */
import '../../src/polyfill.js'
import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import path from 'node:path'
import { peerIdFromPrivateKey } from '@libp2p/peer-id'
import type { PrivateKey } from '@libp2p/interface'
import { createTinyModel } from '../support/tiny-model.js'
import { getJson, startNode, stopNode, tempDir, waitFor, type NodeProcess } from '../support/cluster.js'
import { Mesh } from '../../src/p2p/mesh.js'
import { createIdentity } from '../../src/p2p/identity.js'
import {
  COMMAND_TYPES, createCommand, sendCommand, requestVote, signObject, signVote, VoteService,
  type CommandType, type LeaderCertificate
} from '../../src/p2p/index.js'
import { DEPLOYMENT_SIGNING_DOMAIN } from '../../src/node/deployment-record.js'

const MODEL = 'tiny-chat'

async function chat (api: string): Promise<number> {
  const res = await fetch(`${api}/v1/chat/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ model: MODEL, messages: [{ role: 'user', content: 'hi' }], max_tokens: 4, temperature: 0 })
  })
  await res.arrayBuffer()
  return res.status
}

async function leaders (nodes: NodeProcess[]): Promise<Array<{ leader: string | null, term: number }>> {
  return await Promise.all(nodes.map(async n => {
    const g = await getJson(`${n.api}/api/groups/default`)
    return { leader: g.leader, term: g.term }
  }))
}

async function wireAudit (n: NodeProcess): Promise<Array<{ kind: string, peer?: string, detail: string }>> {
  return (await getJson(`${n.api}/api/commands?limit=1000`)).wire
}

const PAYLOADS: Record<CommandType, Record<string, unknown>> = {
  load_model: { model: MODEL, keepAliveMs: -1 },
  unload_model: { model: MODEL },
  run_llamacpp: { model: MODEL, args: ['--threads', '512'] },
  stop_process: { processId: 'run-00000000' },
  scan_models: {},
  collect_logs: { lines: 10 },
  update_config: { key: 'maxConcurrency', value: 1 },
  serve_rpc: { model: MODEL, head: '12D3KooWAbcdefghijkmnopqrstuvwxyzABCDEFGHJKLMNPQ' }
}

/** A passive member that only listens to gossip (snapshots of the honest nodes). */
function observer (privateKey: PrivateKey, port: number): Mesh<Record<string, unknown>> {
  return new Mesh<Record<string, unknown>>({
    privateKey,
    name: 'observer',
    groups: [],
    listen: ['/ip4/127.0.0.1/tcp/0'],
    bootstrap: [`/ip4/127.0.0.1/tcp/${port}`],
    mdns: false,
    mdnsIntervalMs: 1000,
    heartbeatMs: 500,
    suspectAfterMs: 3000,
    deadAfterMs: 6000,
    snapshotIntervalMs: 2000,
    pingIntervalMs: 5000,
    redialMinMs: 200,
    redialMaxMs: 2000,
    snapshotVersion: () => 1,
    snapshotData: () => ({ version: 'observer', resources: { cpu: { cores: 1 }, memory: { totalBytes: 1 }, disk: {}, gpus: [], llamacpp: [] }, models: [], api: null }),
    validateSnapshot: (d: unknown): d is Record<string, unknown> => typeof d === 'object' && d != null
  })
}

describe('authority needs proof (open mode, hostile member)', { timeout: 180_000 }, () => {
  const nodes: NodeProcess[] = []
  let key: PrivateKey
  let evil: string
  let hostile: Mesh<Record<string, unknown>> | undefined
  /** What the hostile peer announces in its heartbeats and answers for its certificate. */
  let lead: Array<[string, number, string]> = []
  let forged: LeaderCertificate | null = null
  let snap: Record<string, unknown> = {}
  let snapVersion = 1
  let honest: { leader: string, term: number }

  before(async () => {
    const models = await tempDir('shepherd-authority-models-')
    await createTinyModel(path.join(models, `${MODEL}.gguf`))
    const common = ['--open', '--threads', '1']
    const a = await startNode({ name: 'h-a', args: [...common, '--models-dir', models] })
    const boot = ['--bootstrap', `/ip4/127.0.0.1/tcp/${a.p2pPort}`]
    nodes.push(a, ...await Promise.all(['h-b', 'h-c'].map(async name => await startNode({ name, args: [...common, ...boot] }))))
    // The views seen last are part of the failure message: a timeout alone says nothing about why.
    let seen: unknown = null
    const agreed = await waitFor('one leader agreed by the 3 honest nodes', async () => {
      const v = await leaders(nodes)
      const members = await Promise.all(nodes.map(async n => (await getJson(`${n.api}/api/groups/default`)).members.length))
      seen = { leaders: v, members }
      return v[0].leader != null && members.every(m => m === 3) && v.every(x => x.leader === v[0].leader && x.term === v[0].term) ? v[0] : null
    // A safety limit, not a speed check (bench/lan-groups.ts measures convergence): generous, as CI
    // machines are busy. One run in about ten timed out at 30 s while the whole suite ran on 2 cores.
    }, 60_000).catch(err => { throw new Error(`${(err as Error).message}; last seen ${JSON.stringify(seen)}`) })
    honest = agreed.value as { leader: string, term: number }
    const put = await fetch(`${a.api}/api/deployments`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ model: MODEL, replicas: 1 }) })
    assert.equal(put.status, 201, await put.text())
    await waitFor('every node knows the deployment', async () => {
      const lists = await Promise.all(nodes.map(async n => (await getJson(`${n.api}/api/deployments`)).deployments.map((d: any) => d.model)))
      return lists.every(l => l.includes(MODEL))
    }, 15_000)
    // Settle the leadership again: a deployment does not change it, but wait for a stable view.
    honest = (await leaders(nodes))[0] as { leader: string, term: number }
    assert.equal(await chat(nodes[1].api), 200, 'chat works before the attack')

    key = await createIdentity()
    evil = peerIdFromPrivateKey(key).toString()
    hostile = new Mesh<Record<string, unknown>>({
      privateKey: key,
      name: 'mallory',
      groups: ['default'],
      listen: ['/ip4/127.0.0.1/tcp/0'],
      bootstrap: [`/ip4/127.0.0.1/tcp/${a.p2pPort}`],
      mdns: false,
      mdnsIntervalMs: 1000,
      heartbeatMs: 300,
      suspectAfterMs: 3000,
      deadAfterMs: 6000,
      snapshotIntervalMs: 1000,
      pingIntervalMs: 5000,
      redialMinMs: 200,
      redialMaxMs: 2000,
      snapshotVersion: () => snapVersion,
      snapshotData: () => snap,
      leadership: () => lead,
      validateSnapshot: (d: unknown): d is Record<string, unknown> => typeof d === 'object' && d != null
    })
    snap = { version: 'evil', resources: { cpu: { cores: 1 }, memory: { totalBytes: 1 }, disk: {}, gpus: [], llamacpp: [] }, models: [], api: null }
    await hostile.start()
    await new VoteService(hostile.libp2p).serve(async req => req.t === 'cert' ? { t: 'cert', cert: forged } : { t: 'refused', code: 'no', message: 'no' })
    await waitFor('every honest node sees the hostile peer alive', async () => {
      const seen = await Promise.all(nodes.map(async n => (await getJson(`${n.api}/api/peers`)).peers.some((p: any) => p.id === evil && p.status === 'alive')))
      return seen.every(Boolean)
    }, 15_000)
  })

  after(async () => {
    await hostile?.stop().catch(() => {})
    await Promise.all(nodes.map(async n => await stopNode(n, 'SIGKILL')))
  })

  it('(a) leadership claims at terms 1e12 and 2^53, a forged certificate and vote requests are refused and audited', async () => {
    // The forged certificate: the honest nodes' ids as voters, signed with the attacker's key.
    const term = honest.term + 1
    const votes = await Promise.all(nodes.map(async n => ({ voter: n.id, sig: (await signVote(key, n.id, { group: 'default', term, candidate: evil })).sig })))
    forged = { v: 1, group: 'default', term, leader: evil, votes }
    lead = [['default', 1e12, evil], ['default', 2 ** 53, evil], ['default', term, evil]]
    hostile!.heartbeatNow()
    await waitFor('every node audited the out-of-bounds terms and the forged certificate', async () => {
      const audits = await Promise.all(nodes.map(wireAudit))
      return audits.every(a => a.some(e => e.kind === 'term_out_of_bounds' && e.peer === evil) && a.some(e => e.kind === 'invalid_certificate' && e.peer === evil))
    }, 10_000)
    // Vote requests while the leader is alive: refused (and 1e12 never even parses as a request).
    for (const n of nodes) {
      const reply = await requestVote(hostile!.libp2p, n.id, { v: 1, t: 'vote', group: 'default', term })
      assert.equal(reply.t, 'refused', `node ${n.name} refused its vote`)
      assert.ok(reply.t === 'refused' && ['leader_alive', 'not_in_group', 'term_out_of_bounds', 'stale_term'].includes(reply.code), JSON.stringify(reply))
      await assert.rejects(requestVote(hostile!.libp2p, n.id, { v: 1, t: 'vote', group: 'default', term: 1e12 }))
    }
    await waitFor('vote refusals audited', async () => (await Promise.all(nodes.map(wireAudit))).every(a => a.some(e => e.kind === 'vote_refused' && e.peer === evil)), 5000)
    // A few more heartbeats: nothing changes.
    await new Promise(resolve => setTimeout(resolve, 2000))
    for (const v of await leaders(nodes)) assert.deepEqual(v, honest, 'the honest leadership is unchanged')
  })

  it('(a2) a lying member\'s own certificate (its vote alone) is no proof: the honest leader re-certifies above it', async () => {
    const term = honest.term + 2
    forged = { v: 1, group: 'default', term, leader: evil, votes: [{ voter: evil, sig: (await signVote(key, evil, { group: 'default', term, candidate: evil })).sig }] }
    lead = [['default', term, evil]]
    hostile!.heartbeatNow()
    const after = await waitFor('the honest leader re-certified above the rival term, agreed by all', async () => {
      const v = await leaders(nodes)
      return v.every(x => x.leader === honest.leader && x.term > term && x.term === v[0].term) ? v[0] : null
    }, 15_000)
    console.log(`# rival term ${term} → honest leader re-certified at term ${after.value.term} in ${after.ms.toFixed(0)} ms`)
    honest = after.value as { leader: string, term: number }
    lead = []
    forged = null
  })

  it('(b) each of the 7 command types from the self-made leader is refused and audited', async () => {
    for (const n of nodes) {
      for (const type of COMMAND_TYPES) {
        for (const term of [honest.term, honest.term + 1]) {
          const env = await createCommand(key, { type, payload: PAYLOADS[type], group: 'default', term, target: n.id, ttlMs: 60_000 })
          const result = await sendCommand(hostile!.libp2p, n.id, env)
          assert.equal(result.status, 'rejected', `${type} at term ${term} on ${n.name}: ${JSON.stringify(result)}`)
          assert.equal(result.error?.code, 'not_authorized')
          assert.match(result.error!.message, /^not_proven_leader: /)
        }
      }
      const audit = (await getJson(`${n.api}/api/commands?limit=1000`)).commands as any[]
      for (const type of COMMAND_TYPES) {
        assert.ok(audit.some(e => e.type === type && e.issuer === evil && e.verdict === 'rejected' && e.reason === 'not_authorized'), `${type} refusal audited on ${n.name}`)
        assert.ok(!audit.some(e => e.type === type && e.issuer === evil && e.verdict === 'accepted'), `${type} never accepted`)
      }
    }
    for (const v of await leaders(nodes)) assert.deepEqual(v, honest, 'the honest leadership is unchanged')
    // update_config never ran: the limits are what they were, and chat still answers.
    assert.equal(await chat(nodes[1].api), 200)
  })

  it('(c) a tombstone stamped 1e308 and a record signed by a key that is not its origin are refused, audited, never re-gossiped', async () => {
    const base = (await getJson(`${nodes[0].api}/api/deployments`)).deployments.find((d: any) => d.model === MODEL)
    assert.ok(base != null)
    const tombstone = await signObject(key, DEPLOYMENT_SIGNING_DOMAIN, { model: MODEL, replicas: 1, group: 'default', updatedAt: 1e308, origin: evil, deleted: true })
    // Claims to be written by node a, signed by the attacker.
    const impostor = await signObject(key, DEPLOYMENT_SIGNING_DOMAIN, { model: 'evil-model', replicas: 3, group: 'default', updatedAt: Date.now(), origin: nodes[0].id, deleted: false })
    const impostorTomb = await signObject(key, DEPLOYMENT_SIGNING_DOMAIN, { model: MODEL, replicas: 1, group: 'default', updatedAt: Date.now() + 1000, origin: nodes[0].id, deleted: true })
    snap = { ...snap, deployments: [tombstone, impostor, impostorTomb] }
    snapVersion++
    hostile!.scheduleSnapshot(0)
    await waitFor('every node audited both refusals', async () => {
      const audits = await Promise.all(nodes.map(wireAudit))
      return audits.every(a => a.some(e => e.kind === 'deployment_from_future' && e.peer === evil) && a.some(e => e.kind === 'deployment_unsigned' && e.peer === evil))
    }, 10_000)
    // The attacker leaves; nothing it sent lives on in honest snapshots.
    await hostile!.stop()
    hostile = undefined
    await new Promise(resolve => setTimeout(resolve, 4000))
    for (const n of nodes) {
      const list = (await getJson(`${n.api}/api/deployments`)).deployments.map((d: any) => d.model)
      assert.ok(list.includes(MODEL), `${n.name} still has the deployment`)
      assert.ok(!list.includes('evil-model'), `${n.name} took no impostor record`)
    }
    // A fresh listener (another real Mesh) collects what the honest nodes gossip now.
    const listener = observer(await createIdentity(), nodes[0].p2pPort)
    await listener.start()
    try {
      const got = await waitFor('snapshots of all 3 honest nodes', () => {
        const snaps = nodes.map(n => listener.table.get(n.id)?.snapshot as any)
        return snaps.every(x => x?.deployments != null) ? snaps : null
      }, 15_000)
      for (const snapshot of got.value) {
        const records = snapshot.deployments as any[]
        assert.ok(records.some(d => d.model === MODEL && d.deleted === false && typeof d.sig === 'string'), 'the deployment is gossiped, signed')
        assert.ok(!records.some(d => d.model === 'evil-model' || d.updatedAt > Date.now() + 30_000 || d.origin === evil), 'no refused record is gossiped on')
      }
    } finally {
      await listener.stop()
    }
    for (const v of await leaders(nodes)) assert.deepEqual(v, honest, 'the honest leadership is unchanged')
    assert.equal(await chat(nodes[2].api), 200, 'the nodes keep serving')
  })
})
