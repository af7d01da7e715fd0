/**
 * Signed commands between two real libp2p hosts (tcp + noise + yamux on loopback), executed
 * against a real LevelDB on disk.
 */
import '../../src/polyfill.js'
import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import fs from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import { Level } from 'level'
import { peerIdFromString } from '@libp2p/peer-id'
import type { PrivateKey, Stream } from '@libp2p/interface'
import { createHost, type Host } from '../../src/p2p/host.js'
import { createIdentity, peerIdOf } from '../../src/p2p/identity.js'
import { FramedStream } from '../../src/p2p/framing.js'
import { COMMAND_PROTOCOL, COMMAND_SIGNING_DOMAIN, createCommand, verifyResult, type CommandEnvelope, type NewCommand, type SignedResult } from '../../src/p2p/command-messages.js'
import { CommandRefusedError, CommandService, sendCommand } from '../../src/p2p/command-protocol.js'
import { signObject } from '../../src/p2p/signing.js'
import { ShepherdError } from '../../src/errors.js'
import { CommandExecutor, CommandStore, type CommandAuditEntry, type CommandHandlers } from '../../src/node/commands/index.js'

const GROUP = 'g1'

/** A gate a handler waits on, opened by the test. */
function gate (): { wait: Promise<void>, open: () => void } {
  let open!: () => void
  const wait = new Promise<void>(resolve => { open = resolve })
  return { wait, open }
}

