/**
 * Valid wire messages of every protocol, as fast-check arbitraries, and for each the ways to
 * break it for sure (`BreakSpec`). The fuzz tests mutate the valid ones and check that a
 * decoder accepts exactly the valid and refuses the broken, never throwing.
 */
import fc from 'fast-check'
import { LLAMACPP_ARG_RULES, llamacppFlagKey } from '../../src/node/commands/payloads.js'
import type { CommandType } from '../../src/p2p/command-messages.js'
import { ascii, objectOf, type BreakSpec } from './fuzz-arbitraries.js'

const MAX_SAFE = Number.MAX_SAFE_INTEGER

/** A JSON object as `JSON.parse` returns it (poison keys included as own properties). */
export const jsonObject: fc.Arbitrary<Record<string, unknown>> = fc.dictionary(fc.string({ maxLength: 8 }), fc.jsonValue({ maxDepth: 3 }), { maxKeys: 6 })
  .map(o => JSON.parse(JSON.stringify(o)) as Record<string, unknown>)

const nonNegInt = fc.oneof(fc.nat(), fc.maxSafeNat())
/** 1..max code points, any Unicode. */
const text = (minLength: number, maxLength: number): fc.Arbitrary<string> => fc.string({ unit: 'binary', minLength, maxLength })
export const memberName = text(1, 64)

// --- membership (src/p2p/messages.ts) ---

const common = { v: fc.constant(1 as const), inc: nonNegInt, seq: nonNegInt, at: nonNegInt }

export const heartbeat = fc.record({
  ...common,
  t: fc.constant('hb' as const),
  name: memberName,
  groups: fc.array(memberName, { maxLength: 32 }),
  snap: nonNegInt,
  load: fc.tuple(nonNegInt, nonNegInt),
  lead: fc.array(fc.tuple(memberName, nonNegInt, text(1, 128)), { maxLength: 32 })
}, { requiredKeys: ['v', 't', 'inc', 'seq', 'at', 'name', 'groups', 'snap'] })

export const snapshotMessage = fc.record({
  ...common,
  t: fc.constant('snap' as const),
  name: memberName,
  groups: fc.array(memberName, { maxLength: 32 }),
  snap: nonNegInt,
  addrs: fc.array(text(0, 256), { maxLength: 16 }),
  data: jsonObject
})

export const leaveMessage = fc.record({ ...common, t: fc.constant('leave' as const) })

export const membershipMessage = fc.oneof(heartbeat, snapshotMessage, leaveMessage)

const commonInvalid = {
  v: [2, 0, '1', null, 1.5, true],
  inc: [-1, 1.5, '1', null, []],
  seq: [-1, 0.25, '0', {}],
  at: [-5, 'now', null]
}
const identityInvalid = {
  name: ['', ascii(65), 5, null, ['n']],
  groups: ['g', [''], [ascii(65)], Array(33).fill('g'), [5], null],
  snap: [-1, 0.5, '1', null]
}

export const heartbeatBreaks: BreakSpec = {
  required: ['v', 't', 'inc', 'seq', 'at', 'name', 'groups', 'snap'],
  closed: ['v', 't', 'inc', 'seq', 'at', 'name', 'groups', 'snap', 'load', 'lead'],
  invalid: {
    ...commonInvalid,
    ...identityInvalid,
    t: ['leave', 'snap', 'HB', '', 5, null],
    load: [[1], [1, 2, 3], [-1, 0], ['a', 'b'], [1.5, 1], {}],
    lead: [[['g', 1]], [['', 1, 'x']], [['g', -1, 'x']], [['g', 1, ascii(129)]], [['g', 1, '']], Array(33).fill(['g', 1, 'x']), 'g']
  }
}

export const snapshotMessageBreaks: BreakSpec = {
  required: ['v', 't', 'inc', 'seq', 'at', 'name', 'groups', 'snap', 'addrs', 'data'],
  closed: ['v', 't', 'inc', 'seq', 'at', 'name', 'groups', 'snap', 'addrs', 'data'],
  invalid: {
    ...commonInvalid,
    ...identityInvalid,
    t: ['hb', 'leave', 'SNAP', null],
    addrs: [Array(17).fill('/ip4/127.0.0.1/tcp/1'), [ascii(257)], [5], 'x', null],
    data: [[], 'str', null, 5, true]
  }
}

