/**
 * Models are content (issue 11 item 3), end to end with real node processes in `--open` mode:
 * - a hostile libp2p peer (the project's own stack) serving another file, or a shell script,
 *   under the fingerprint a load_model names: nothing lands in the models dir, an audit entry
 *   names the source, the command result says why, and the node keeps serving;
 * - a member announcing the same model name with another file (and a smaller fingerprint) does
 *   not capture the requests of a node that routes to the honest host, a deployment fixes the
 *   file, and a client can pin a file with `x-shepherd-model-fingerprint`.
 */
import '../../src/polyfill.js'
import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { createHash } from 'node:crypto'
import fs from 'node:fs/promises'
import path from 'node:path'
import { multiaddr } from '@multiformats/multiaddr'
import { BLOB_PROTOCOL } from '../../src/p2p/blob-messages.js'
import type { Host } from '../../src/p2p/host.js'
import { newHost } from '../support/fuzz-hosts.js'
import { hostileBlobSource } from '../support/hostile-blob.js'
import { createTinyModel } from '../support/tiny-model.js'
import { getJson, startNode, stopNode, tempDir, waitFor, type NodeProcess } from '../support/cluster.js'

const MODEL = 'tiny-llama'
const COMMON = ['--open', '--threads', '1', '--keep-alive-ms', '60000']

async function sha256File (p: string): Promise<string> {
  return createHash('sha256').update(await fs.readFile(p)).digest('hex')
}

async function post (url: string, body: unknown): Promise<{ status: number, body: any }> {
  const res = await fetch(url, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body ?? {}) })
  return { status: res.status, body: await res.json() }
}