async function until (what: string, cond: () => boolean | Promise<boolean>, ms = 5000): Promise<void> {
  const end = Date.now() + ms
  while (!await cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`)
    await new Promise(resolve => setTimeout(resolve, 5))
  }
}

function percentile (xs: number[], p: number): number {
  const s = [...xs].sort((a, b) => a - b)
  return s[Math.min(s.length - 1, Math.floor(p * s.length))]
}

describe('/shepherd/cmd/1.0.0 between two real hosts', () => {
  let dir: string
  let kA: PrivateKey, kB: PrivateKey, kC: PrivateKey
  let A: string, B: string, C: string
  let hostA: Host, hostB: Host
  let db: Level<string, any>
  let store: CommandStore
  let executor: CommandExecutor
  let service: CommandService
  const calls: Record<string, number> = { load_model: 0, scan_models: 0, collect_logs: 0 }
  let timeoutSawAbort = false
  let blocker = gate()
  let blockedRunning = 0
  let blockedMax = 0

  const handlers: Partial<CommandHandlers> = {
    load_model: async (p, ctx) => {
      calls.load_model++
      for (let i = 0; i < 3; i++) ctx.output(`loading ${p.model}: ${i + 1}/3`)
      return { loaded: p.model }
    },
    scan_models: async () => {
      calls.scan_models++
      return { models: [] }
    },
    collect_logs: async (p, ctx) => {
      calls.collect_logs++
      for (let i = 0; i < (p.lines ?? 0); i++) ctx.output(`log line ${i}`)
      return { count: p.lines ?? 0 }
    },
    unload_model: async (_p, ctx) => {
      await new Promise((_resolve, reject) => {
        ctx.signal.addEventListener('abort', () => { timeoutSawAbort = true; reject(ctx.signal.reason) }, { once: true })
      })
    },
    stop_process: async () => {
      blockedRunning++
      blockedMax = Math.max(blockedMax, blockedRunning)
      await blocker.wait
      blockedRunning--
      return { stopped: true }
    }
  }

  const authority = (env: CommandEnvelope): { ok: true } | { ok: false, reason: string } =>
    env.issuer === A || env.issuer === B ? { ok: true } : { ok: false, reason: `${env.issuer} does not lead group '${env.group}'` }

  async function openExecutor (): Promise<void> {
    db = new Level<string, any>(path.join(dir, 'store'), { valueEncoding: 'json' })
    await db.open()
    store = new CommandStore(db.sublevel<string, any>('commands', { valueEncoding: 'json' }))
    executor = new CommandExecutor({
      privateKey: kB,
      store,
      authority,
      handlers,
      allowlist: ['load_model', 'unload_model', 'stop_process', 'scan_models', 'collect_logs', 'update_config'],
      maxConcurrent: 2,
      maxQueued: 1,
      timeoutsMs: { unload_model: 200 },
      abortGraceMs: 200
    })
    service = new CommandService(hostB)
    await service.serve(executor)
  }

  async function closeExecutor (): Promise<void> {
    await service.stop()
    await executor.close()
    await db.close()
  }

  const cmd = async (c: Partial<NewCommand> & Pick<NewCommand, 'type' | 'payload'>, key = kA): Promise<CommandEnvelope> =>
    await createCommand(key, { group: GROUP, term: 1, target: B, ...c })

  const send = async (env: CommandEnvelope, opts: { onOutput?: (l: string) => void } = {}): Promise<SignedResult> =>
    await sendCommand(hostA, B, env, { ...opts, signal: AbortSignal.timeout(10_000) })

  async function audit (id: string): Promise<CommandAuditEntry[]> {
    return (await store.listAudit({ limit: 1000 })).filter(e => e.id === id).reverse()
  }

  async function stillServing (): Promise<void> {
    const res = await send(await cmd({ type: 'scan_models', payload: {} }))
    assert.equal(res.status, 'ok')
    assert.deepEqual(res.result, { models: [] })
  }

  /** Sends `env`, expects an unsigned refusal with `code`, and exactly one new audit entry saying so. */
  async function refusedWith (env: CommandEnvelope, code: string): Promise<void> {
    const before = (await audit(env.id)).length
    await assert.rejects(send(env), (err: unknown) => err instanceof CommandRefusedError && err.code === code)
    const entries = (await audit(env.id)).slice(before)
    assert.deepEqual(entries.map(e => [e.verdict, e.reason]), [['rejected', code]])
  }

  /** Sends `env`, expects a signed `rejected` result with `code`, and exactly one new audit entry saying so. */
  async function rejectedWith (env: CommandEnvelope, code: string): Promise<SignedResult> {
    const before = (await audit(env.id)).length
    const res = await send(env)
    assert.equal(res.status, 'rejected')
    assert.equal(res.error?.code, code)
    assert.equal(await verifyResult(res, B), true)
    const entries = (await audit(env.id)).slice(before)
    assert.deepEqual(entries.map(e => [e.verdict, e.reason]), [['rejected', code]])
    return res
  }

  before(async () => {
    dir = await fs.mkdtemp(path.join(os.tmpdir(), 'shepherd-cmd-'))
    ;[kA, kB, kC] = await Promise.all([createIdentity(), createIdentity(), createIdentity()])
    ;[A, B, C] = [kA, kB, kC].map(peerIdOf)
    ;[hostA, hostB] = await Promise.all([kA, kB].map(async privateKey => await createHost({ privateKey, listen: ['/ip4/127.0.0.1/tcp/0'], mdns: false, mdnsIntervalMs: 1000 })))
    await openExecutor()
    await hostA.dial(hostB.getMultiaddrs()[0])
  })

  after(async () => {
    await closeExecutor().catch(() => {})
    await Promise.all([hostA?.stop(), hostB?.stop()])
    await fs.rm(dir, { recursive: true, force: true })
  })

  it('runs a valid command and returns a result signed by the executor, with output first', async () => {
    const lines: string[] = []
    const env = await cmd({ type: 'load_model', payload: { model: 'tiny-chat', keepAliveMs: 60_000 } })
    const res = await send(env, { onOutput: l => lines.push(l) })
    assert.equal(res.status, 'ok')
    assert.equal(res.id, env.id)
    assert.equal(res.executor, B)
    assert.deepEqual(res.result, { loaded: 'tiny-chat' })
    assert.equal(await verifyResult(res, B), true)
    assert.equal(await verifyResult(res, A), false, 'only the executor key verifies it')
    assert.equal(await verifyResult({ ...res, result: { loaded: 'other' } }, B), false, 'an altered result does not verify')
    assert.deepEqual(lines, ['loading tiny-chat: 1/3', 'loading tiny-chat: 2/3', 'loading tiny-chat: 3/3'])
    assert.ok(res.startedAt <= res.finishedAt)
    const entries = await audit(env.id)
    assert.deepEqual(entries.map(e => e.verdict), ['accepted', 'completed'])
    assert.equal(entries[0].issuer, A)
    assert.equal(entries[0].peer, A)
    assert.equal(entries[1].status, 'ok')
  })

  it('streams long output in order before the result', async () => {
    const lines: string[] = []
    const res = await send(await cmd({ type: 'collect_logs', payload: { lines: 10_000 } }), { onOutput: l => lines.push(l) })
    assert.equal(res.status, 'ok')
    assert.deepEqual(res.result, { count: 10_000 })
    assert.equal(lines.length, 10_000)
    lines.forEach((l, i) => { assert.equal(l, `log line ${i}`) })
  })

  it('refuses a payload altered after signing: bad_signature, audited, still serving', async () => {
    const env = await cmd({ type: 'load_model', payload: { model: 'tiny-chat' } })
    const before = calls.load_model
    await refusedWith({ ...env, payload: { model: 'other-model' } }, 'bad_signature')
    await refusedWith({ ...env, term: 99 }, 'bad_signature')
    assert.equal(calls.load_model, before)
    await stillServing()
  })

  it('refuses a command signed by a key other than its issuer\'s: bad_signature', async () => {
    const genuine = await cmd({ type: 'scan_models', payload: {} })
    const { sig: _sig, ...unsigned } = genuine
    const forged = await signObject(kC, COMMAND_SIGNING_DOMAIN, unsigned)
    await refusedWith(forged, 'bad_signature')
    await refusedWith({ ...genuine, sig: 'AAAA' }, 'bad_signature')
    await stillServing()
  })

  it('refuses a command for another node: wrong_target', async () => {
    await refusedWith(await cmd({ type: 'scan_models', payload: {}, target: C }), 'wrong_target')
    await stillServing()
  })

  it('rejects a stale term with a signed result, and a newer term raises the fence', async () => {
    const ok = await send(await cmd({ type: 'scan_models', payload: {}, term: 5 }))
    assert.equal(ok.status, 'ok')
    assert.equal(await store.termOf(GROUP), 5)
    await rejectedWith(await cmd({ type: 'scan_models', payload: {}, term: 4 }), 'stale_term')
    assert.equal(await store.termOf(GROUP), 5)
    assert.equal((await send(await cmd({ type: 'scan_models', payload: {}, term: 5 }))).status, 'ok')
    await stillServingAt(5)
  })

  async function stillServingAt (term: number): Promise<void> {
    const res = await send(await cmd({ type: 'scan_models', payload: {}, term }))
    assert.equal(res.status, 'ok')
  }

  it('rejects an expired command, and one issued too far in the future', async () => {
    await rejectedWith(await cmd({ type: 'scan_models', payload: {}, term: 5, now: Date.now() - 120_000, ttlMs: 60_000 }), 'expired')
    await rejectedWith(await cmd({ type: 'scan_models', payload: {}, term: 5, now: Date.now() + 60_000, ttlMs: 60_000 }), 'expired')
    await stillServingAt(5)
  })

  it('rejects a validly signed command from a node that does not lead: not_authorized', async () => {
    const res = await rejectedWith(await cmd({ type: 'scan_models', payload: {}, term: 50 }, kC), 'not_authorized')
    assert.match(res.error!.message, /does not lead/)
    assert.equal(await store.termOf(GROUP), 5, 'an unauthorised command never raises the term')
    await stillServingAt(5)
  })

  it('rejects a type outside the allowlist, known or not: type_not_allowed', async () => {
    await rejectedWith(await cmd({ type: 'run_llamacpp', payload: { model: 'tiny-chat' }, term: 5 }), 'type_not_allowed')
    await rejectedWith(await cmd({ type: 'format_disk', payload: {}, term: 5 }), 'type_not_allowed')
    await stillServingAt(5)
  })

  it('rejects an invalid payload: invalid_payload', async () => {
    await rejectedWith(await cmd({ type: 'load_model', payload: { model: '../../etc/passwd' }, term: 5 }), 'invalid_payload')
    await rejectedWith(await cmd({ type: 'load_model', payload: { model: 'tiny-chat', path: '/bin/sh' }, term: 5 }), 'invalid_payload')
    await rejectedWith(await cmd({ type: 'update_config', payload: { key: 'apiKeys', value: ['x'] }, term: 5 }), 'invalid_payload')
    await rejectedWith(await cmd({ type: 'collect_logs', payload: { lines: 10_001 }, term: 5 }), 'invalid_payload')
    await stillServingAt(5)
  })

  it('answers a replayed id with the stored result and runs the handler once', async () => {
    const env = await cmd({ type: 'load_model', payload: { model: 'replayed' }, term: 5 })
    const before = calls.load_model
    const first = await send(env)
    const second = await send(env)
    const [third, fourth] = await Promise.all([send(env), send(env)])
    assert.equal(calls.load_model, before + 1)
    assert.deepEqual(second, first)
    assert.deepEqual(third, first)
    assert.deepEqual(fourth, first)
    const entries = await audit(env.id)
    assert.deepEqual(entries.map(e => [e.verdict, e.reason ?? null]), [['accepted', null], ['completed', null], ['rejected', 'replay'], ['rejected', 'replay'], ['rejected', 'replay']])
  })

  it('resets a stream of garbage bytes, audits it, and keeps serving', async () => {
    const auditBefore = (await store.listAudit({ limit: 1000 })).length
    const stream = await hostA.dialProtocol(peerIdFromString(B), COMMAND_PROTOCOL)
    const closed = new Promise<Error | undefined>(resolve => stream.addEventListener('close', evt => { resolve((evt as any).error) }, { once: true }))
    // A length prefix of 9, then bytes that are not UTF-8 JSON.
    stream.send(Uint8Array.from([9, 0xff, 0xfe, 0x00, 0x01, 0x7b, 0x22, 0xc3, 0x28, 0x5d]))
    const err = await closed
    assert.equal(err?.name, 'StreamResetError')
    await until('the malformed audit entry', async () => (await store.listAudit({ limit: 1000 })).length > auditBefore)
    const entries = await store.listAudit({ limit: 1000 })
    assert.equal(entries.length, auditBefore + 1)
    assert.equal(executor.stats().rejected.malformed, 1)
    assert.equal(entries[0].reason, 'malformed')
    assert.equal(entries[0].peer, A)
    assert.match(entries[0].detail!, /invalid_frame/)
    await stillServingAt(5)
  })

  it('resets an oversized frame and a frame that is JSON but not an envelope', async () => {
    const auditBefore = (await store.listAudit({ limit: 1000 })).length
    const resets: Array<Promise<Error | undefined>> = []
    const open = async (): Promise<Stream> => {
      const stream = await hostA.dialProtocol(peerIdFromString(B), COMMAND_PROTOCOL)
      resets.push(new Promise(resolve => stream.addEventListener('close', evt => { resolve((evt as any).error) }, { once: true })))
      return stream
    }
    const big = await open()
    await new FramedStream(big, 1024 * 1024).write({ ...(await cmd({ type: 'scan_models', payload: {} })), pad: 'x'.repeat(100_000) }).catch(() => {})
    const notEnvelope = await open()
    await new FramedStream(notEnvelope, 1024).write({ hello: 'world', id: 'abc' })
    const errors = await Promise.all(resets)
    assert.deepEqual(errors.map(e => e?.name), ['StreamResetError', 'StreamResetError'])
    await until('two more malformed audit entries', async () => (await store.listAudit({ limit: 1000 })).length === auditBefore + 2)
    assert.equal(executor.stats().rejected.malformed, 3)
    const [last, prev] = await store.listAudit({ limit: 2 })
    const details = [last.detail, prev.detail].sort()
    assert.match(details.join(' '), /frame_too_large/)
    assert.match(details.join(' '), /not a command envelope/)
    await stillServingAt(5)
  })

  it('aborts a handler that runs past its timeout and answers a timeout error', async () => {
    const t0 = Date.now()
    const res = await send(await cmd({ type: 'unload_model', payload: { model: 'slow' }, term: 5 }))
    assert.equal(res.status, 'error')
    assert.equal(res.error?.code, 'timeout')
    assert.equal(timeoutSawAbort, true)
    assert.ok(Date.now() - t0 >= 200)
    assert.equal(await verifyResult(res, B), true)
    await stillServingAt(5)
  })

  it('runs at most maxConcurrent at once, queues a bounded number, and rejects the rest as overloaded', async () => {
    blocker = gate()
    const pending = [0, 1, 2].map(async i => await send(await cmd({ type: 'stop_process', payload: { pid: 100 + i }, term: 5 })))
    await until('two running and one queued', () => executor.stats().running === 2 && executor.stats().queued === 1)
    assert.equal(blockedRunning, 2)
    const overloaded = await rejectedWith(await cmd({ type: 'stop_process', payload: { pid: 200 }, term: 5 }), 'overloaded')
    assert.match(overloaded.error!.message, /retry later/)
    blocker.open()
    const results = await Promise.all(pending)
    assert.deepEqual(results.map(r => r.status), ['ok', 'ok', 'ok'])
    assert.equal(blockedMax, 2)
    assert.deepEqual([executor.stats().running, executor.stats().queued], [0, 0])
  })

  it('keeps idempotency and the audit log across a restart of the store', async () => {
    const env = await cmd({ type: 'load_model', payload: { model: 'durable' }, term: 5 })
    const first = await send(env)
    const auditBefore = await store.listAudit({ limit: 1000 })
    const before = calls.load_model
    await closeExecutor()
    await openExecutor()
    const again = await send(env)
    assert.deepEqual(again, first)
    assert.equal(calls.load_model, before, 'not run again after the restart')
    const auditAfter = await store.listAudit({ limit: 1000 })
    assert.deepEqual(auditAfter.slice(1), auditBefore, 'every entry from before the restart is still there')
    assert.equal(auditAfter[0].reason, 'replay')
    // The fence survived too.
    await rejectedWith(await cmd({ type: 'scan_models', payload: {}, term: 4 }), 'stale_term')
  })

  it('measures a command round trip on loopback', async () => {
    const times: number[] = []
    for (let i = 0; i < 100; i++) {
      const env = await cmd({ type: 'scan_models', payload: {}, term: 5 })
      const t0 = performance.now()
      const res = await send(env)
      times.push(performance.now() - t0)
      assert.equal(res.status, 'ok')
    }
    console.log(`# command round trip on loopback (verify + 2 synced LevelDB batches + sign + verify): p50 ${percentile(times, 0.5).toFixed(2)} ms, p99 ${percentile(times, 0.99).toFixed(2)} ms`)
    assert.ok(percentile(times, 0.5) < 1000)
  })

  it('the issuer can abort a command it no longer waits for', async () => {
    const ac = new AbortController()
    blocker = gate()
    const p = sendCommand(hostA, B, await cmd({ type: 'stop_process', payload: { processId: 'abandoned' }, term: 5 }), { signal: ac.signal })
    await until('the command to run', () => blockedRunning === 1)
    ac.abort(new ShepherdError('gave up', { code: 'gave_up' }))
    await assert.rejects(p, (err: any) => err.code === 'gave_up')
    blocker.open()
    await until('the abandoned command to finish', () => executor.stats().running === 0)
    await stillServingAt(5)
  })
})