export const leaveBreaks: BreakSpec = {
  required: ['v', 't', 'inc', 'seq', 'at'],
  closed: ['v', 't', 'inc', 'seq', 'at'],
  invalid: { ...commonInvalid, t: ['hb', 'snap', 'bye', null] }
}

// --- node snapshot (src/node/snapshot.ts) ---

const finite = fc.double({ noNaN: true, noDefaultInfinity: true })
const str512 = text(0, 512)
const maybe = <T>(arb: fc.Arbitrary<T>): fc.Arbitrary<T | null> => fc.option(arb, { nil: null })

export const modelSummary = fc.record({
  name: text(1, 256),
  sizeBytes: finite,
  architecture: maybe(str512),
  quantization: maybe(str512),
  parameterCount: maybe(finite),
  contextLength: maybe(finite),
  fingerprint: str512,
  state: fc.constantFrom('loaded', 'on_disk', 'loading'),
  pinned: fc.boolean()
}, { requiredKeys: ['name', 'sizeBytes', 'fingerprint'] })

export const deploymentRecord = fc.record({
  model: text(1, 256),
  replicas: fc.integer({ min: 1, max: 1024 }),
  group: text(1, 64),
  strategy: text(0, 32),
  constraints: jsonObject,
  updatedAt: nonNegInt,
  origin: text(0, 128),
  deleted: fc.boolean()
}, { requiredKeys: ['model', 'replicas', 'group', 'updatedAt', 'origin', 'deleted'] })

export const nodeResources = fc.record({
  cpu: fc.record({ model: str512, cores: finite, usagePercent: finite }, { requiredKeys: ['cores'] }),
  memory: fc.record({ totalBytes: finite, usedBytes: finite, availableBytes: finite }, { requiredKeys: ['totalBytes'] }),
  disk: fc.record({ totalBytes: finite, availableBytes: finite }, { requiredKeys: [] }),
  gpus: fc.array(fc.record({ index: finite, name: str512, vendor: str512, totalMemoryBytes: finite, usedMemoryBytes: finite }, { requiredKeys: ['index', 'name', 'vendor', 'totalMemoryBytes'] }), { maxLength: 8 }),
  llamacpp: fc.array(fc.record({ path: str512, backend: str512, version: str512 }, { requiredKeys: ['path', 'backend'] }), { maxLength: 4 })
})

export const nodeSnapshot = fc.record({
  version: str512,
  resources: nodeResources,
  models: fc.array(modelSummary, { maxLength: 12 }),
  api: maybe(fc.record({ port: fc.integer({ min: 0, max: 65535 }) })),
  labels: fc.dictionary(fc.string({ maxLength: 12 }), text(0, 128), { maxKeys: 8 }).map(o => JSON.parse(JSON.stringify(o)) as Record<string, string>),
  deployments: fc.array(deploymentRecord, { maxLength: 6 })
}, { requiredKeys: ['version', 'resources', 'models'] })

const goodResources = { cpu: { cores: 1 }, memory: { totalBytes: 1 }, disk: {}, gpus: [], llamacpp: [] }

