/**
 * Several real nodes (separate processes: libp2p tcp + noise + yamux + gossipsub, LevelDB on disk,
 * Fastify over HTTP) on loopback, joined by --bootstrap with mDNS off.
 */
import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import fs from 'node:fs/promises'
import path from 'node:path'
import { createTinyModel } from '../support/tiny-model.js'
import { getJson, runCli, startNode, statusOf, stopNode, tempDir, waitFor, freePorts, type NodeProcess } from '../support/cluster.js'

describe('mesh of three nodes on loopback', () => {
  const nodes: NodeProcess[] = []
  let a: NodeProcess, b: NodeProcess, c: NodeProcess
  let modelsDir: string

  before(async () => {
    modelsDir = await tempDir('shepherd-models-')
    await createTinyModel(path.join(modelsDir, 'tiny-chat.gguf'))
    a = await startNode({ name: 'node-a' })
    const boot = ['--bootstrap', `/ip4/127.0.0.1/tcp/${a.p2pPort}`]
    ;[b, c] = await Promise.all([
      startNode({ name: 'node-b', args: [...boot, '--models-dir', modelsDir] }),
      startNode({ name: 'node-c', args: boot })
    ])
    nodes.push(a, b, c)
  })

  after(async () => {
    await Promise.all(nodes.map(async n => await stopNode(n, 'SIGKILL')))
  })

  it('every node sees the others alive with resource snapshots', async () => {
    for (const n of [a, b, c]) {
      const others = [a, b, c].filter(o => o !== n)
      const { ms } = await waitFor(`${n.name} to see all peers with snapshots`, async () => {
        const { peers } = await getJson(`${n.api}/api/peers`)
        return others.every(o => peers.some((p: any) => p.id === o.id && p.status === 'alive' && p.resources != null))
      }, 10_000)
      console.log(`# ${n.name}: full view after ${ms.toFixed(0)} ms`)
    }
    const { peers } = await getJson(`${a.api}/api/peers`)
    const pb = peers.find((p: any) => p.id === b.id)
    assert.equal(pb.name, 'node-b')
    assert.deepEqual(pb.groups, ['default'])
    assert.ok(pb.resources.cpu.cores > 0)
    assert.ok(pb.resources.memory.totalBytes > 0)
    assert.ok(pb.resources.disk.totalBytes > 0)
    assert.ok(Array.isArray(pb.resources.gpus))
    assert.ok(Array.isArray(pb.resources.llamacpp))
    assert.ok(!Number.isNaN(Date.parse(pb.lastSeen)))
    assert.ok(pb.addresses.some((x: string) => x.startsWith('/ip4/127.0.0.1/tcp/')))
    assert.deepEqual(pb.models.map((m: any) => [m.name, m.architecture]), [['tiny-chat', 'llama']])
    assert.ok(pb.models[0].sizeBytes > 0)
    assert.ok(typeof pb.models[0].quantization === 'string')
    await waitFor('an RTT measurement', async () => {
      const p = await getJson(`${a.api}/api/peers/${b.id}`)
      return typeof p.rttMs === 'number' && p.rttMs >= 0
    }, 8000)
  })

  it('/api/node shows self with the same fields as a peer entry', async () => {
    const self = await getJson(`${b.api}/api/node`)
    const seen = await getJson(`${a.api}/api/peers/${b.id}`)
    assert.equal(self.id, b.id)
    assert.deepEqual(Object.keys(self).sort(), Object.keys(seen).sort())
    assert.equal(self.models[0].name, 'tiny-chat')
  })

  it('unknown peer ids and bad ids get OpenAI-style errors', async () => {
    const res = await fetch(`${a.api}/api/peers/12D3KooWnotapeer`)
    assert.equal(res.status, 404)
    const body = await res.json() as any
    assert.equal(body.error.code, 'peer_not_found')
    const bad = await fetch(`${a.api}/api/peers/${encodeURIComponent('../etc')}`)
    assert.equal(bad.status, 400)
    assert.equal((await bad.json() as any).error.type, 'invalid_request_error')
  })

  it('serves Prometheus metrics with gossip counters', async () => {
    const text = await (await fetch(`${a.api}/metrics`)).text()
    const sent = Number(/^shepherd_gossip_bytes_sent_total (\d+)$/m.exec(text)?.[1])
    assert.ok(sent > 0, 'gossip bytes were sent')
    assert.match(text, /^shepherd_peers\{status="alive"\} 2$/m)
    assert.match(text, /^process_resident_memory_bytes \d+$/m)
    assert.match(text, /^shepherd_connections [1-9]\d*$/m)
    // The peers it keeps connected, and the member lists it swapped with them (joining or serving).
    assert.match(text, /^shepherd_redial_targets\{kind="known"\} [1-9]\d*$/m)
    assert.match(text, /^shepherd_redial_dials_total\{kind="hint_dropped"\} 0$/m)
    const exchanges = (outcome: string): number => Number(new RegExp(`^shepherd_member_exchanges_total\\{outcome="${outcome}"\\} (\\d+)$`, 'm').exec(text)?.[1])
    assert.ok(exchanges('exchanged') + exchanges('served') > 0, 'member lists were swapped')
    assert.equal(exchanges('refused'), 0)
    // SWIM's local health (Lifeguard awareness) and the round trip of its probes (acks came).
    assert.match(text, /^shepherd_swim_local_health [0-7]$/m)
    const rtt = Number(/^shepherd_swim_rtt_ms (\S+)$/m.exec(text)?.[1])
    assert.ok(rtt >= 0 && rtt < 5000, `smoothed round trip ${rtt} ms`)
    const probes = (outcome: string): number => Number(new RegExp(`^shepherd_swim_probes_total\\{outcome="${outcome}"\\} (\\d+)$`, 'm').exec(text)?.[1])
    assert.ok(probes('acked') > 0, 'probes were acked')
    assert.ok(probes('failed') >= 0)
    assert.match(text, /^shepherd_swim_refutes_total \d+$/m)
    assert.match(text, /^shepherd_swim_late_ticks_total \d+$/m)
  })

  it('detects kill -9 within 3 s, silent loss (SIGSTOP) within 5 s, and a restart within 2 s', async () => {
    const events: string[] = []
    const sse = await fetch(`${a.api}/api/events`)
    assert.equal(sse.headers.get('content-type'), 'text/event-stream')
    const reader = sse.body!.getReader()
    void (async () => {
      const dec = new TextDecoder()
      for (;;) {
        const { value, done } = await reader.read().catch(() => ({ value: undefined, done: true }))
        if (done === true) break
        events.push(dec.decode(value))
      }
    })()

    // Silent loss: the process freezes, its TCP connections stay open, only heartbeats stop.
    c.child.kill('SIGSTOP')
    const silent = await waitFor('C dead after SIGSTOP', async () => await statusOf(a.api, c.id) === 'dead', 6000)
    console.log(`# silent loss detected after ${silent.ms.toFixed(0)} ms`)
    assert.ok(silent.ms <= 5000)
    c.child.kill('SIGCONT')
    const back = await waitFor('C alive after SIGCONT', async () => await statusOf(a.api, c.id) === 'alive', 3000)
    console.log(`# resumed peer alive after ${back.ms.toFixed(0)} ms`)

    // Crash: the kernel closes its sockets; a refused redial proves the process is gone.
    const killedAt = performance.now()
    c.child.kill('SIGKILL')
    await waitFor('C dead on A and B', async () => (await statusOf(a.api, c.id)) === 'dead' && (await statusOf(b.api, c.id)) === 'dead', 3000)
    const crashMs = performance.now() - killedAt
    console.log(`# kill -9 detected by all after ${crashMs.toFixed(0)} ms`)
    assert.ok(crashMs <= 3000)

    // Restart with the same data dir: same peer id, alive again on the others.
    const restartedAt = performance.now()
    const c2 = await startNode({ name: 'node-c', dataDir: c.dataDir, args: ['--bootstrap', `/ip4/127.0.0.1/tcp/${a.p2pPort}`] })
    nodes.push(c2)
    assert.equal(c2.id, c.id, 'peer id is stable across restarts')
    const readyMs = performance.now() - restartedAt
    const rejoin = await waitFor('restarted C alive on A and B', async () => (await statusOf(a.api, c.id)) === 'alive' && (await statusOf(b.api, c.id)) === 'alive', 2000)
    console.log(`# restarted peer alive ${rejoin.ms.toFixed(0)} ms after its ready line (process start ${readyMs.toFixed(0)} ms)`)
    c = c2

    await waitFor('SSE events', async () => {
      const all = events.join('')
      return /event: peer:suspect/.test(all) && /event: peer:dead/.test(all) && /event: peer:alive/.test(all)
    }, 2000)
    await reader.cancel()
  })

  it('a clean stop (SIGTERM) is seen as left at once', async () => {
    const t0 = performance.now()
    const code = await stopNode(b, 'SIGTERM')
    assert.equal(code, 0)
    const { ms } = await waitFor('B left on A', async () => await statusOf(a.api, b.id) === 'left', 1000)
    console.log(`# clean leave seen ${ms.toFixed(0)} ms after exit (${(performance.now() - t0).toFixed(0)} ms after SIGTERM)`)
  })
})

