/**
 * kill -9 in the middle of writes loses nothing that was acknowledged; a corrupt store is a
 * clear error with a recovery path (doctor), not a crash loop.
 */
import { after, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import fs from 'node:fs/promises'
import path from 'node:path'
import { createTinyModel } from '../support/tiny-model.js'
import { peerIdFromString } from '@libp2p/peer-id'
import { multiaddr } from '@multiformats/multiaddr'
import { runCli, getJson, startNode, stopNode, tempDir, waitFor, type NodeProcess } from '../support/cluster.js'
import { exchange, newHost } from '../support/fuzz-hosts.js'
import { INFERENCE_PROTOCOL } from '../../src/p2p/constants.js'

const cli = runCli

describe('durability', () => {
  const all: NodeProcess[] = []
  after(async () => { await Promise.all(all.map(async n => await stopNode(n, 'SIGKILL'))) })

  it('keeps every acknowledged deployment and command record through kill -9 mid-burst', async () => {
    const models = await tempDir('shepherd-dur-models-')
    const names = Array.from({ length: 12 }, (_, i) => `m${i}`)
    await createTinyModel(path.join(models, 'base.gguf'))
    for (const n of names) await fs.copyFile(path.join(models, 'base.gguf'), path.join(models, `${n}.gguf`))
    // No group: deployments are stored and gossiped but nobody reconciles them here.
    const node = await startNode({ name: 'dur', args: ['--models-dir', models, '--group', 'solo'] })
    all.push(node)
    const acked: string[] = []
    /** Per model, the replicas of its newest write sent, acknowledged or not. */
    const sent = new Map<string, number>()
    /** Per model, the version (updatedAt) of its last acknowledged write. */
    const ackedAt = new Map<string, number>()
    const ackedCommands: string[] = []
    let stop = false
    const writers = names.map(async (model, i) => {
      for (let round = 0; !stop; round++) {
        try {
          sent.set(model, 1 + (round % 3))
          const res = await fetch(`${node.api}/api/deployments`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ model, replicas: 1 + (round % 3), group: 'nobody' }) })
          if (res.status === 201) {
            acked.push(`${model}:${1 + (round % 3)}`)
            ackedAt.set(model, (await res.json() as { updatedAt: number }).updatedAt)
          }
          const cmd = await fetch(`${node.api}/api/commands`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ target: 'self', type: 'scan_models', group: 'solo' }) })
          if (cmd.status === 200) ackedCommands.push((await cmd.json() as any).id)
        } catch { return }
        if (i === 0 && acked.length >= 40) return
      }
    })
    while (acked.length < 40) await new Promise(resolve => setTimeout(resolve, 5))
    node.child.kill('SIGKILL')
    stop = true
    await Promise.all(writers)
    const restarted = await startNode({ name: 'dur', dataDir: node.dataDir, args: ['--models-dir', models, '--group', 'solo'] })
    all.push(restarted)
    assert.equal(restarted.id, node.id)
    const { deployments } = await getJson(`${restarted.api}/api/deployments`)
    const byModel = new Map(deployments.map((d: any) => [d.model, d.replicas]))
    const versionOf = new Map(deployments.map((d: any) => [d.model, d.updatedAt as number]))
    // The last acknowledged write per model must survive, unless the write sent after it (in
    // flight at the kill: on disk perhaps, but never answered) replaced it.
    const last = new Map<string, number>()
    for (const a of acked) { const [m, r] = a.split(':'); last.set(m, Number(r)) }
    for (const [m, r] of last) {
      const stored = byModel.get(m)
      assert.ok(stored === r || stored === sent.get(m), `deployment of ${m}: ${String(stored)}, acknowledged ${r}, in flight ${String(sent.get(m))}`)
      // Never an older version than the one acknowledged, and that very one when it is the version stored.
      const version = versionOf.get(m) as number
      assert.ok(version >= (ackedAt.get(m) as number), `deployment of ${m}: version ${version} older than the acknowledged ${ackedAt.get(m)}`)
      if (version === ackedAt.get(m)) assert.equal(stored, r, `deployment of ${m} at the acknowledged version`)
    }
    const audit = await getJson(`${restarted.api}/api/commands?limit=1000`)
    const ids = new Set(audit.commands.map((e: any) => e.id))
    for (const id of ackedCommands) assert.ok(ids.has(id), `command ${id} audited`)
    console.log(`# ${acked.length} acknowledged deployment writes and ${ackedCommands.length} commands before kill -9: all present after restart`)
  })

  it('keeps both audit logs bounded: a flood of bad frames and of commands leaves the newest entries only', async () => {
    // Open mesh: the attacker must count as a member for its frames to reach the decoder (a
    // non-member's streams are reset before it, with rate-limited audit entries: admission.test.ts).
    const node = await startNode({ name: 'bounded', membership: 'open', args: ['--engine', 'none', '--group', 'solo', '--audit-max-entries', '20', '--prune-interval-ms', '200'] })
    all.push(node)
    const attacker = await newHost()
    try {
      await attacker.dial(multiaddr(`/ip4/127.0.0.1/tcp/${node.p2pPort}/p2p/${node.id}`))
      // Each stream of garbage is a protocol violation: one audit entry each, and the stream reset.
      for (let i = 0; i < 60; i++) {
        const ex = await exchange(attacker, peerIdFromString(node.id), INFERENCE_PROTOCOL, [new TextEncoder().encode(`\u0005junk${i}`)])
        assert.equal(ex.end, 'reset')
      }
      for (let i = 0; i < 15; i++) {
        const res = await fetch(`${node.api}/api/commands`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ target: 'self', type: 'scan_models', group: 'solo' }) })
        assert.equal(res.status, 200)
      }
      // 60 violations and 30 command entries (accepted + completed) were written; a prune every 200 ms keeps 20 of each.
      const { value } = await waitFor('both logs pruned to 20', async () => {
        const log = await getJson<{ commands: unknown[], wire: Array<{ detail: string }> }>(`${node.api}/api/commands?limit=1000`)
        return log.commands.length === 20 && log.wire.length === 20 ? log : undefined
      }, 5000)
      assert.ok(value.wire.every(e => e.detail.startsWith('/shepherd/openai/')), 'the entries left are the violations')
      assert.equal((await getJson(`${node.api}/healthz`)).status, 'ok')
    } finally {
      await attacker.stop()
    }
  })

  it('a corrupt store gives one clear error naming doctor; doctor --repair/--reset recovers', async () => {
    const n = await startNode({ name: 'corrupt' })
    await stopNode(n, 'SIGTERM')
    const storeDir = path.join(n.dataDir, 'store')
    for (const f of await fs.readdir(storeDir)) {
      if (f.startsWith('MANIFEST') || f === 'CURRENT') await fs.writeFile(path.join(storeDir, f), 'garbage\n')
    }
    const args = ['start', '--no-mdns', '--data-dir', n.dataDir, '--listen', '/ip4/127.0.0.1/tcp/0', '--api-port', '0']
    const broken = await cli(args)
    assert.equal(broken.code, 1)
    assert.match(broken.err, /shepherd-mesh doctor --data-dir .* --repair/)
    assert.equal(broken.err.trim().split('\n').length, 1, broken.err)
    const check = await cli(['doctor', '--data-dir', n.dataDir])
    assert.equal(check.code, 1)
    assert.match(check.out, /store problem/)
    const fixed = await cli(['doctor', '--data-dir', n.dataDir, '--repair', '--reset'])
    assert.equal(fixed.code, 0, fixed.out + fixed.err)
    assert.match(fixed.out, /repaired|moved the store aside/)
    const again = await startNode({ name: 'corrupt', dataDir: n.dataDir })
    all.push(again)
    assert.equal((await getJson(`${again.api}/healthz`)).status, 'ok')
  })
})