export const nodeSnapshotBreaks: BreakSpec = {
  required: ['version', 'resources', 'models'],
  closed: false,
  invalid: {
    version: [5, null, ascii(513), []],
    resources: [null, [], 'r', { cpu: { cores: 1 } }, { ...goodResources, cpu: {} }, { ...goodResources, gpus: [{}] }, { ...goodResources, gpus: Array(65).fill({ index: 0, name: 'g', vendor: 'v', totalMemoryBytes: 1 }) }, { ...goodResources, memory: { totalBytes: '1' } }],
    models: [{}, [{}], [{ name: '', sizeBytes: 1, fingerprint: 'f' }], [{ name: 'm', sizeBytes: '1', fingerprint: 'f' }], [{ name: 'm', sizeBytes: 1, fingerprint: 'f', state: 'gone' }], [{ name: 'm', sizeBytes: 1, fingerprint: 'f', pinned: 'yes' }], 'm'],
    api: [{ port: 70000 }, { port: -1 }, { port: 1.5 }, 'x', 5, []],
    labels: [{ a: 5 }, objectOf(Array.from({ length: 65 }, (_, i) => [`k${i}`, 'v'])), { a: ascii(129) }, [], 'l'],
    deployments: [[{}], [{ model: 'm', replicas: 0, group: 'g', updatedAt: 1, origin: 'o', deleted: false }], [{ model: 'm', replicas: 1, group: 'g', updatedAt: 1, origin: 'o', deleted: 'no' }], {}]
  }
}

// --- inference (src/p2p/inference-messages.ts) ---

// Inference frames (/shepherd/openai/2.0.0, binary): test/support/fuzz-inference.ts.

// --- commands (src/p2p/command-messages.ts, src/node/commands/payloads.ts) ---

const hex = (n: number): fc.Arbitrary<string> => fc.string({ unit: fc.constantFrom(...'0123456789abcdef'), minLength: n, maxLength: n })
const uuid = fc.tuple(hex(8), hex(4), hex(4), hex(4), hex(12)).map(p => p.join('-'))
const base58 = fc.constantFrom(...'123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz')
/** Any string of the textual peer-id form (not necessarily a real key). */
export const peerIdText = fc.string({ unit: base58, minLength: 32, maxLength: 128 })
const time = fc.oneof(fc.nat(), fc.integer({ min: 0, max: MAX_SAFE }))
const codeText = fc.tuple(fc.constantFrom(...'abcdefghijklmnopqrstuvwxyz'), fc.string({ unit: fc.constantFrom(...'abcdefghijklmnopqrstuvwxyz0123456789_'), maxLength: 63 })).map(([a, b]) => a + b)
const typeText = fc.tuple(fc.constantFrom(...'abcdefghijklmnopqrstuvwxyz'), fc.string({ unit: fc.constantFrom(...'abcdefghijklmnopqrstuvwxyz0123456789_'), maxLength: 31 })).map(([a, b]) => a + b)
const sigText = text(1, 256)

/** An envelope of valid shape (any version, type and signature text); `issuer`/`target` may be given real ids. */
export function commandEnvelope (ids: fc.Arbitrary<string> = peerIdText): fc.Arbitrary<Record<string, unknown>> {
  return fc.record({
    v: fc.integer({ min: 0, max: 1_000_000 }),
    id: uuid,
    type: typeText,
    payload: jsonObject,
    group: text(1, 64),
    term: time,
    issuer: ids,
    target: ids,
    issuedAt: time,
    expiresAt: time,
    sig: sigText
  })
}

export const commandEnvelopeBreaks: BreakSpec = {
  required: ['v', 'id', 'type', 'payload', 'group', 'term', 'issuer', 'target', 'issuedAt', 'expiresAt', 'sig'],
  closed: ['v', 'id', 'type', 'payload', 'group', 'term', 'issuer', 'target', 'issuedAt', 'expiresAt', 'sig'],
  invalid: {
    v: [-1, 1_000_001, 1.5, '1', null],
    id: ['', 'not-a-uuid', '00000000-0000-0000-0000-00000000000G', '00000000-0000-0000-0000-000000000000x', 'ABCDEF01-0000-0000-0000-000000000000', 5],
    type: ['', 'Load', '1load', 'load-model', ascii(33, 'a'), 'a b', null],
    payload: [[], 'p', null, 5, objectOf(Array.from({ length: 33 }, (_, i) => [`k${i}`, i]))],
    group: ['', ascii(65), 5, null],
    term: [-1, 1.5, MAX_SAFE + 2, '1', null],
    issuer: ['', 'short', '0OIl' + ascii(40, '1'), ascii(129, '1'), 5],
    target: ['', 'x', ascii(31, 'A'), null],
    issuedAt: [-1, 0.5, MAX_SAFE + 2, '0'],
    expiresAt: [-1, 2 ** 60, 'never'],
    sig: ['', ascii(257, 'A'), 5, null]
  }
}

