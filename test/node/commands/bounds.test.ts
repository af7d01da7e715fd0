/**
 * Command bounds (issue 11 item 4): run_llamacpp's cap, its refusals for a remote issuer, the
 * node's flags winning on the child's command line; update_config's bounds for a remote issuer,
 * its warn log (key, from, to, issuer) and its audit entries.
 */
import assert from 'node:assert/strict'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { after, before, describe, it } from 'node:test'
import { ShepherdError } from '../../../src/errors.js'
import { checkConfigUpdate, REMOTE_CONFIG_BOUNDS, updateConfigHandler } from '../../../src/node/commands/config-update.js'
import type { HandlerContext } from '../../../src/node/commands/handlers.js'
import type { UpdateConfigPayload } from '../../../src/node/commands/payloads.js'
import { RunProcesses } from '../../../src/node/commands/run-processes.js'
import { LlamaServerEngine } from '../../../src/node/engines/llama-server.js'
import type { LlamacppBuild, ModelFile } from '../../../src/node/resources/index.js'
import { fakeLlamaServerArgs, writeFakeLlamaServer } from '../../support/fake-llama-server.js'
import { createTinyModel } from '../../support/tiny-model.js'

const SELF = 'self-peer'
const LEADER = 'leader-peer'
const ctx = (issuer: string): HandlerContext => ({ signal: new AbortController().signal, output: () => {}, id: 'c1', issuer })
const alive = (pid: number): boolean => { try { process.kill(pid, 0); return true } catch { return false } }

async function rejectsWith (p: Promise<unknown>, code: string): Promise<void> {
  await assert.rejects(p, (err: unknown) => err instanceof ShepherdError && err.code === code)
}

describe('run_llamacpp bounds (with a stand-in llama-server)', () => {
  let dir: string
  let build: LlamacppBuild
  let file: ModelFile
  const audits: string[] = []
  let procs: RunProcesses
  const started: LlamaServerEngine[] = []

  before(async () => {
    dir = await mkdtemp(path.join(tmpdir(), 'bounds-'))
    process.env.FAKE_LLAMA_DIR = dir
    const binary = await writeFakeLlamaServer(dir)
    build = { path: binary, version: '4242', build: 4242, commit: 'abcdef0', backend: 'cpu', devices: [], compiler: null, target: null }
    const modelPath = path.join(dir, 'tiny.gguf')
    await createTinyModel(modelPath)
    file = { name: 'tiny', path: modelPath, sizeBytes: 1, architecture: null, parameterCount: null, quantization: null, contextLength: null, fingerprint: 'f'.repeat(64) }
    procs = new RunProcesses({
      selfId: () => SELF,
      builds: () => [build],
      modelFiles: () => [file],
      maxProcesses: () => 2,
      threads: 1,
      onStarted: e => { started.push(e) },
      onStopped: async e => { await e.close() },
      audit: async (issuer, detail) => { audits.push(`${issuer}: ${detail}`) }
    })
  })
  after(async () => {
    await procs.closeAll()
    delete process.env.FAKE_LLAMA_DIR
    await rm(dir, { recursive: true, force: true })
  })

  it('refuses, for a remote issuer, the port, --mlock and flags the node sizes, and audits why', async () => {
    await rejectsWith(procs.run({ model: 'tiny', port: 18080 }, ctx(LEADER)), 'llamacpp_flag_refused')
    await rejectsWith(procs.run({ model: 'tiny', args: ['--mlock'] }, ctx(LEADER)), 'llamacpp_flag_refused')
    await rejectsWith(procs.run({ model: 'tiny', args: ['--ctx-size', '999999999'] }, ctx(LEADER)), 'llamacpp_flag_refused')
    await rejectsWith(procs.run({ model: 'tiny', args: ['-tb', '512'] }, ctx(LEADER)), 'llamacpp_flag_refused')
    assert.equal(audits.length, 4)
    assert.match(audits[0], /^leader-peer: run_llamacpp refused: the port/)
    assert.equal(procs.size, 0, 'nothing started')
  })

  it('starts a child whose command line has the node\'s flags once each, with allowed extras after them', async () => {
    const r = await procs.run({ model: 'tiny', args: ['--temp', '0.5', '--jinja'] }, ctx(LEADER))
    const pid = r.pid as number
    assert.ok(alive(pid))
    const argv = (await fakeLlamaServerArgs(dir)).get(pid)
    assert.ok(argv != null, 'the stand-in recorded its command line')
    // `--jinja` is the node's own flag (tool calling needs the model's template): an extra one is dropped.
    for (const flag of ['--model', '--host', '--port', '--threads', '--ctx-size', '--parallel', '--jinja']) {
      assert.equal(argv.filter(a => a === flag).length, 1, `${flag} once`)
    }
    assert.equal(argv[argv.indexOf('--host') + 1], '127.0.0.1')
    assert.equal(argv[argv.indexOf('--threads') + 1], '1')
    assert.ok(argv.indexOf('--jinja') < argv.indexOf('--temp'), 'the node\'s flags come first')
    assert.deepEqual(argv.slice(-2), ['--temp', '0.5'])
  })

  it('caps processes started by commands, starts under way included, and frees a slot on stop', async () => {
    // One runs; of two concurrent starts only one fits under the cap of 2.
    const results = await Promise.allSettled([procs.run({ model: 'tiny' }, ctx(SELF)), procs.run({ model: 'tiny' }, ctx(SELF))])
    assert.equal(results.filter(r => r.status === 'fulfilled').length, 1)
    const refused = results.find(r => r.status === 'rejected') as PromiseRejectedResult
    assert.equal((refused.reason as ShepherdError).code, 'process_limit')
    assert.equal((refused.reason as ShepherdError).status, 429)
    assert.equal(procs.size, 2)
    const first = started[0]
    const pid = first.pid('tiny')!
    await procs.stop({ pid })
    assert.equal(procs.size, 1)
    const again = await procs.run({ model: 'tiny' }, ctx(SELF))
    assert.ok(alive(again.pid as number))
    assert.ok(!alive(pid), 'the stopped child is gone')
  })

  it('a keepAliveMs change reaches the engine (models idle out after the new time), but not one run until stopped', async () => {
    const engine = new LlamaServerEngine({ builds: [build], listModelFiles: () => [{ name: 'tiny', path: file.path, sizeBytes: 1 }], threads: 1, keepAliveMs: 600_000 })
    const forever = new LlamaServerEngine({ builds: [build], listModelFiles: () => [{ name: 'tiny', path: file.path, sizeBytes: 1 }], threads: 1, keepAliveMs: Infinity })
    try {
      engine.setKeepAlive(200)
      forever.setKeepAlive(200)
      await engine.load('tiny')
      await forever.load('tiny')
      const pid = engine.pid('tiny')!
      const keptPid = forever.pid('tiny')!
      const deadline = Date.now() + 10_000
      while (alive(pid) && Date.now() < deadline) await new Promise(resolve => setTimeout(resolve, 50))
      assert.ok(!alive(pid), 'unloaded after the new keep-alive, not after 10 minutes')
      assert.ok(alive(keptPid), 'the engine made to run until stopped keeps its child')
    } finally {
      await engine.close()
      await forever.close()
    }
  })
})

