/** Private swarms, trust lists and API limits with real node processes on loopback. */
import { after, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import fs from 'node:fs/promises'
import path from 'node:path'
import { runCli, getJson, startNode, stopNode, tempDir, waitFor, type NodeProcess } from '../support/cluster.js'

const cli = runCli

const peerIds = async (n: NodeProcess): Promise<string[]> => (await getJson(`${n.api}/api/peers`)).peers.map((p: any) => p.id)

describe('private swarms and trust', () => {
  const all: NodeProcess[] = []
  after(async () => { await Promise.all(all.map(async n => await stopNode(n, 'SIGKILL'))) })

  it('keygen writes a 0600 v1 PSK and refuses to overwrite it', async () => {
    const file = path.join(await tempDir(), 'swarm.key')
    const r = await cli(['keygen', file])
    assert.equal(r.code, 0, r.err)
    const text = await fs.readFile(file, 'utf8')
    assert.match(text, /^\/key\/swarm\/psk\/1\.0\.0\/\n\/base16\/\n[0-9a-f]{64}\n$/)
    assert.equal((await fs.stat(file)).mode & 0o777, 0o600)
    const again = await cli(['keygen', file])
    assert.equal(again.code, 2)
    assert.match(again.err, /exists; use --force/)
    const bad = path.join(await tempDir(), 'bad.key')
    await fs.writeFile(bad, 'not a key')
    const start = await cli(['start', '--no-mdns', '--swarm-key', bad, '--data-dir', await tempDir(), '--listen', '/ip4/127.0.0.1/tcp/0', '--api-port', '0'])
    assert.equal(start.code, 1)
    assert.match(start.err, /is not a v1 PSK/)
    assert.ok(!start.err.includes('not a key'), 'the key file content is never printed')
  })

  it('nodes with one key form a mesh; another key or no key sees nothing and can do nothing', async () => {
    const dir = await tempDir()
    const k1 = path.join(dir, 'k1'); const k2 = path.join(dir, 'k2')
    await cli(['keygen', k1]); await cli(['keygen', k2])
    const key1 = (await fs.readFile(k1, 'utf8')).split('\n')[2]
    const a = await startNode({ name: 'p-a', args: ['--swarm-key', k1, '--log-level', 'trace'] })
    all.push(a)
    assert.match(a.stderr.join(''), /private mesh/)
    const boot = ['--bootstrap', `/ip4/127.0.0.1/tcp/${a.p2pPort}`]
    const [b, c, d] = await Promise.all([
      startNode({ name: 'p-b', args: [...boot, '--swarm-key', k1] }),
      startNode({ name: 'p-c', args: [...boot, '--swarm-key', k2] }),
      startNode({ name: 'p-d', args: boot, membership: 'admission' })
    ])
    all.push(b, c, d)
    assert.match(d.stderr.join(''), /new nodes wait as pending/)
    await waitFor('A and B see each other', async () => (await peerIds(a)).includes(b.id) && (await peerIds(b)).includes(a.id), 8000)
    await new Promise(resolve => setTimeout(resolve, 2500)) // several redial rounds of C and D
    assert.deepEqual(await peerIds(a), [b.id])
    assert.deepEqual(await peerIds(c), [])
    assert.deepEqual(await peerIds(d), [])
    // D can reach none of the mesh's models and send it no command.
    const cmd = await fetch(`${d.api}/api/commands`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ target: a.id, type: 'scan_models' }) })
    assert.equal(cmd.status, 404)
    assert.equal((await cmd.json() as any).error.code, 'peer_not_found')
    assert.ok(!a.stderr.join('').includes(key1), 'the swarm key never appears in logs')
  })

  it('a denied peer is cut off at once, refused afterwards, and shown as denied', async () => {
    const e = await startNode({ name: 't-e' })
    all.push(e)
    const f = await startNode({ name: 't-f', args: ['--bootstrap', `/ip4/127.0.0.1/tcp/${e.p2pPort}`] })
    all.push(f)
    await waitFor('E sees F', async () => (await getJson(`${e.api}/api/peers`)).peers.some((p: any) => p.id === f.id && p.status === 'alive' && p.trust === 'member'), 8000)
    const res = await fetch(`${e.api}/api/trust`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ deny: [f.id] }) })
    assert.equal(res.status, 200)
    assert.deepEqual((await res.json() as any).deny, [f.id])
    const { ms } = await waitFor('F sees E gone', async () => {
      const p = (await getJson(`${f.api}/api/peers`)).peers.find((x: any) => x.id === e.id)
      return p != null && p.status !== 'alive'
    }, 6000)
    console.log(`# denied peer cut off; seen by it after ${ms.toFixed(0)} ms`)
    const seen = (await getJson(`${e.api}/api/peers/${f.id}`))
    assert.equal(seen.trust, 'denied')
    await new Promise(resolve => setTimeout(resolve, 2000))
    assert.notEqual((await getJson(`${f.api}/api/peers/${e.id}`)).status, 'alive', 'F cannot reconnect')
    const audit = await getJson(`${e.api}/api/commands`)
    assert.ok(audit.wire.some((x: any) => x.kind === 'trust_change'))
    // Survives a restart of E: the lists are persisted.
    await stopNode(e, 'SIGTERM')
    const e2 = await startNode({ name: 't-e', dataDir: e.dataDir, args: ['--bootstrap', `/ip4/127.0.0.1/tcp/${f.p2pPort}`] })
    all.push(e2)
    assert.deepEqual((await getJson(`${e2.api}/api/trust`)).deny, [f.id])
    await new Promise(resolve => setTimeout(resolve, 1500))
    assert.ok(!(await peerIds(e2)).includes(f.id) || (await getJson(`${e2.api}/api/peers/${f.id}`)).status !== 'alive')
  })

  it('rate-limits per API key with 429 and retry-after, other keys unaffected', async () => {
    const n = await startNode({ name: 'rl', args: ['--rate-limit', '5', '--api-key', 'key-one', '--api-key', 'key-two'] })
    all.push(n)
    const get = async (key: string): Promise<Response> => await fetch(`${n.api}/v1/models`, { headers: { authorization: `Bearer ${key}` } })
    for (let i = 0; i < 5; i++) assert.equal((await get('key-one')).status, 200)
    const limited = await get('key-one')
    assert.equal(limited.status, 429)
    assert.ok(Number(limited.headers.get('retry-after')) > 0)
    assert.equal((await limited.json() as any).error.code, 'rate_limit_exceeded')
    assert.equal((await get('key-two')).status, 200)
    assert.ok(!n.stderr.join('').includes('key-one'))
  })
})