export const signedResult = (ids: fc.Arbitrary<string> = peerIdText): fc.Arbitrary<Record<string, unknown>> => fc.record({
  id: uuid,
  status: fc.constantFrom('ok', 'error', 'rejected'),
  result: fc.jsonValue({ maxDepth: 3 }),
  error: fc.record({ code: codeText, message: text(0, 200) }),
  startedAt: time,
  finishedAt: time,
  executor: ids,
  sig: sigText
}, { requiredKeys: ['id', 'status', 'startedAt', 'finishedAt', 'executor', 'sig'] }).map(r => JSON.parse(JSON.stringify(r)) as Record<string, unknown>)

export const signedResultBreaks: BreakSpec = {
  required: ['id', 'status', 'startedAt', 'finishedAt', 'executor', 'sig'],
  closed: ['id', 'status', 'result', 'error', 'startedAt', 'finishedAt', 'executor', 'sig'],
  invalid: {
    id: ['x', 5],
    status: ['OK', 'done', null],
    error: [{}, { code: 'Bad', message: 'm' }, { code: 'c', message: ascii(8193) }, { code: 'c', message: 'm', extra: 1 }, 'e'],
    startedAt: [-1, 1.5],
    finishedAt: ['1'],
    executor: ['x', null],
    sig: ['', 5]
  }
}

export const commandOutput = fc.record({ t: fc.constant('output' as const), seq: fc.nat(), lines: fc.array(text(0, 64), { maxLength: 8 }) })
export const commandError = fc.record({ t: fc.constant('error' as const), code: codeText, message: text(0, 200) })
export const commandResponse = fc.oneof(commandOutput, commandError, signedResult().map(result => ({ t: 'result' as const, result })))

export const commandResponseBreaks: Array<[fc.Arbitrary<Record<string, unknown>>, BreakSpec]> = [
  [commandOutput, { required: ['t', 'seq', 'lines'], closed: ['t', 'seq', 'lines'], invalid: { seq: [-1, 0.5, '0'], lines: [[5], 'l', [null]], t: ['out', 'result'] } }],
  [commandError, { required: ['t', 'code', 'message'], closed: ['t', 'code', 'message'], invalid: { code: ['', 'Bad', '1x', ascii(65, 'a'), 5], message: [ascii(8193), 5, null] } }]
]

/** A model name the payload schema admits: no leading dot, no path separator, no control character. */
const modelName = text(1, 256).map(s => s.replace(/[/\\\u0000-\u001f]/g, '_').replace(/^\./, '_'))

const argPair = fc.constantFrom(...Object.entries(LLAMACPP_ARG_RULES)).chain(([flag, rule]): fc.Arbitrary<string[]> => {
  if (rule === 'flag') return fc.constant([flag])
  if (Array.isArray(rule)) return fc.constantFrom(...(rule as readonly string[])).map(v => [flag, v])
  if ('int' in rule) return fc.integer({ min: rule.int[0], max: rule.int[1] }).map(n => [flag, String(n)])
  const [min, max] = (rule as { num: readonly [number, number] }).num
  return fc.tuple(fc.integer({ min: Math.ceil(min), max: Math.floor(max) }), fc.option(fc.integer({ min: 0, max: 999_999_999 }), { nil: undefined }))
    .map(([i, f]) => [flag, f === undefined || i >= max ? String(i) : `${i}.${f}`])
})