describe('update_config bounds', () => {
  it('holds a remote issuer to the bounds, and the local operator only to the schema', () => {
    const refused: UpdateConfigPayload[] = [
      { key: 'maxConcurrency', value: 1 }, { key: 'maxQueue', value: 0 }, { key: 'logLevel', value: 'silent' },
      { key: 'logLevel', value: 'error' }, { key: 'keepAliveMs', value: 0 }, { key: 'keepAliveMs', value: 7 * 24 * 3600_000 },
      { key: 'requestTimeoutMs', value: 1000 }
    ]
    for (const u of refused) {
      assert.equal(checkConfigUpdate(u, { remote: true }).ok, false, JSON.stringify(u))
      assert.equal(checkConfigUpdate(u, { remote: false }).ok, true, JSON.stringify(u))
    }
    for (const u of [{ key: 'maxConcurrency', value: 4 }, { key: 'maxQueue', value: 64 }, { key: 'logLevel', value: 'info' }, { key: 'routing', value: 'random' }] as UpdateConfigPayload[]) {
      assert.equal(checkConfigUpdate(u, { remote: true }).ok, true, JSON.stringify(u))
    }
    assert.deepEqual(Object.keys(REMOTE_CONFIG_BOUNDS).sort(), ['keepAliveMs', 'logLevel', 'maxConcurrency', 'maxQueue', 'requestTimeoutMs', 'routing'])
  })

  it('logs (warn) key, from, to and issuer; applies and audits a change; refuses with a typed error and an audit entry', async () => {
    const options: Record<string, unknown> = { maxConcurrency: 16, maxQueue: 256, logLevel: 'warn' }
    const applied: UpdateConfigPayload[] = []
    const audits: Array<{ kind: string, peer: string, detail: string, verdict: string }> = []
    const warns: Array<[string, Record<string, unknown> | undefined]> = []
    const handler = updateConfigHandler({
      selfId: () => SELF,
      options,
      apply: u => { applied.push(u) },
      audit: async e => { audits.push(e) },
      log: { warn: (msg, fields) => { warns.push([msg, fields]) } }
    })
    const ok = await handler({ key: 'maxConcurrency', value: 8 }, ctx(LEADER))
    assert.deepEqual(ok, { key: 'maxConcurrency', value: 8, previous: 16 })
    assert.deepEqual(warns[0], ['config updated', { setting: 'maxConcurrency', from: 16, to: 8, issuer: LEADER }])
    assert.equal(options.maxConcurrency, 8)
    assert.deepEqual(applied, [{ key: 'maxConcurrency', value: 8 }])
    assert.equal(audits[0].kind, 'config_updated')

    await rejectsWith(handler({ key: 'maxQueue', value: 0 }, ctx(LEADER)), 'config_value_refused')
    await rejectsWith(handler({ key: 'logLevel', value: 'silent' }, ctx(LEADER)), 'config_value_refused')
    assert.equal(options.maxQueue, 256, 'unchanged')
    assert.equal(options.logLevel, 'warn', 'unchanged')
    assert.equal(applied.length, 1, 'nothing else applied')
    assert.deepEqual(audits.slice(1).map(a => [a.kind, a.peer, a.verdict]), [['config_refused', LEADER, 'rejected'], ['config_refused', LEADER, 'rejected']])
    assert.equal(warns[1][0], 'config update refused')

    // The node's own operator may turn its queue off.
    await handler({ key: 'maxQueue', value: 0 }, ctx(SELF))
    assert.equal(options.maxQueue, 0)
  })
})