describe('CLI against a running node', () => {
  let n: NodeProcess
  before(async () => { n = await startNode({ name: 'cli-node' }) })
  after(async () => { await stopNode(n, 'SIGKILL') })

  const cli = runCli


  it('status and peers print readable output and JSON', async () => {
    const status = await cli(['status', '--api', n.api])
    assert.equal(status.code, 0, status.err)
    assert.match(status.out, /name:\s+cli-node/)
    assert.match(status.out, new RegExp(`id:\\s+${n.id}`))
    const peers = await cli(['peers', '--api', n.api])
    assert.equal(peers.code, 0)
    assert.match(peers.out, /no peers yet/)
    const json = await cli(['peers', '--api', n.api, '--json'])
    assert.deepEqual(JSON.parse(json.out), [])
  })

  it('--help works on every command', async () => {
    for (const cmd of [['--help'], ['start', '--help'], ['status', '--help'], ['peers', '--help']]) {
      const r = await cli(cmd)
      assert.equal(r.code, 0, `${cmd.join(' ')}: ${r.err}`)
      assert.match(r.out, /Usage: shepherd-mesh/)
    }
  })

  it('gives one clear line for a bad flag, a taken port, an unreadable data dir, an absent node', async () => {
    const bad = await cli(['start', '--bogus'])
    assert.equal(bad.code, 2)
    assert.equal(bad.err.trim().split('\n').length, 1)
    assert.match(bad.err, /Unknown option '--bogus'/)

    const port = Number(new URL(n.api).port)
    const [p2p] = await freePorts(1)
    const taken = await cli(['start', '--no-mdns', '--data-dir', await tempDir(), '--api-port', String(port), '--listen', `/ip4/127.0.0.1/tcp/${p2p}`])
    assert.equal(taken.code, 1)
    assert.match(taken.err, new RegExp(`API port ${port} is already in use`))
    assert.equal(taken.err.trim().split('\n').length, 1)

    const file = path.join(await tempDir(), 'not-a-dir')
    await fs.writeFile(file, 'x')
    const unreadable = await cli(['start', '--no-mdns', '--data-dir', file, '--listen', '/ip4/127.0.0.1/tcp/0', '--api-port', '0'])
    assert.equal(unreadable.code, 1)
    assert.match(unreadable.err, /data dir .* is not usable/)

    const locked = await cli(['start', '--no-mdns', '--data-dir', n.dataDir, '--listen', '/ip4/127.0.0.1/tcp/0', '--api-port', '0'])
    assert.equal(locked.code, 1)
    assert.match(locked.err, /in use by another shepherd-mesh process/)

    const absent = await cli(['peers', '--api', 'http://127.0.0.1:1'])
    assert.equal(absent.code, 1)
    assert.match(absent.err, /no node answers at http:\/\/127.0.0.1:1/)
  })
})