async function chat (api: string, headers: Record<string, string> = {}): Promise<{ status: number, host: string | null, body: any }> {
  const res = await fetch(`${api}/v1/chat/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...headers },
    body: JSON.stringify({ model: MODEL, messages: [{ role: 'user', content: 'hi' }], max_tokens: 2, temperature: 0 })
  })
  return { status: res.status, host: res.headers.get('x-shepherd-host'), body: await res.json() }
}

/** Files named `name.gguf` (hidden staging dirs aside) in a models dir. */
async function visibleFiles (dir: string): Promise<string[]> {
  return (await fs.readdir(dir)).filter(f => !f.startsWith('.')).sort()
}

describe('models are content', () => {
  const procs: NodeProcess[] = []
  let honest: NodeProcess
  let victim: NodeProcess
  let attacker: NodeProcess | undefined
  let hostile: Host
  let honestFp: string
  let attackerFp: string
  let victimModels: string
  let attackerModels: string

  before(async () => {
    const honestModels = await tempDir('shepherd-content-honest-')
    victimModels = await tempDir('shepherd-content-victim-')
    attackerModels = await tempDir('shepherd-content-attacker-')
    await createTinyModel(path.join(honestModels, `${MODEL}.gguf`), { seed: 1 })
    honestFp = await sha256File(path.join(honestModels, `${MODEL}.gguf`))
    // The attacker's file of the same name, ground until its fingerprint sorts first (the old tie-break).
    for (let seed = 2; ; seed++) {
      const p = path.join(attackerModels, `${MODEL}.gguf`)
      await createTinyModel(p, { seed })
      attackerFp = await sha256File(p)
      if (attackerFp < honestFp) break
    }
    honest = await startNode({ name: 'c-honest', args: [...COMMON, '--models-dir', honestModels] })
    procs.push(honest)
    victim = await startNode({ name: 'c-victim', args: [...COMMON, '--models-dir', victimModels, '--bootstrap', `/ip4/127.0.0.1/tcp/${honest.p2pPort}`] })
    procs.push(victim)
    await waitFor('the victim to see the honest model', async () => {
      const m = (await getJson(`${victim.api}/api/models`)).models.find((x: any) => x.name === MODEL)
      return m?.fingerprint === honestFp
    }, 20_000)

    hostile = await newHost()
    await hostile.dial(multiaddr(`/ip4/127.0.0.1/tcp/${victim.p2pPort}/p2p/${victim.id}`))
  })

  after(async () => {
    await hostile?.stop()
    await Promise.all(procs.map(async n => await stopNode(n, 'SIGKILL')))
  })

  const loadModel = async (payload: Record<string, unknown>): Promise<any> => {
    const res = await post(`${victim.api}/api/commands`, { target: 'self', type: 'load_model', payload })
    assert.equal(res.status, 200, `${JSON.stringify(res.body)}\n${victim.stderr.join('').slice(-2000)}`)
    return res.body
  }

  /** The node's wire audit once `has` holds (entries are written beside the command's reply, not before it). */
  const auditOf = async (n: NodeProcess, has: (audit: any[]) => boolean = () => true): Promise<any[]> =>
    await waitFor('the audit entry', async () => {
      const audit = (await getJson(`${n.api}/api/commands`)).wire as any[]
      return has(audit) ? audit : null
    }, 5000).then(r => r.value, async () => (await getJson(`${n.api}/api/commands`)).wire)

  it('refuses a pull whose bytes are not the commanded fingerprint: nothing installed, audited, node serving', async () => {
    const other = path.join(attackerModels, `${MODEL}.gguf`)
    const served = hostileBlobSource(await fs.readFile(other), { announce: 'true' })
    await hostile.handle(BLOB_PROTOCOL, served)
    try {
      const res = await loadModel({ model: 'llama-3.1-8b-instruct', fingerprint: honestFp, sources: [hostile.peerId.toString()], keepAliveMs: -1 })
      assert.equal(res.status, 'error', JSON.stringify(res))
      assert.equal(res.error.code, 'model_fingerprint_mismatch')
      assert.ok(served.served >= 1, 'the hostile source was asked')
    } finally {
      await hostile.unhandle(BLOB_PROTOCOL)
    }

    // The smarter lie: announce the commanded fingerprint, send other bytes.
    const lying = hostileBlobSource(await fs.readFile(other), { announce: 'asked' })
    await hostile.handle(BLOB_PROTOCOL, lying)
    try {
      const res = await loadModel({ model: 'llama-3.1-8b-instruct', fingerprint: honestFp, sources: [hostile.peerId.toString()] })
      assert.equal(res.error?.code, 'model_fingerprint_mismatch', JSON.stringify(res))
      assert.ok(lying.served >= 1)
    } finally {
      await hostile.unhandle(BLOB_PROTOCOL)
    }

    assert.deepEqual(await visibleFiles(victimModels), [], 'nothing in the models dir')
    const staging = path.join(victimModels, '.partial')
    assert.deepEqual(await fs.readdir(staging).catch(() => []), [], 'the partial file is deleted')
    const mismatch = (x: any): boolean => x.kind === 'model_fingerprint_mismatch' && x.peer === hostile.peerId.toString()
    const audit = await auditOf(victim, a => a.filter(mismatch).length >= 2)
    const entries = audit.filter(mismatch)
    assert.ok(entries.length >= 2, JSON.stringify(audit.slice(0, 5)))
    assert.ok(entries.every((x: any) => x.verdict === 'rejected'))
    const models = (await getJson(`${victim.api}/api/models`)).models
    assert.ok(!models.some((m: any) => m.name === 'llama-3.1-8b-instruct'))
  })

  it('never installs a shell script, even under its own true fingerprint', async () => {
    const script = Buffer.from('#!/bin/sh\necho owned > /tmp/owned-by-shepherd-test\n')
    const scriptFp = createHash('sha256').update(script).digest('hex')
    await hostile.handle(BLOB_PROTOCOL, hostileBlobSource(script, { announce: 'true' }))
    try {
      const res = await loadModel({ model: 'totally-a-model', fingerprint: scriptFp, sources: [hostile.peerId.toString()] })
      assert.equal(res.error?.code, 'model_invalid_file', JSON.stringify(res))
    } finally {
      await hostile.unhandle(BLOB_PROTOCOL)
    }
    assert.deepEqual(await visibleFiles(victimModels), [])
    assert.deepEqual(await fs.readdir(path.join(victimModels, '.partial')).catch(() => []), [])
    const invalid = (x: any): boolean => x.kind === 'model_invalid_file' && x.peer === hostile.peerId.toString()
    assert.ok((await auditOf(victim, a => a.some(invalid))).some(invalid))
  })

  it('a name outside the models dir is refused before any transfer', async () => {
    const res = await loadModel({ model: '../../escape', fingerprint: honestFp, sources: [hostile.peerId.toString()] })
    // Refused by the payload schema (or, past it, by fetchModel's name check): never run.
    assert.ok(res.status === 'rejected' || res.error?.code === 'invalid_model_name', JSON.stringify(res))
    assert.deepEqual(await visibleFiles(victimModels), [])
    assert.deepEqual(await fs.readdir(path.dirname(victimModels)).then(f => f.filter(x => x.startsWith('escape'))), [])
  })

  it('the victim keeps serving: its chats go to the honest host', async () => {
    const r = await chat(victim.api)
    assert.equal(r.status, 200, JSON.stringify(r.body))
    assert.equal(r.host, honest.id)
  })

  it('a same-name member with a smaller fingerprint does not capture the victim\'s requests', async () => {
    attacker = await startNode({ name: 'aaa-attacker', args: [...COMMON, '--models-dir', attackerModels, '--bootstrap', `/ip4/127.0.0.1/tcp/${honest.p2pPort}`] })
    procs.push(attacker)
    await waitFor('the victim to see the attacker\'s file', async () => {
      const m = (await getJson(`${victim.api}/api/models`)).models.find((x: any) => x.name === MODEL)
      return m?.conflicts.some((h: any) => h.peerId === attacker!.id)
    }, 20_000)
    const view = (await getJson(`${victim.api}/api/models`)).models.find((x: any) => x.name === MODEL)
    assert.equal(view.fingerprint, honestFp, 'the honest file stays chosen')
    assert.equal(view.chosenBy, 'incumbent')
    assert.deepEqual(view.hosts.map((h: any) => h.peerId), [honest.id])
    assert.equal(view.conflict, true)

    for (let i = 0; i < 4; i++) {
      const r = await chat(victim.api)
      assert.equal(r.status, 200, JSON.stringify(r.body))
      assert.equal(r.host, honest.id, `request ${i} went to ${r.host}`)
    }
  })

  it('a deployment fixes the file, and a client pin reaches exactly the pinned file or gets a 404', async () => {
    const dep = await post(`${honest.api}/api/deployments`, { model: MODEL, replicas: 1 })
    assert.equal(dep.status, 201, JSON.stringify(dep.body))
    assert.equal(dep.body.fingerprint, honestFp, 'the deployment records the file the deploying node resolves')
    await waitFor('the victim to follow the deployment', async () => {
      const m = (await getJson(`${victim.api}/api/models`)).models.find((x: any) => x.name === MODEL)
      return m?.chosenBy === 'deployment' && m.fingerprint === honestFp
    }, 20_000)
    const r = await chat(victim.api)
    assert.equal(r.host, honest.id)

    const pinnedHonest = await chat(victim.api, { 'x-shepherd-model-fingerprint': honestFp.slice(0, 12) })
    assert.equal(pinnedHonest.status, 200)
    assert.equal(pinnedHonest.host, honest.id)
    // The pin can reach the other file on purpose (this proves the header is what decides).
    const pinnedOther = await chat(victim.api, { 'x-shepherd-model-fingerprint': attackerFp })
    assert.equal(pinnedOther.status, 200, JSON.stringify(pinnedOther.body))
    assert.equal(pinnedOther.host, attacker!.id)

    const missing = await chat(victim.api, { 'x-shepherd-model-fingerprint': 'e'.repeat(64) })
    assert.equal(missing.status, 404)
    assert.equal(missing.body.error.code, 'model_fingerprint_not_found')
    assert.equal(typeof missing.body.error.message, 'string')
    const short = await chat(victim.api, { 'x-shepherd-model-fingerprint': 'abc' })
    assert.equal(short.status, 400)
    assert.equal(short.body.error.code, 'invalid_model_fingerprint')
  })

  it('with a hostile and an honest source, installs the honest file and records where it came from', async () => {
    await hostile.handle(BLOB_PROTOCOL, hostileBlobSource(await fs.readFile(path.join(attackerModels, `${MODEL}.gguf`)), { announce: 'asked' }))
    try {
      const res = await loadModel({ model: MODEL, fingerprint: honestFp, sources: [hostile.peerId.toString(), honest.id] })
      assert.notEqual(res.status, 'error', JSON.stringify(res))
      assert.ok(res.output.some((l: string) => l.includes(`refused ${hostile.peerId.toString()}`)), JSON.stringify(res.output))
    } finally {
      await hostile.unhandle(BLOB_PROTOCOL)
    }
    assert.deepEqual(await visibleFiles(victimModels), [`${MODEL}.gguf`])
    assert.equal(await sha256File(path.join(victimModels, `${MODEL}.gguf`)), honestFp)
    const view = (await getJson(`${victim.api}/api/models`)).models.find((x: any) => x.name === MODEL)
    const local = view.hosts.find((h: any) => h.peerId === victim.id)
    assert.ok(local != null, JSON.stringify(view))
    assert.equal(local.source.peer, honest.id)
    assert.equal(local.source.fingerprint, honestFp)
    assert.ok(Date.parse(local.source.at) > Date.now() - 120_000)
    const pulled = (x: any): boolean => x.kind === 'model_pulled' && x.peer === honest.id && x.verdict === 'accepted'
    const audit = await auditOf(victim, a => a.some(pulled))
    assert.ok(audit.some(pulled), JSON.stringify(audit.slice(0, 5)))

    // A command naming the other file of that name does not load this node's file in its place.
    const other = await loadModel({ model: MODEL, fingerprint: attackerFp, sources: [attacker!.id] })
    assert.equal(other.error?.code, 'model_fingerprint_mismatch', JSON.stringify(other))
    assert.equal(await sha256File(path.join(victimModels, `${MODEL}.gguf`)), honestFp)
  })
})
