/**
 * One model across machines (issue 16), on loopback with real parts: three nodes each capped
 * (`--max-loaded-mb`) below a random-weight model's size, llama-server and rpc-server built by
 * scripts/build-llama-server.sh. The deployment becomes ONE replica split over two nodes
 * (llama.cpp RPC through the mesh's tunnel); a chat through the third node streams; nothing of
 * RPC is reachable from outside the mesh; kill -9 of the worker ends the running stream with an
 * error event, the replica is placed again on the nodes left, and chats work again.
 */
import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { execFile } from 'node:child_process'
import net from 'node:net'
import { networkInterfaces } from 'node:os'
import path from 'node:path'
import { promisify } from 'node:util'
import { createTinyModel } from '../support/tiny-model.js'
import { NO_BYTE_TOKENS } from '../support/tool-fixtures.js'
import { ROOT, getJson, sharedSwarmKeyFile, startNode, stopNode, tempDir, waitFor, type NodeProcess } from '../support/cluster.js'
import { createHost } from '../../src/p2p/host.js'
import { createIdentity } from '../../src/p2p/identity.js'
import { readSwarmKey } from '../../src/p2p/swarm-key.js'
import { RPC_TUNNEL_PROTOCOL, encodeTunnelHeader } from '../../src/p2p/rpc-tunnel.js'
import { multiaddr } from '@multiformats/multiaddr'
import { readChatStream } from '../support/chat-stream.js'
import { holdBack } from '../support/hold-back.js'

const run = promisify(execFile)
const MODEL = 'split-tiny'
/** 8 layers of width 256: ~11 MB, ~13 MB with buffers; each node may hold 10 MiB. */
const CAP_MB = 10
/**
 * No end-of-turn or start tokens (a generation runs its whole max_tokens, so a kill lands
 * mid-stream) and no high byte tokens (invalid UTF-8 that llama-server's output parser refuses).
 */
const NO_END = { 2: -100, 259: -100, 260: -100, ...NO_BYTE_TOKENS }

interface Shard { nodeId: string, layers: [number, number] | null }

async function post (url: string, body: unknown): Promise<Response> {
  return await fetch(url, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) })
}

async function splitReplica (api: string): Promise<{ nodeId: string, shards: Shard[] } | undefined> {
  const { deployments } = await getJson(`${api}/api/deployments`)
  const d = deployments.find((x: any) => x.model === MODEL)
  const r = d?.status.actual.find((a: any) => a.state === 'loaded' && Array.isArray(a.shards) && a.shards.length >= 2)
  return r
}

/** Listening TCP sockets (address, port) of a process and its descendants, from `ss`. */
async function listeningOf (pid: number): Promise<Array<{ address: string, port: number }>> {
  const { stdout: tree } = await run('bash', ['-c', `pids=${pid}; for i in 1 2 3 4; do pids="$pids $(pgrep -P $(echo $pids | tr ' ' ',') 2>/dev/null | tr '\\n' ' ')"; done; echo $pids`])
  const pids = new Set(tree.trim().split(/\s+/).filter(Boolean))
  const { stdout } = await run('ss', ['-Hltnp'])
  const out: Array<{ address: string, port: number }> = []
  for (const line of stdout.split('\n')) {
    const owners = [...line.matchAll(/pid=(\d+)/g)].map(m => m[1])
    if (!owners.some(p => pids.has(p))) continue
    const local = line.trim().split(/\s+/)[3]
    const at = local.lastIndexOf(':')
    out.push({ address: local.slice(0, at).replace(/^\[|\]$/g, ''), port: Number(local.slice(at + 1)) })
  }
  return out
}

