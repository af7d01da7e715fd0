/**
 * One model across machines (issue 16) on a real LAN: three `shepherd-mesh start` processes, one
 * per network namespace on the test's bridge, finding each other by mDNS alone. Each node may hold
 * 10 MiB (`--max-loaded-mb`), the model (random weights, written by the test) needs ~13 MB, so the
 * deployment becomes ONE replica split over two nodes, llama.cpp RPC through the mesh's tunnel.
 * Checked: a chat through the third node streams; from another namespace every TCP port the
 * worker listens on besides its API and libp2p ports refuses the connection (nothing of RPC is
 * on the LAN); kill -9 of the worker ends a running stream with an error event, the replica is
 * placed again on the two nodes left, and chats work again; once the deployment is deleted, the
 * new worker stops its idle rpc-server by itself and stops gossiping its memory. Real binaries built by
 * scripts/build-llama-server.sh; limits are generous for a busy 2-core machine.
 */
import { execFile } from 'node:child_process'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { dirname, join } from 'node:path'
import { promisify } from 'node:util'
import { after, before, describe, test } from 'node:test'
import assert from 'node:assert/strict'
import { createTinyModel } from '../support/tiny-model.js'
import { NO_BYTE_TOKENS } from '../support/tool-fixtures.js'
import { waitFor } from '../support/cluster.js'
import { readChatStream } from '../support/chat-stream.js'
import { holdBack } from '../support/hold-back.js'
import { API_PORT, MeshCluster, P2P_PORT, REPO_ROOT, type ApiPeer } from './mesh-cluster.js'

const run = promisify(execFile)
const MODEL = 'split-lan'
/** 8 layers of width 256: ~11 MB on disk, ~13 MB with buffers; each node may hold 10 MiB. */
const CAP_MB = 10
/** No end-of-turn or start tokens (a generation runs its whole max_tokens) and no high byte tokens. */
const NO_END = { 2: -100, 259: -100, 260: -100, ...NO_BYTE_TOKENS }

interface Shard { nodeId: string, layers: [number, number] | null }
interface Replica { nodeId: string, state: string, shards?: Shard[] }

/**
 * Connects from inside namespace `from` to host:port and prints how it went: `connected`, or
 * the error code (ECONNREFUSED, ...). Exits on its own within 5 s.
 */
const TCP_PROBE = `
const net = require('node:net')
const s = net.connect(Number(process.argv[2]), process.argv[1])
s.once('connect', () => { process.stdout.write('connected'); s.destroy(); process.exit(0) })
s.once('error', e => { process.stdout.write(e.code || e.message); process.exit(0) })
setTimeout(() => { process.stdout.write('timeout'); process.exit(0) }, 5000)
`

