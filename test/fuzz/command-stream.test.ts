/**
 * Fuzzing `/shepherd/cmd/1.0.0` (src/p2p/command-protocol.ts) between real libp2p hosts on
 * loopback, with a real `CommandExecutor` on a LevelDB in a temp directory.
 *
 * Executor side: raw streams carry random bytes, hostile texts, envelopes of valid shape,
 * validly signed envelopes, and mutations of them. A stream without an envelope is reset and
 * audited `malformed`; an envelope is refused with an `error` frame whose code follows the
 * check order (version, target, signature) or answered with a result signed by the executor,
 * after correctly numbered output frames. Client side: `sendCommand` against a hostile
 * executor returns only a result the executor really signed for this command, and otherwise
 * rejects with a `ShepherdError`. No unhandled rejection, no leaked stream, bounded heap.
 *
 *   node --import tsx --test test/fuzz/command-stream.test.ts   (FUZZ_SEED=<n> replays)
 */
import '../../src/polyfill.js'
import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import fs from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import fc from 'fast-check'
import { Level } from 'level'
import type { PrivateKey } from '@libp2p/interface'
import { peerIdFromString } from '@libp2p/peer-id'
import {
  COMMAND_PROTOCOL, COMMAND_TYPES, createCommand, isCommandEnvelope, isCommandResponse, MAX_COMMAND_ENVELOPE_BYTES, MAX_COMMAND_RESPONSE_BYTES,
  signResult, verifyCommand, verifyResult, type CommandEnvelope, type SignedResult
} from '../../src/p2p/command-messages.js'
import { CommandRefusedError, CommandService, sendCommand } from '../../src/p2p/command-protocol.js'
import { CommandExecutor, CommandStore, type CommandHandlers } from '../../src/node/commands/index.js'
import { createIdentity, peerIdOf } from '../../src/p2p/identity.js'
import { ShepherdError, WireError } from '../../src/errors.js'
import { logSink, setLogSink } from '../../src/logger.js'
import { createHost, type Host } from '../../src/p2p/host.js'
import { assertHeapBounded, checkAsync, concat, deadline, heapUsed, ProcessWatch, until, varint } from '../support/fuzz-harness.js'
import { applyMutation, broken, hostileBytes, hostileJsonText, mutateBytes, mutation, type Mutation } from '../support/fuzz-arbitraries.js'
import { commandEnvelope, commandEnvelopeBreaks, commandResponse, jsonObject, validPayloads } from '../support/fuzz-messages.js'
import { framedBytes, modelFramed, splitAt } from '../support/fuzz-frames.js'
import { exchange } from '../support/fuzz-hosts.js'

const enc = new TextEncoder()
const GROUP = 'fuzz'
const cuts = fc.array(fc.nat(), { maxLength: 4 })

/** A command A signs for B: a type and payload (valid or not), and edits applied after signing. */
interface SignedPlan { type: string, payload: Record<string, unknown>, term: number, mutations: Mutation[] }

const signedPlan: fc.Arbitrary<SignedPlan> = fc.constantFrom(...COMMAND_TYPES, 'format_disk').chain(type => fc.record({
  type: fc.constant<string>(type),
  payload: type === 'format_disk' ? jsonObject : fc.oneof({ arbitrary: validPayloads[type], weight: 4 }, { arbitrary: jsonObject, weight: 1 }),
  term: fc.oneof({ arbitrary: fc.constant(10), weight: 4 }, { arbitrary: fc.nat({ max: 9 }), weight: 1 }),
  mutations: fc.oneof(fc.constant<Mutation[]>([]), fc.array(mutation, { maxLength: 2 }))
}))

/** What a peer sends on a command stream: raw bytes, or a plan to sign first. */
type Input = { kind: 'bytes', bytes: Uint8Array } | { kind: 'signed', plan: SignedPlan, tail: Uint8Array, cut: number | null }

const input: fc.Arbitrary<Input> = fc.oneof(
  { arbitrary: fc.oneof(
    hostileBytes,
    hostileJsonText.map(t => { const p = enc.encode(t); return concat(varint(p.byteLength), p) }),
    commandEnvelope().map(framedBytes),
    commandEnvelope().map(e => framedBytes({ ...e, v: 1 })),
    broken(commandEnvelope(), commandEnvelopeBreaks).map(b => framedBytes(b.value)),
    mutateBytes(commandEnvelope().map(framedBytes)),
    fc.tuple(fc.constantFrom(0, MAX_COMMAND_ENVELOPE_BYTES, MAX_COMMAND_ENVELOPE_BYTES + 1, 2 ** 30), fc.uint8Array({ maxLength: 16 })).map(([n, rest]) => concat(varint(n), rest))
  ).map(bytes => ({ kind: 'bytes' as const, bytes })), weight: 1 },
  {
    arbitrary: fc.record({
      kind: fc.constant('signed' as const),
      plan: signedPlan,
      tail: fc.oneof(fc.constant(new Uint8Array(0)), fc.uint8Array({ minLength: 1, maxLength: 32 })),
      cut: fc.oneof({ arbitrary: fc.constant(null), weight: 4 }, { arbitrary: fc.nat(), weight: 1 })
    }),
    weight: 1
  }
)