describe('a model split over nodes (llama.cpp RPC through the mesh)', () => {
  const nodes: NodeProcess[] = []
  const byId = new Map<string, NodeProcess>()
  let headDir: string

  before(async () => {
    const built = await run('bash', [path.join(ROOT, 'scripts', 'build-llama-server.sh')], { cwd: ROOT, maxBuffer: 256 * 1024 * 1024 })
    const binary = built.stdout.trim().split('\n').at(-1) ?? ''
    const rpc = (await run('bash', [path.join(ROOT, 'scripts', 'build-llama-server.sh'), '--rpc-server'], { cwd: ROOT })).stdout.trim().split('\n').at(-1) ?? ''
    headDir = await tempDir('shepherd-split-models-')
    await createTinyModel(path.join(headDir, `${MODEL}.gguf`), { nEmbd: 256, nLayer: 8, addSpacePrefix: false })
    const common = ['--threads', '1', '--engine', 'llama-server', '--llamacpp', path.dirname(binary), '--rpc-server', rpc, '--max-loaded-mb', String(CAP_MB), '--context-size', '256']
    const first = await startNode({ name: 'split-a', args: [...common, '--models-dir', headDir], timeoutMs: 90_000 })
    nodes.push(first)
    const boot = ['--bootstrap', `/ip4/127.0.0.1/tcp/${first.p2pPort}`]
    for (const name of ['split-b', 'split-c']) nodes.push(await startNode({ name, args: [...common, ...boot, '--models-dir', await tempDir('shepherd-split-empty-')], timeoutMs: 90_000 }))
    for (const n of nodes) byId.set(n.id, n)
    await waitFor('a leader for default with 3 members', async () => {
      const views = await Promise.all(nodes.map(async n => await getJson(`${n.api}/api/groups/default`)))
      return views.every(v => v.leader != null && v.leader === views[0].leader && v.members.length === 3)
    }, 30_000)
  })

  after(async () => { await Promise.all(nodes.map(async n => await stopNode(n, 'SIGKILL'))) })

  let head: NodeProcess
  let worker: NodeProcess
  let third: NodeProcess

  it('places ONE replica split over two nodes, shown in status and /api/models', async () => {
    const res = await post(`${nodes[1].api}/api/deployments`, { model: MODEL, replicas: 1 })
    assert.equal(res.status, 201, await res.text())
    const { value: r } = await waitFor('a split replica', async () => await splitReplica(nodes[0].api), 180_000, 250)
    assert.equal(r.shards.length, 2)
    head = byId.get(r.nodeId)!
    assert.equal(head, nodes[0], 'the node holding the file heads it')
    assert.equal(r.shards[0].nodeId, head.id)
    worker = byId.get(r.shards[1].nodeId)!
    third = nodes.find(n => n !== head && n !== worker)!
    // Every layer once, in order, over both nodes.
    const ranges = r.shards.map((s: Shard) => s.layers).filter((x: unknown) => x != null) as Array<[number, number]>
    let next = 0
    for (const [from, to] of ranges) { assert.equal(from, next); next = to + 1 }
    assert.equal(next, 8)
    // The third node learns both by gossip: wait until its view has caught up, then compare.
    const { value: seen } = await waitFor('the third node sees the split', async () => {
      const { deployments } = await getJson(`${third.api}/api/deployments`)
      const { models } = await getJson(`${third.api}/api/models`)
      const host = models.find((m: any) => m.name === MODEL)?.hosts.find((h: any) => h.peerId === head.id)
      const actual = deployments.find((x: any) => x.model === MODEL)?.status.actual ?? []
      return host?.shards != null && actual.some((a: any) => a.shards != null) ? { actual, shards: host.shards } : undefined
    }, 30_000, 250)
    assert.equal(seen.actual.length, 1, `one replica, not one per node: ${JSON.stringify(seen.actual)}`)
    assert.deepEqual(seen.shards, r.shards)
  })

  it('streams a chat through the third node', async () => {
    const res = await post(`${third.api}/v1/chat/completions`, { model: MODEL, stream: true, max_tokens: 12, logit_bias: NO_END, messages: [{ role: 'user', content: 'hello' }] })
    assert.equal(res.status, 200)
    const got = await readChatStream(res)
    assert.ok(got.chunks >= 1 && got.done && got.errors.length === 0, JSON.stringify(got))
  })

  it('exposes nothing of RPC outside the mesh', async () => {
    // Every port the worker (and its children) listens on, besides its API and libp2p ports,
    // is bound to loopback: the machine's LAN address refuses it.
    const apiPort = Number(new URL(worker.api).port)
    const others = (await listeningOf(worker.child.pid!)).filter(l => l.port !== apiPort && l.port !== worker.p2pPort)
    assert.ok(others.length >= 1, 'the worker runs an rpc-server')
    for (const l of others) assert.ok(l.address === '127.0.0.1' || l.address === '::1', `port ${l.port} is bound to ${l.address}`)
    const lan = Object.values(networkInterfaces()).flat().filter(a => a != null && !a.internal && a.family === 'IPv4').map(a => a!.address)
    assert.ok(lan.length > 0, 'this test needs a non-loopback interface')
    for (const l of others) {
      for (const addr of lan) {
        await assert.rejects(new Promise<void>((resolve, reject) => {
          const s = net.connect({ host: addr, port: l.port }, () => { s.destroy(); resolve() })
          s.once('error', reject)
        }), (err: NodeJS.ErrnoException) => err.code === 'ECONNREFUSED', `${addr}:${l.port}`)
      }
    }
    // A host without the swarm key cannot even connect; a member (it holds the key) that is not
    // the split's head is refused by the tunnel and audited.
    const workerAddr = multiaddr(`/ip4/127.0.0.1/tcp/${worker.p2pPort}/p2p/${worker.id}`)
    const outsider = await createHost({ privateKey: await createIdentity(), listen: [], mdns: false, mdnsIntervalMs: 1000 })
    await assert.rejects(outsider.dialProtocol(workerAddr, RPC_TUNNEL_PROTOCOL, { signal: AbortSignal.timeout(10_000) }))
    await outsider.stop()
    const key = await readSwarmKey(await sharedSwarmKeyFile())
    const member = await createHost({ privateKey: await createIdentity(), listen: [], mdns: false, mdnsIntervalMs: 1000, swarmKey: key })
    try {
      const stream = await member.dialProtocol(workerAddr, RPC_TUNNEL_PROTOCOL, { signal: AbortSignal.timeout(10_000) })
      stream.send(encodeTunnelHeader(MODEL))
      let bytes = 0
      stream.addEventListener('message', e => { bytes += e.data.byteLength })
      await new Promise<void>((resolve, reject) => {
        const t = setTimeout(() => reject(new Error('the tunnel stayed open')), 10_000)
        stream.addEventListener('close', () => { clearTimeout(t); resolve() }, { once: true })
      })
      assert.equal(bytes, 0)
    } finally {
      await member.stop()
    }
    await waitFor('an audit entry for the refused tunnel', async () => {
      const { wire } = await getJson(`${worker.api}/api/commands?limit=1000`)
      return wire.some((e: any) => e.kind === 'rpc_tunnel_refused')
    }, 10_000)
    // The worker still serves the head: a chat still works.
    const res = await post(`${third.api}/v1/chat/completions`, { model: MODEL, max_tokens: 4, logit_bias: NO_END, messages: [{ role: 'user', content: 'hi' }] })
    assert.equal(res.status, 200, await res.text())
  })

  it('kill -9 of the worker: an error event, the replica re-placed on the nodes left, chats again', async () => {
    // The whole answer (~220 tokens, the context's worth) takes under a second on an idle machine:
    // a client that a busy machine lets read its second chunk late could kill a worker that was
    // done already. The worker is held back (stopped 40 ms in every 50) until the kill, so the kill lands
    // mid-answer however the client is scheduled.
    const pid = worker.child.pid!
    const release = holdBack(sig => { process.kill(pid, sig) })
    const res = await post(`${third.api}/v1/chat/completions`, { model: MODEL, stream: true, max_tokens: 400, logit_bias: NO_END, messages: [{ role: 'user', content: 'tell me everything' }] }).catch((err: unknown) => { release(); throw err })
    if (res.status !== 200) release()
    assert.equal(res.status, 200)
    let killed = false
    const t0 = Date.now()
    const got = await readChatStream(res, n => { if (n === 2 && !killed) { killed = true; release(); worker.child.kill('SIGKILL') } }).finally(release)
    assert.ok(killed, `the stream ended before the kill: ${JSON.stringify(got)}`)
    assert.ok(!got.done || got.errors.length > 0, `the stream ended as if complete: ${JSON.stringify(got)}`)
    assert.ok(got.errors.length > 0 || got.threw != null, `no error reached the client: ${JSON.stringify(got)}`)
    assert.ok(Date.now() - t0 < 60_000, 'the stream ended in bounded time')
    const t1 = Date.now()
    const { value: r } = await waitFor('the replica re-placed without the dead worker', async () => {
      const x = await splitReplica(head.api).catch(() => undefined)
      return x != null && x.shards.every(s => s.nodeId !== worker.id) ? x : undefined
    }, 120_000, 250)
    console.log(`# re-placed ${Date.now() - t1} ms after the stream ended: ${r.shards.map(s => s.nodeId.slice(-6)).join(' + ')}`)
    assert.deepEqual(new Set(r.shards.map(s => s.nodeId)), new Set([head.id, third.id]))
    const again = await post(`${third.api}/v1/chat/completions`, { model: MODEL, stream: true, max_tokens: 8, logit_bias: NO_END, messages: [{ role: 'user', content: 'again' }] })
    assert.equal(again.status, 200)
    const ok = await readChatStream(again)
    assert.ok(ok.chunks >= 1 && ok.done && ok.errors.length === 0, JSON.stringify(ok))
  })
})