describe('a model split over nodes on a namespace LAN (mDNS, llama.cpp RPC through the mesh)', { timeout: 900_000 }, () => {
  let cluster: MeshCluster | undefined
  const c = (): MeshCluster => { if (cluster == null) throw new Error('the cluster did not start'); return cluster }
  const api = (i: number): string => c().nodes[i].apiUrl
  const indexOf = (id: string): number => {
    const i = c().nodes.findIndex(n => n.peerId === id)
    if (i < 0) throw new Error(`no node ${id}`)
    return i
  }
  /** What the nodes say about the deployment and their last log lines, for a failure message. */
  const explain = async (): Promise<string> => {
    const out: string[] = []
    for (const n of c().nodes) {
      const status = await c().getJson<{ deployments: Array<{ model: string, status: unknown }> }>(n.index, '/api/deployments', 10_000)
        .then(b => JSON.stringify(b.deployments.find(d => d.model === MODEL)?.status), (err: Error) => `unreachable: ${err.message}`)
      out.push(`node ${n.index} (${n.peerId.slice(-6)}): ${status}; stderr: ${n.stderr.slice(-1500)}`)
    }
    return out.join('\n')
  }
  const post = async (i: number, path: string, body: unknown): Promise<Response> =>
    await fetch(api(i) + path, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) })
  /** The loaded split replica of MODEL as node `i`'s deployment status shows it. */
  const splitReplica = async (i: number): Promise<(Replica & { shards: Shard[] }) | undefined> => {
    const { deployments } = await c().getJson<{ deployments: Array<{ model: string, status: { actual: Replica[] } }> }>(i, '/api/deployments', 5000)
    const r = deployments.find(d => d.model === MODEL)?.status.actual.find(a => a.state === 'loaded' && Array.isArray(a.shards) && a.shards.length >= 2)
    return r as (Replica & { shards: Shard[] }) | undefined
  }

  let modelsDir: string | undefined
  let head = -1
  let worker = -1
  let third = -1

  before(async () => {
    const built = await run('bash', [join(REPO_ROOT, 'scripts', 'build-llama-server.sh')], { cwd: REPO_ROOT, maxBuffer: 256 * 1024 * 1024 })
    const llamaServer = built.stdout.trim().split('\n').at(-1) ?? ''
    const rpcServer = (await run('bash', [join(REPO_ROOT, 'scripts', 'build-llama-server.sh'), '--rpc-server'], { cwd: REPO_ROOT })).stdout.trim().split('\n').at(-1) ?? ''
    modelsDir = await mkdtemp(join(tmpdir(), 'shepherd-lan-split-'))
    await createTinyModel(join(modelsDir, `${MODEL}.gguf`), { nEmbd: 256, nLayer: 8, addSpacePrefix: false })
    cluster = await MeshCluster.start({
      nodes: 3,
      // Only node 0 has the file: it heads the split (a head needs the file, workers get tensors over RPC).
      modelsDirs: { 0: modelsDir },
      startTimeoutMs: 120_000,
      extraArgs: ['--threads', '1', '--engine', 'llama-server', '--llamacpp', dirname(llamaServer), '--rpc-server', rpcServer, '--max-loaded-mb', String(CAP_MB), '--context-size', '256']
    })
    let lastViews = ''
    await waitFor('one group of 3 with one leader, found by mDNS', async () => {
      const views = await Promise.all([0, 1, 2].map(async i => await c().getJson<{ leader: string | null, term: number, members: Array<{ name: string, status: string }> }>(i, '/api/groups/default', 5000)))
      lastViews = views.map((v, i) => `node ${i}: leader …${v.leader?.slice(-6) ?? 'none'} term ${v.term} members ${v.members.map(m => `${m.name}:${m.status}`).join(' ')}`).join('; ')
      return views.every(v => v.leader != null && v.leader === views[0].leader && v.members.length === 3)
    }, 120_000, 250).catch(err => { throw new Error(`${(err as Error).message}; last views: ${lastViews}; stderr: ${c().nodes.map(n => n.stderr.slice(-800)).join(' | ')}`) })
  })

  after(async () => {
    // A node that died on its own (not the worker this test kills) says why.
    for (const n of cluster?.nodes ?? []) {
      const child = n.proc?.child
      if (n.index !== worker && child != null && (child.exitCode != null || child.signalCode != null)) {
        console.log(`# node ${n.index} exited (${child.exitCode ?? child.signalCode}); stderr: ${n.stderr.slice(-3000)}`)
      }
    }
    await cluster?.destroy()
    if (modelsDir != null) await rm(modelsDir, { recursive: true, force: true })
  })

  test('the deployment becomes ONE replica split over two nodes', async () => {
    const res = await post(1, '/api/deployments', { model: MODEL, replicas: 1 })
    assert.equal(res.status, 201, await res.text())
    const t0 = performance.now()
    const { value: r } = await waitFor('a split replica', async () => await splitReplica(0), 300_000, 500)
    console.log(`# split replica loaded ${Math.round(performance.now() - t0)} ms after the deployment`)
    assert.equal(r.shards.length, 2, JSON.stringify(r))
    head = indexOf(r.nodeId)
    assert.equal(head, 0, 'the node holding the file heads it')
    assert.equal(r.shards[0].nodeId, r.nodeId)
    worker = indexOf(r.shards[1].nodeId)
    third = [0, 1, 2].find(i => i !== head && i !== worker)!
    const ranges = r.shards.map(s => s.layers).filter((x): x is [number, number] => x != null)
    let next = 0
    for (const [from, to] of ranges) { assert.equal(from, next); next = to + 1 }
    assert.equal(next, 8, 'every layer once, in order')
    // The third node learns it by gossip: one replica, not one per node.
    const { value: actual } = await waitFor('the third node sees the split', async () => {
      const { deployments } = await c().getJson<{ deployments: Array<{ model: string, status: { actual: Replica[] } }> }>(third, '/api/deployments', 5000)
      const a = deployments.find(d => d.model === MODEL)?.status.actual ?? []
      return a.some(x => x.shards != null) ? a : undefined
    }, 60_000, 250)
    assert.equal(actual.length, 1, JSON.stringify(actual))
  })

  test('a chat through the third node streams', async () => {
    assert.ok(third >= 0, 'the split was placed')
    const res = await post(third, '/v1/chat/completions', { model: MODEL, stream: true, max_tokens: 12, logit_bias: NO_END, messages: [{ role: 'user', content: 'hello' }] })
    assert.equal(res.status, 200)
    const got = await readChatStream(res)
    assert.ok(got.chunks >= 1 && got.done && got.errors.length === 0, JSON.stringify(got))
  })

  test('from another namespace, every port of the worker besides its API and libp2p ports refuses', async () => {
    assert.ok(worker >= 0, 'the split was placed')
    const w = c().nodes[worker]
    // Every TCP listener in the worker's namespace (only the node and its rpc-server run there).
    const ss = await c().lan.exec(worker, 'ss', ['-Hltnp'])
    const listening = ss.split('\n').filter(l => l.trim() !== '').map(line => {
      const local = line.trim().split(/\s+/)[3]
      const at = local.lastIndexOf(':')
      return { address: local.slice(0, at).replace(/^\[|\]$/g, ''), port: Number(local.slice(at + 1)), line }
    })
    const others = listening.filter(l => l.port !== API_PORT && l.port !== P2P_PORT)
    assert.ok(others.some(l => l.line.includes('rpc-server')), `the worker runs an rpc-server: ${ss}`)
    for (const l of others) assert.ok(l.address === '127.0.0.1' || l.address === '::1', `port ${l.port} is bound to ${l.address}: ${l.line}`)
    const probe = async (host: string, port: number): Promise<string> => await c().lan.exec(third, process.execPath, ['-e', TCP_PROBE, host, String(port)])
    // The probe can connect at all: the worker's API port answers from the third namespace.
    assert.equal(await probe(w.lanNode.ip, API_PORT), 'connected')
    assert.equal(await probe(w.lanNode.ip, P2P_PORT), 'connected')
    for (const l of others) assert.equal(await probe(w.lanNode.ip, l.port), 'ECONNREFUSED', `${w.lanNode.ip}:${l.port} (${l.line})`)
    // The same from the root namespace (the bridge), i.e. any other machine on the LAN.
    for (const l of others) {
      const out = (await run(process.execPath, ['-e', TCP_PROBE, w.lanNode.ip, String(l.port)])).stdout
      assert.equal(out, 'ECONNREFUSED', `${w.lanNode.ip}:${l.port} from the bridge`)
    }
  })

  test('kill -9 of the worker: an error event, the replica re-placed on the nodes left, chats again', async () => {
    assert.ok(worker >= 0, 'the split was placed')
    // The whole answer (the context's worth) takes about a second: a client that a busy machine
    // lets read its second chunk late could kill a worker that was done already. The worker is
    // held back (stopped 40 ms in every 50) until the kill, so the kill lands mid-answer.
    const release = holdBack(sig => { c().kill(worker, sig) })
    const res = await post(third, '/v1/chat/completions', { model: MODEL, stream: true, max_tokens: 400, logit_bias: NO_END, messages: [{ role: 'user', content: 'tell me everything' }] }).catch((err: unknown) => { release(); throw err })
    if (res.status !== 200) release()
    assert.equal(res.status, 200)
    let killed = false
    const t0 = performance.now()
    const got = await readChatStream(res, n => { if (n === 2 && !killed) { killed = true; release(); c().kill(worker, 'SIGKILL') } }).finally(release)
    assert.ok(killed, `the stream ended before the kill: ${JSON.stringify(got)}`)
    assert.ok(!got.done || got.errors.length > 0, `the stream ended as if complete: ${JSON.stringify(got)}`)
    assert.ok(got.errors.length > 0 || got.threw != null, `no error reached the client: ${JSON.stringify(got)}`)
    assert.ok(performance.now() - t0 < 90_000, 'the stream ended in bounded time')
    console.log(`# the stream ended ${Math.round(performance.now() - t0)} ms after it started: ${JSON.stringify(got.errors).slice(0, 200)}`)
    const t1 = performance.now()
    const deadId = c().nodes[worker].peerId
    const { value: r } = await waitFor('the replica re-placed without the dead worker', async () => {
      const x = await splitReplica(head).catch(() => undefined)
      return x != null && x.shards.every(s => s.nodeId !== deadId) ? x : undefined
    }, 240_000, 500).catch(async err => { throw new Error(`${(err as Error).message}; ${await explain()}`) })
    console.log(`# re-placed ${Math.round(performance.now() - t1)} ms after the stream ended`)
    assert.deepEqual(new Set(r.shards.map(s => s.nodeId)), new Set([c().nodes[head].peerId, c().nodes[third].peerId]))
    const again = await post(third, '/v1/chat/completions', { model: MODEL, stream: true, max_tokens: 8, logit_bias: NO_END, messages: [{ role: 'user', content: 'again' }] })
    assert.equal(again.status, 200)
    const ok = await readChatStream(again)
    assert.ok(ok.chunks >= 1 && ok.done && ok.errors.length === 0, JSON.stringify(ok))
  })

  test('a worker whose split ended stops its rpc-server, and its snapshot stops counting it', async () => {
    assert.ok(third >= 0, 'the split was placed')
    // The third node is the worker now; it gossips what its rpc-server holds.
    const thirdId = c().nodes[third].peerId
    const rpcBytes = async (): Promise<number | undefined> => {
      const { peers } = await c().getJson<{ peers: ApiPeer[] }>(head, '/api/peers', 10_000)
      return (peers.find(p => p.id === thirdId)?.resources?.memory as { rpcServerBytes?: number } | undefined)?.rpcServerBytes
    }
    const { value: held } = await waitFor('the worker gossips its rpc-server memory', rpcBytes, 120_000, 500)
    assert.ok(held > 0)
    const rpcListeners = async (): Promise<string[]> => (await c().lan.exec(third, 'ss', ['-Hltnp'])).split('\n').filter(l => l.includes('rpc-server'))
    assert.ok((await rpcListeners()).length >= 1, 'the worker runs an rpc-server')
    const res = await fetch(`${api(0)}/api/deployments/${MODEL}`, { method: 'DELETE' })
    assert.equal(res.status, 200, await res.text())
    // The head unloads its copy, llama.cpp's connections close, and after the idle time
    // (rpc-idle.ts: 15 s) the worker stops the rpc-server nobody names any more.
    const t0 = performance.now()
    await waitFor('the idle rpc-server stopped', async () => (await rpcListeners()).length === 0, 180_000, 1000)
    console.log(`# the worker stopped its idle rpc-server ${Math.round(performance.now() - t0)} ms after the deployment was deleted`)
    await waitFor('the worker no longer gossips rpc-server memory', async () => (await rpcBytes()) == null, 120_000, 500)
  })
})