export const validPayloads: Record<CommandType, fc.Arbitrary<Record<string, unknown>>> = {
  load_model: fc.record({
    model: modelName,
    keepAliveMs: fc.integer({ min: -1, max: 7 * 24 * 3600_000 }),
    fingerprint: fc.string({ unit: fc.constantFrom(...'abcdefghijklmnopqrstuvwxyz0123456789:._-'), minLength: 1, maxLength: 128 }),
    sources: fc.array(fc.string({ unit: base58, minLength: 32, maxLength: 128 }), { maxLength: 16 })
  }, { requiredKeys: ['model'] }),
  unload_model: fc.record({ model: modelName }),
  run_llamacpp: fc.record({
    model: modelName,
    args: fc.uniqueArray(argPair, { maxLength: 12, selector: pair => llamacppFlagKey(pair[0]) }).map(pairs => pairs.flat()),
    port: fc.integer({ min: 1024, max: 65535 })
  }, { requiredKeys: ['model'] }),
  stop_process: fc.oneof(fc.record({ pid: fc.integer({ min: 2, max: 4_194_304 }) }), fc.record({ processId: fc.string({ unit: fc.constantFrom(...'abcXYZ019._:-'), minLength: 1, maxLength: 128 }) })),
  scan_models: fc.constant({}),
  collect_logs: fc.record({ lines: fc.integer({ min: 1, max: 10_000 }), since: fc.integer({ min: 0, max: MAX_SAFE }) }, { requiredKeys: [] }),
  update_config: fc.oneof(
    fc.record({ key: fc.constant('keepAliveMs'), value: fc.integer({ min: 0, max: 7 * 24 * 3600_000 }) }),
    fc.record({ key: fc.constant('maxConcurrency'), value: fc.integer({ min: 1, max: 1024 }) }),
    fc.record({ key: fc.constant('maxQueue'), value: fc.integer({ min: 0, max: 100_000 }) }),
    fc.record({ key: fc.constant('requestTimeoutMs'), value: fc.integer({ min: 1000, max: 24 * 3600_000 }) }),
    fc.record({ key: fc.constant('routing'), value: fc.constantFrom('least-loaded', 'round-robin', 'random', 'weighted', 'lowest-latency') }),
    fc.record({ key: fc.constant('logLevel'), value: fc.constantFrom('trace', 'debug', 'info', 'warn', 'error', 'silent') })
  ),
  serve_rpc: fc.record({ model: modelName, head: peerIdText, stop: fc.boolean() }, { requiredKeys: ['model', 'head'] })
}

const badModel = ['', '.hidden', '..', '../etc/passwd', 'a/../b', 'a//b', '/abs', 'a/.b', 'a/b/c/d/e', 'a\\b', 'a\u0000b', 'a\nb', ascii(257), 5, null, ['m']]

/** Payloads each type's checks must refuse. `stop_process` and `update_config` refuse whole shapes, not fields. */
export const payloadBreaks: Record<CommandType, { spec: BreakSpec, also: readonly unknown[] }> = {
  load_model: {
    spec: { required: ['model'], closed: ['model', 'keepAliveMs', 'fingerprint', 'sources', 'split'], invalid: { split: [{ workers: [] }, { workers: ['short'], fractions: [0.5, 0.5] }, { workers: [ascii(40, 'A')], fractions: [2, 0] }, 's'],  model: badModel, keepAliveMs: [-2, 7 * 24 * 3600_000 + 1, 1.5, '1'], fingerprint: ['', 'ABC', ascii(129, 'a'), 'a b'], sources: [['short'], Array(17).fill(ascii(40, 'A')), [ascii(129, 'A')], ['a/b' + ascii(40, 'A')], 's'] } },
    also: [[], 'model', null]
  },
  unload_model: { spec: { required: ['model'], closed: ['model'], invalid: { model: badModel } }, also: [[]] },
  run_llamacpp: {
    spec: {
      required: ['model'],
      closed: ['model', 'args', 'port'],
      invalid: {
        model: badModel,
        port: [80, 1023, 65536, 1.5, '8080'],
        args: [['--model', 'x'], ['--ctx-size'], ['--ctx-size', 'abc'], ['--ctx-size', '1e9'], ['--ctx-size', '9999999999'], ['-sm', 'diagonal'], ['--host', '0.0.0.0'], ['--api-key', 'k'], ['--temp', '1.'], ['constructor'], ['__proto__'], ['toString'], ['--mlock', '--ctx-size'], ['a b'], [''], [ascii(65, 'a')], Array(65).fill('--mlock'), 'args', [5]]
      }
    },
    also: []
  },
  stop_process: { spec: { required: [], closed: false, invalid: {} }, also: [{}, { pid: 1 }, { pid: 4_194_305 }, { pid: 2, processId: 'x' }, { processId: '' }, { processId: 'a/b' }, { pid: '12' }, { name: 'x' }] },
  scan_models: { spec: { required: [], closed: [], invalid: {} }, also: [[], null] },
  collect_logs: { spec: { required: [], closed: ['lines', 'since'], invalid: { lines: [0, 10_001, 1.5, '5'], since: [-1, MAX_SAFE + 2, 'yesterday'] } }, also: [[]] },
  update_config: {
    spec: { required: [], closed: false, invalid: {} },
    also: [{}, { value: 1 }, { key: 'apiKeys', value: ['k'] }, { key: 'dataDir', value: '/' }, { key: 'logLevel', value: 'loud' }, { key: 'maxConcurrency', value: 0 }, { key: 'maxQueue', value: -1 }, { key: 'requestTimeoutMs', value: 999 }, { key: '__proto__', value: 1 }, { key: 'routing', value: 'fastest' }, { key: 'keepAliveMs', value: 1, extra: true }, { key: 5, value: 1 }, { key: null }, []]
  },
  serve_rpc: { spec: { required: ['model', 'head'], closed: ['model', 'head', 'stop'], invalid: { model: badModel, head: ['', 'short', ascii(129, 'A'), 'a/b' + ascii(40, 'A'), 5], stop: ['yes', 1] } }, also: [[], null] }
}