/** What a hostile executor answers: frames, some of them results it really signed, and raw bytes. */
type AnswerItem =
  | { kind: 'frame', value: unknown }
  | { kind: 'output', seqOffset: number, lines: string[] }
  | { kind: 'result', sameId: boolean, status: 'ok' | 'error' | 'rejected', edits: Mutation[] }
  | { kind: 'raw', bytes: Uint8Array }

const answerItem: fc.Arbitrary<AnswerItem> = fc.oneof(
  commandResponse.map(value => ({ kind: 'frame' as const, value })),
  fc.record({ kind: fc.constant('output' as const), seqOffset: fc.oneof(fc.constant(0), fc.constant(0), fc.integer({ min: -2, max: 2 })), lines: fc.array(fc.string({ maxLength: 20 }), { maxLength: 4 }) }),
  fc.record({ kind: fc.constant('result' as const), sameId: fc.oneof(fc.constant(true), fc.boolean()), status: fc.constantFrom('ok' as const, 'error' as const, 'rejected' as const), edits: fc.oneof(fc.constant<Mutation[]>([]), fc.array(mutation, { maxLength: 2 })) }),
  fc.oneof(hostileBytes, fc.uint8Array({ maxLength: 16 })).map(bytes => ({ kind: 'raw' as const, bytes }))
)

