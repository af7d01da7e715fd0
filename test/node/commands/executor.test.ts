/**
 * The executor's checks, their order, idempotency, limits and audit, driven through `receive`
 * (what the wire protocol calls) with a fake clock and a real LevelDB on disk.
 */
import '../../../src/polyfill.js'
import { after, afterEach, before, beforeEach, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import fs from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import { Level } from 'level'
import type { PrivateKey } from '@libp2p/interface'
import { createIdentity, peerIdOf } from '../../../src/p2p/identity.js'
import { COMMAND_SIGNING_DOMAIN, createCommand, verifyResult, type CommandEnvelope, type NewCommand, type SignedResult } from '../../../src/p2p/command-messages.js'
import { CommandRefusedError, type CommandReply } from '../../../src/p2p/command-protocol.js'
import { signObject } from '../../../src/p2p/signing.js'
import { ShepherdError } from '../../../src/errors.js'
import {
  CommandExecutor, CommandStore, type CommandExecutorOptions, type CommandHandlers, type CommandStoreBackend
} from '../../../src/node/commands/index.js'

const T0 = 1_750_000_000_000

describe('CommandExecutor', () => {
  let kLeader: PrivateKey, kSelf: PrivateKey, kOther: PrivateKey
  let LEADER: string, SELF: string, OTHER: string
  const dirs: string[] = []
  let db: Level<string, any>
  let store: CommandStore
  let now: number
  let executor: CommandExecutor
  let calls: string[]

  before(async () => {
    ;[kLeader, kSelf, kOther] = await Promise.all([createIdentity(), createIdentity(), createIdentity()])
    ;[LEADER, SELF, OTHER] = [kLeader, kSelf, kOther].map(peerIdOf)
  })

  beforeEach(async () => {
    const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'shepherd-exec-'))
    dirs.push(dir)
    db = new Level<string, any>(dir, { valueEncoding: 'json' })
    await db.open()
    store = new CommandStore(db.sublevel<string, any>('commands', { valueEncoding: 'json' }), () => now)
    now = T0
    calls = []
    executor = make()
  })

  afterEach(async () => {
    await executor.close()
    await db.close()
  })

  after(async () => { await Promise.all(dirs.map(async d => await fs.rm(d, { recursive: true, force: true }))) })

  const handlers: Partial<CommandHandlers> = {
    scan_models: async () => { calls.push('scan_models'); return { models: ['a'] } },
    load_model: async (p, ctx) => {
      calls.push(`load_model:${p.model}`)
      ctx.output('one')
      await new Promise(resolve => setTimeout(resolve, 20))
      ctx.output('two')
      return { loaded: p.model }
    }
  }

  function make (opts: Partial<CommandExecutorOptions> = {}): CommandExecutor {
    return new CommandExecutor({
      privateKey: kSelf,
      store,
      handlers,
      clock: () => now,
      authority: env => env.issuer === LEADER || env.issuer === SELF ? { ok: true } : { ok: false, reason: 'not the leader' },
      ...opts
    })
  }

  const cmd = async (c: Partial<NewCommand> = {}, key = kLeader): Promise<CommandEnvelope> =>
    await createCommand(key, { type: 'scan_models', payload: {}, group: 'g', term: 1, target: SELF, now, ...c })

  const receive = async (frame: unknown, onOutput: (l: string) => void = () => {}): Promise<CommandReply> =>
    await executor.receive(frame, { peer: LEADER, onOutput })

  async function code (frame: unknown): Promise<string> {
    const reply = await receive(frame)
    if (reply.t === 'result') {
      assert.equal(await verifyResult(reply.result, SELF), true)
      return reply.result.error?.code ?? reply.result.status
    }
    return `${reply.t}:${reply.code}`
  }

  it('runs a valid command and signs its result', async () => {
    const lines: string[] = []
    const env = await cmd({ type: 'load_model', payload: { model: 'm' } })
    const reply = await receive(env, l => lines.push(l))
    assert.equal(reply.t, 'result')
    const res = (reply as { result: SignedResult }).result
    assert.deepEqual({ ...res, sig: undefined }, { id: env.id, status: 'ok', result: { loaded: 'm' }, startedAt: T0, finishedAt: T0, executor: SELF, sig: undefined })
    assert.equal(await verifyResult(res, SELF), true)
    assert.deepEqual(lines, ['one', 'two'])
    assert.deepEqual((await store.getRun(env.id))?.result, res)
  })

  it('checks in order: shape, version, target, signature, expiry, fencing, authority, allowlist, payload', async () => {
    await store.admitTerm('g', 5)
    const signedAs = async (c: Partial<NewCommand> & { v?: number }, key = kLeader): Promise<CommandEnvelope> => {
      const env = await cmd({ term: 5, ...c }, key)
      if (c.v == null) return env
      const { sig: _s, ...rest } = env
      return await signObject(key, COMMAND_SIGNING_DOMAIN, { ...rest, v: c.v as 1 })
    }
    const forge = (env: CommandEnvelope): CommandEnvelope => ({ ...env, payload: { ...env.payload, x: 1 } })
    // Each envelope fails two checks; the earlier one must be the verdict.
    assert.equal(await code({ ...(await signedAs({ v: 2 })), extra: true }), 'reset:malformed')
    assert.equal(await code(await signedAs({ v: 2, target: OTHER })), 'error:unsupported_version')
    assert.equal(await code(forge(await signedAs({ target: OTHER }))), 'error:wrong_target')
    assert.equal(await code(forge(await signedAs({ now: T0 - 120_000 }))), 'error:bad_signature')
    assert.equal(await code(await signedAs({ now: T0 - 120_000, term: 1 })), 'expired')
    assert.equal(await code(await signedAs({ term: 1 }, kOther)), 'stale_term')
    assert.equal(await code(await signedAs({ type: 'nuke' }, kOther)), 'not_authorized')
    assert.equal(await code(await signedAs({ type: 'nuke', payload: { bad: true } })), 'type_not_allowed')
    const ran = await signedAs({})
    assert.equal(await code(ran), 'ok')
    assert.equal(await code(await signedAs({ id: ran.id, payload: { bad: true } })), 'invalid_payload')
    assert.equal(await code(await signedAs({ id: ran.id })), 'ok', 'a replay answers the stored (ok) result')
    const reasons = (await store.listAudit({ limit: 100 })).reverse().map(e => e.reason ?? e.verdict)
    assert.deepEqual(reasons, ['malformed', 'unsupported_version', 'wrong_target', 'bad_signature', 'expired', 'stale_term', 'not_authorized', 'type_not_allowed', 'accepted', 'completed', 'invalid_payload', 'replay'])
  })

  it('resets what is not an envelope, whatever it is, and audits it', async () => {
    let deep: unknown = {}
    for (let i = 0; i < 10_000; i++) deep = { a: deep }
    const env = await cmd()
    const frames = [null, 'x', 42, [], {}, { ...env, id: 'not-a-uuid' }, { ...env, term: -1 }, { ...env, term: 1.5 }, { ...env, payload: deep, sig: undefined }, { ...env, issuer: 'x'.repeat(1000) }]
    for (const [i, frame] of frames.entries()) assert.equal(await code(frame), 'reset:malformed', `frame ${i}`)
    // Deep nesting within an envelope is caught too (before signature canonicalisation could recurse).
    assert.equal(await code({ ...env, payload: deep }), 'error:bad_signature')
    const entries = await store.listAudit({ limit: 100 })
    assert.equal(entries.filter(e => e.reason === 'malformed').length, 10)
    assert.ok(entries.every(e => (e.issuer?.length ?? 0) <= 129), 'unauthenticated strings are cut short')
  })

  it('applies expiry at its exact bounds, with a 30 s allowance for an issuer clock ahead', async () => {
    const env = await cmd({ ttlMs: 1000 })
    now = T0 + 1000
    assert.equal(await code(env), 'ok')
    now = T0 + 1001
    assert.equal(await code(await cmd({ ttlMs: 1000, now: T0 })), 'expired')
    now = T0
    assert.equal(await code(await cmd({ now: T0 + 30_000 })), 'ok')
    assert.equal(await code(await cmd({ now: T0 + 30_001 })), 'expired')
    assert.equal(await code(await cmd({ ttlMs: 24 * 3600_000 + 1 })), 'expired')
    assert.equal(await code(await cmd({ ttlMs: -1 })), 'expired')
  })

  it('raises the fence only for an authorised command, and never for the node\'s own operator', async () => {
    assert.equal(await code(await cmd({ term: 3 })), 'ok')
    assert.equal(await store.termOf('g'), 3)
    assert.equal(await code(await cmd({ term: 100 }, kOther)), 'not_authorized')
    assert.equal(await store.termOf('g'), 3)
    assert.equal(await code(await cmd({ term: 0 }, kSelf)), 'ok', 'the local operator is not fenced')
    assert.equal(await code(await cmd({ term: 50 }, kSelf)), 'ok')
    assert.equal(await store.termOf('g'), 3, 'and does not raise the term')
    assert.equal(await code(await cmd({ term: 2 })), 'stale_term')
  })

  it('refuses a command whose term was overtaken while its authority was being checked', async () => {
    let release!: () => void
    const slow = new Promise<void>(resolve => { release = resolve })
    executor = make({ authority: async env => { if (env.term === 4) await slow; return { ok: true } } })
    const older = receive(await cmd({ term: 4 }))
    await new Promise(resolve => setTimeout(resolve, 20))
    assert.equal(await code(await cmd({ term: 6 })), 'ok')
    release()
    const reply = await older
    assert.equal(reply.t === 'result' && reply.result.error?.code, 'stale_term')
  })

  it('treats an authority that throws as a refusal', async () => {
    executor = make({ authority: () => { throw new Error('election state unavailable') } })
    assert.equal(await code(await cmd()), 'not_authorized')
  })

  it('runs an id once when it arrives twice at the same time, and both get the same result', async () => {
    const env = await cmd({ type: 'load_model', payload: { model: 'twice' } })
    const [a, b] = await Promise.all([receive(env), receive(env)])
    assert.deepEqual(a, b)
    assert.deepEqual(calls, ['load_model:twice'])
    const verdicts = (await store.listAudit({ limit: 10 })).reverse().map(e => e.reason ?? e.verdict)
    assert.deepEqual(verdicts, ['accepted', 'replay', 'completed'])
  })

  it('answers an id that was running when the node stopped as interrupted, and never runs it', async () => {
    const env = await cmd()
    await store.putRun({ id: env.id, type: 'scan_models', issuer: LEADER, group: 'g', term: 1, acceptedAt: T0 - 5, state: 'running' })
    const [first, twin] = await Promise.all([receive(env), receive(env)])
    assert.equal(first.t === 'result' && first.result.error?.code, 'interrupted')
    assert.deepEqual(twin, first, 'concurrent replays share one verdict')
    assert.deepEqual(await receive(env), first, 'the interrupted verdict is stored too')
    assert.equal((await store.getRun(env.id))?.state, 'done')
    assert.deepEqual(calls, [])
  })

  it('maps handler failures to coded errors', async () => {
    executor = make({
      handlers: {
        scan_models: async () => { throw new ShepherdError('no such dir', { code: 'models_dir_missing' }) },
        collect_logs: async () => { throw new Error('boom') },
        unload_model: async () => { throw new ShepherdError('x', { code: 'Not-A-Code' }) },
        load_model: async () => ({ big: 'x'.repeat(2000) }),
        update_config: async () => ({ n: 10n })
      },
      maxResultBytes: 1000
    })
    assert.equal(await code(await cmd()), 'models_dir_missing')
    assert.equal(await code(await cmd({ type: 'collect_logs' })), 'handler_failed')
    assert.equal(await code(await cmd({ type: 'unload_model', payload: { model: 'm' } })), 'handler_failed')
    assert.equal(await code(await cmd({ type: 'load_model', payload: { model: 'm' } })), 'result_too_large')
    assert.equal(await code(await cmd({ type: 'update_config', payload: { key: 'logLevel', value: 'info' } })), 'result_unserializable')
    assert.equal(await code(await cmd({ type: 'stop_process', payload: { pid: 9 } })), 'not_supported')
    const completed = (await store.listAudit({ limit: 100 })).filter(e => e.verdict === 'completed')
    assert.equal(completed.length, 6)
    assert.ok(completed.every(e => e.status === 'error' && e.error != null))
  })

  it('times a handler out, aborts it, and stops forwarding its output', async () => {
    const lines: string[] = []
    let aborted = false
    let release!: () => void
    const stopped = new Promise<void>(resolve => { release = resolve })
    executor = make({
      timeoutsMs: { scan_models: 50 },
      abortGraceMs: 1000,
      handlers: {
        // Ignores its signal for a while, then talks after its time is up.
        scan_models: async (_p, ctx) => {
          ctx.output('before')
          ctx.signal.addEventListener('abort', () => { aborted = true })
          await stopped
          ctx.output('after')
          return 'late'
        }
      }
    })
    const reply = await receive(await cmd(), l => lines.push(l))
    assert.equal(reply.t === 'result' && reply.result.error?.code, 'timeout')
    assert.equal(aborted, true)
    assert.equal(executor.stats().running, 1, 'the slot stays taken while the handler winds down')
    release()
    await new Promise(resolve => setTimeout(resolve, 10))
    assert.equal(executor.stats().running, 0)
    assert.deepEqual(lines, ['before'])
  })

  it('frees the slot of a handler that ignores its abort after the grace period', async () => {
    executor = make({ timeoutsMs: { scan_models: 20 }, abortGraceMs: 400, handlers: { scan_models: async () => await new Promise(() => {}) } })
    assert.equal(await code(await cmd()), 'timeout')
    assert.equal(executor.stats().running, 1)
    await new Promise(resolve => setTimeout(resolve, 450))
    assert.equal(executor.stats().running, 0)
  })

  it('queues beyond maxConcurrent, rejects beyond maxQueued, and serves in arrival order', async () => {
    const order: string[] = []
    const gates: Array<() => void> = []
    executor = make({
      maxConcurrent: 1,
      maxQueued: 2,
      handlers: { stop_process: async p => { order.push(`start ${(p as { processId: string }).processId}`); await new Promise<void>(resolve => gates.push(resolve)); return null } }
    })
    const run = async (name: string): Promise<CommandReply> => await receive(await cmd({ type: 'stop_process', payload: { processId: name } }))
    const waitFor = async (running: number, queued: number): Promise<void> => {
      while (executor.stats().running !== running || executor.stats().queued !== queued) await new Promise(resolve => setTimeout(resolve, 2))
    }
    // Each one reaches the queue before the next is sent, so arrival order is known.
    const a = run('a')
    await waitFor(1, 0)
    const b = run('b')
    await waitFor(1, 1)
    const c = run('c')
    await waitFor(1, 2)
    assert.deepEqual(executor.stats(), { ...executor.stats(), running: 1, queued: 2 })
    assert.equal(await code(await cmd({ type: 'stop_process', payload: { processId: 'd' } })), 'overloaded')
    for (let i = 0; i < 3; i++) {
      while (gates.length === 0) await new Promise(resolve => setTimeout(resolve, 2))
      gates.shift()!()
    }
    const results = await Promise.all([a, b, c])
    assert.deepEqual(results.map(r => r.t === 'result' && r.result.status), ['ok', 'ok', 'ok'])
    assert.deepEqual(order, ['start a', 'start b', 'start c'])
    // An overloaded id was not stored: the issuer may retry it later.
    assert.equal(executor.stats().rejected.overloaded, 1)
  })

  it('lets a retried overloaded id run once there is room', async () => {
    let release!: () => void
    executor = make({ maxConcurrent: 1, maxQueued: 0, handlers: { ...handlers, stop_process: async () => { await new Promise<void>(resolve => { release = resolve }) } } })
    const busy = receive(await cmd({ type: 'stop_process', payload: { pid: 10 } }))
    while (executor.stats().running === 0) await new Promise(resolve => setTimeout(resolve, 2))
    const env = await cmd()
    assert.equal(await code(env), 'overloaded')
    release()
    await busy
    assert.equal(await code(env), 'ok')
  })

  it('refuses to run when the command store cannot record the run', async () => {
    const failing: CommandStoreBackend = {
      get: async () => undefined,
      put: async () => { throw new Error('disk full') },
      batch: async () => { throw new Error('disk full') },
      values: () => ({ all: async () => [] }),
      keys: () => ({ all: async () => [] }),
      clear: async () => { throw new Error('disk full') }
    }
    executor = make({ store: new CommandStore(failing) })
    assert.equal(await code(await cmd()), 'error:store_unavailable')
    assert.deepEqual(calls, [])
    assert.deepEqual(executor.stats().running, 0)
  })

  it('execute() gives the local operator the same checks, throwing for an unauthenticated refusal', async () => {
    const own = await cmd({}, kSelf)
    assert.equal((await executor.execute(own)).status, 'ok')
    await assert.rejects(executor.execute({ ...own, id: '00000000-0000-4000-8000-000000000000' }), (err: unknown) => err instanceof CommandRefusedError && err.code === 'bad_signature')
  })

  it('close() aborts running handlers, never starts queued ones, and refuses new commands', async () => {
    let sawAbort = false
    let started = 0
    executor = make({
      maxConcurrent: 1,
      handlers: { scan_models: async (_p, ctx) => { started++; return await new Promise((_resolve, reject) => { ctx.signal.addEventListener('abort', () => { sawAbort = true; reject(ctx.signal.reason) }) }) } }
    })
    const running = receive(await cmd())
    while (executor.stats().running === 0) await new Promise(resolve => setTimeout(resolve, 2))
    const queued = receive(await cmd())
    while (executor.stats().queued === 0) await new Promise(resolve => setTimeout(resolve, 2))
    await executor.close()
    const [reply, waiting] = await Promise.all([running, queued])
    assert.equal(sawAbort, true)
    assert.equal(reply.t === 'result' && reply.result.error?.code, 'shutting_down')
    assert.equal(waiting.t === 'result' && waiting.result.error?.code, 'shutting_down')
    assert.equal(started, 1)
    assert.equal(await code(await cmd()), 'error:shutting_down')
  })
})