// --- blobs (src/p2p/blob-messages.ts) ---

const safeBlobName = text(1, 200).map(s => s.replace(/[/\\\u0000-\u001f\u007f]/g, '_').replace(/^\./, '_'))

export const blobRequest = fc.record({ v: fc.constant(1 as const), name: safeBlobName, fingerprint: hex(64), offset: time, sha256: hex(64) }, { requiredKeys: ['v', 'name', 'fingerprint', 'offset'] })

export const blobRequestBreaks: BreakSpec = {
  required: ['v', 'name', 'fingerprint', 'offset'],
  closed: ['v', 'name', 'fingerprint', 'offset', 'sha256'],
  invalid: {
    v: [2, '1', null],
    name: ['', '.', '..', '../m', 'a/../b', 'a//b', 'a/', 'a/b/c/d/e', 'a\\b', '/etc/passwd', '.hidden', 'a\u0000b', 'a\u007fb', ascii(201), 5],
    fingerprint: ['', 'AB'.repeat(32), 'ab'.repeat(31), 'ab'.repeat(33), 'zz'.repeat(32), 5],
    offset: [-1, 1.5, MAX_SAFE + 2, '0', null],
    sha256: ['', 'CD'.repeat(32), 'c'.repeat(63), 5]
  }
}

export const blobHeader = fc.record({ t: fc.constant('header' as const), size: time, sha256: hex(64) })
export const blobEnd = fc.constant({ t: 'end' as const })
export const blobError = fc.record({ t: fc.constant('error' as const), code: fc.string({ unit: fc.constantFrom(...'abcdefghijklmnopqrstuvwxyz_'), minLength: 1, maxLength: 64 }), message: text(0, 1024) })
export const blobControl = fc.oneof(blobHeader, blobEnd, blobError)

export const blobControlBreaks: Array<[fc.Arbitrary<Record<string, unknown>>, BreakSpec]> = [
  [blobHeader, { required: ['t', 'size', 'sha256'], closed: ['t', 'size', 'sha256'], invalid: { size: [-1, 1.5, MAX_SAFE + 2, '1'], sha256: ['', 'AB'.repeat(32), 5], t: ['head', null] } }],
  [blobEnd, { required: ['t'], closed: ['t'], invalid: { t: ['fin', ''] } }],
  [blobError, { required: ['t', 'code', 'message'], closed: ['t', 'code', 'message'], invalid: { code: ['', 'Busy', 'busy!', ascii(65, 'a'), 5], message: [ascii(1025), null] } }]
]