describe('fuzz: /shepherd/cmd/1.0.0 between real hosts', () => {
  const watch = new ProcessWatch()
  let dir: string
  let kA: PrivateKey, kB: PrivateKey, kH: PrivateKey
  let A: string, B: string, H: string
  let hostA: Host, hostB: Host, hostH: Host
  let db: Level<string, any>
  let executor: CommandExecutor
  let service: CommandService
  let nextAnswer: Uint8Array[] = []
  const originalSink = logSink
  let logLines = 0
  let heapBefore = 0

  const handlers: Partial<CommandHandlers> = {
    load_model: async (p, ctx) => { for (let i = 0; i < 3; i++) ctx.output(`loading ${p.model} ${i}`); return { loaded: p.model } },
    unload_model: async p => ({ unloaded: p.model }),
    scan_models: async () => ({ models: [] }),
    collect_logs: async (p, ctx) => { const n = Math.min(p.lines ?? 0, 50); for (let i = 0; i < n; i++) ctx.output(`line ${i}`); return { count: n } },
    update_config: async p => ({ key: p.key }),
    stop_process: async () => { throw new ShepherdError('no such process', { code: 'no_such_process', status: 404 }) }
  }

  before(async () => {
    watch.start()
    setLogSink(() => { logLines++ })
    dir = await fs.mkdtemp(path.join(os.tmpdir(), 'shepherd-fuzz-cmd-'))
    ;[kA, kB, kH] = await Promise.all([createIdentity(), createIdentity(), createIdentity()])
    ;[A, B, H] = [kA, kB, kH].map(peerIdOf)
    ;[hostA, hostB, hostH] = await Promise.all([kA, kB, kH].map(async privateKey => await newHostWith(privateKey)))
    db = new Level<string, any>(path.join(dir, 'store'), { valueEncoding: 'json' })
    await db.open()
    executor = new CommandExecutor({
      privateKey: kB,
      store: new CommandStore(db.sublevel<string, any>('commands', { valueEncoding: 'json' })),
      authority: env => env.issuer === A ? { ok: true } : { ok: false, reason: 'not the leader' },
      handlers,
      allowlist: ['load_model', 'unload_model', 'scan_models', 'collect_logs', 'update_config', 'stop_process']
    })
    service = new CommandService(hostB)
    await service.serve(executor)
    await hostH.handle(COMMAND_PROTOCOL, stream => {
      const chunks = nextAnswer
      void (async () => {
        try {
          for (const c of chunks) if (c.byteLength > 0 && !stream.send(c)) await stream.onDrain()
          await stream.close()
        } catch {}
      })()
    }, { maxInboundStreams: 256 })
    await hostA.dial(hostB.getMultiaddrs()[0])
    await hostA.dial(hostH.getMultiaddrs()[0])
    heapBefore = await heapUsed()
  })

  after(async () => {
    await service?.stop()
    await executor?.close()
    await db?.close()
    await Promise.all([hostA?.stop(), hostB?.stop(), hostH?.stop()])
    await fs.rm(dir, { recursive: true, force: true })
    setLogSink(originalSink)
    const st = executor.stats()
    console.log(`# fuzz command protocol: executor accepted ${st.accepted}, completed ${st.completed}, rejected ${JSON.stringify(st.rejected)}; service served ${service.stats.served}, refused ${service.stats.refused}, violations ${service.stats.violations}; ${logLines} log lines`)
    watch.stop()
    watch.assertClean()
  })

  async function newHostWith (privateKey: PrivateKey): Promise<Host> {
    return await createHost({ privateKey, listen: ['/ip4/127.0.0.1/tcp/0'], mdns: false, mdnsIntervalMs: 1000 })
  }

  const openStreams = (host: Host, peer: string): number => host.getConnections(peerIdFromString(peer)).flatMap(c => c.streams).filter(s => s.protocol === COMMAND_PROTOCOL).length

  async function stillServing (): Promise<void> {
    const env = await createCommand(kA, { type: 'scan_models', payload: {}, group: GROUP, term: 10, target: B })
    const res = await sendCommand(hostA, B, env, { signal: AbortSignal.timeout(10_000) })
    assert.equal(res.status, 'ok')
    assert.deepEqual(res.result, { models: [] })
  }

  /** The bytes for `input`: raw, or an envelope A signs for B then edits. */
  async function bytesOf (i: Input): Promise<Uint8Array> {
    if (i.kind === 'bytes') return i.bytes
    const env = await createCommand(kA, { type: i.plan.type, payload: i.plan.payload, group: GROUP, term: i.plan.term, target: B })
    const edited = i.plan.mutations.reduce<unknown>((acc, m) => applyMutation(acc, m), env)
    const frame = concat(framedBytes(edited), i.tail)
    return i.cut === null ? frame : frame.subarray(0, i.cut % (frame.byteLength + 1))
  }

  it('resets and audits every stream without an envelope, and answers every envelope by the check order', async () => {
    await checkAsync('command executor stream', fc.tuple(input, cuts), 500, async ([i, cs]) => {
      const bytes = await bytesOf(i)
      const first = modelFramed(bytes, MAX_COMMAND_ENVELOPE_BYTES).frames[0]
      const malformedBefore = executor.stats().rejected.malformed ?? 0
      const ex = await exchange(hostA, peerIdFromString(B), COMMAND_PROTOCOL, splitAt(bytes, cs), { ms: 10_000 })
      if (first === undefined || !isCommandEnvelope(first)) {
        assert.equal(ex.end, 'reset', `no envelope, yet the stream ended ${ex.end}`)
        assert.equal(ex.bytes.byteLength, 0)
        await until('the malformed stream to be audited', () => (executor.stats().rejected.malformed ?? 0) === malformedBefore + 1, 3000)
        return
      }
      assert.equal(ex.end, 'closed', `an envelope was answered by ${ex.end}`)
      const reply = modelFramed(ex.bytes, MAX_COMMAND_RESPONSE_BYTES)
      assert.equal(reply.end, null)
      assert.ok(reply.frames.length >= 1)
      let seq = 0
      for (const f of reply.frames.slice(0, -1)) {
        assert.ok(isCommandResponse(f) && f.t === 'output', `expected output frames first, got ${JSON.stringify(f)}`)
        assert.equal(f.seq, seq)
        seq += f.lines.length
      }
      const last = reply.frames[reply.frames.length - 1]
      assert.ok(isCommandResponse(last), `invalid last frame ${JSON.stringify(last)}`)
      const env = first as CommandEnvelope
      const refusal = env.v !== 1 ? 'unsupported_version' : env.target !== B ? 'wrong_target' : !await verifyCommand(env) ? 'bad_signature' : null
      if (refusal !== null) {
        assert.deepEqual(last.t === 'error' && last.code, refusal, `expected refusal ${refusal}, got ${JSON.stringify(last)}`)
        return
      }
      assert.equal(last.t, 'result', `an authenticated command got ${JSON.stringify(last)}`)
      const result = (last as { result: SignedResult }).result
      assert.equal(result.id, env.id)
      assert.equal(result.executor, B)
      assert.equal(await verifyResult(result, B), true, 'the result verifies against the executor')
    })
    await stillServing()
  })

  it('sendCommand returns only a result the target signed for this command, and otherwise a typed error', async () => {
    const arb = fc.tuple(fc.array(answerItem, { minLength: 0, maxLength: 5 }), cuts)
    await checkAsync('command client', arb, 500, async ([items, cs]) => {
      const env = await createCommand(kA, { type: 'scan_models', payload: {}, group: GROUP, term: 1, target: H })
      // Materialise the answer: outputs numbered from the running count (plus the chosen offset), results signed by H.
      const parts: Uint8Array[] = []
      let seq = 0
      for (const it of items) {
        if (it.kind === 'frame') parts.push(framedBytes(it.value))
        else if (it.kind === 'raw') parts.push(it.bytes)
        else if (it.kind === 'output') {
          parts.push(framedBytes({ t: 'output', seq: seq + it.seqOffset, lines: it.lines }))
          seq += it.lines.length
        } else {
          const signed = await signResult(kH, { id: it.sameId ? env.id : '00000000-0000-4000-8000-000000000000', status: it.status, result: { n: 1 }, startedAt: 1, finishedAt: 2, executor: H })
          parts.push(framedBytes({ t: 'result', result: it.edits.reduce<unknown>((acc, m) => applyMutation(acc, m), signed) }))
        }
      }
      const bytes = concat(...parts)
      nextAnswer = splitAt(bytes, cs)
      const want = await expectedClientOutcome(env, bytes)
      const lines: string[] = []
      let got: SignedResult | undefined
      let error: unknown
      try {
        got = await deadline(sendCommand(hostA, H, env, { signal: AbortSignal.timeout(8000), onOutput: l => lines.push(l) }), 9000, 'sendCommand')
      } catch (err) {
        error = err
      }
      if (want.kind === 'result') {
        assert.equal(error, undefined, `a valid signed result was refused: ${(error as Error)?.message}`)
        assert.deepEqual(got, want.result)
        assert.deepEqual(lines, want.lines)
      } else {
        assert.ok(error instanceof ShepherdError, `sendCommand ${got !== undefined ? 'resolved' : `threw ${(error as Error)?.name}: ${(error as Error)?.message}`}; expected ${want.kind}`)
        if (want.kind === 'refused') assert.ok(error instanceof CommandRefusedError && error.code === want.code, `expected refusal ${want.code}, got ${error.name} ${error.code}`)
        else assert.ok(error instanceof WireError, `expected a WireError, got ${error.name} ${error.code}`)
      }
      await until('the command stream to be released', () => openStreams(hostA, H) === 0, 3000)
    })
  })

  /** What sendCommand must do with `bytes` from the executor, following the protocol frame by frame. */
  async function expectedClientOutcome (env: CommandEnvelope, bytes: Uint8Array): Promise<{ kind: 'result', result: SignedResult, lines: string[] } | { kind: 'refused', code: string } | { kind: 'wire' }> {
    const { frames } = modelFramed(bytes, MAX_COMMAND_RESPONSE_BYTES)
    const lines: string[] = []
    let seq = 0
    for (const f of frames) {
      if (!isCommandResponse(f)) return { kind: 'wire' }
      if (f.t === 'output') {
        if (f.seq !== seq) return { kind: 'wire' }
        seq += f.lines.length
        lines.push(...f.lines)
        continue
      }
      if (f.t === 'error') return { kind: 'refused', code: f.code }
      if (f.result.id !== env.id || !await verifyResult(f.result, H)) return { kind: 'wire' }
      return { kind: 'result', result: f.result, lines }
    }
    return { kind: 'wire' }
  }

  it('keeps the heap bounded over the whole run', async () => {
    await assertHeapBounded(heapBefore, 32 * 1024 * 1024, 'command protocol')
  })

  describe('regressions', () => {
    it('audits a stream closed before any byte as no_frame (nothing arrived), not as an unknown error', async () => {
      const store = new CommandStore(db.sublevel<string, any>('commands', { valueEncoding: 'json' }))
      const seen = new Set((await store.listAudit({ limit: 1000 })).map(e => e.cursor))
      const ex = await exchange(hostA, peerIdFromString(B), COMMAND_PROTOCOL, [])
      assert.equal(ex.end, 'reset')
      let fresh: Awaited<ReturnType<CommandStore['listAudit']>> = []
      await until('the audit entry', async () => (fresh = (await store.listAudit({ limit: 1000 })).filter(e => !seen.has(e.cursor))).length > 0, 3000)
      assert.equal(fresh.length, 1)
      assert.equal(fresh[0].reason, 'malformed')
      assert.match(fresh[0].detail ?? '', /^no_frame/, `audit detail: ${fresh[0].detail}`)
    })
  })
})
