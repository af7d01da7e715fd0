/**
 * The operator's experience (issue 15), pure parts: start-time checks, key files, duplicate
 * names, the npx parent lookup, peer references, who may send a command (with the real executor
 * and LevelDB), transfer tracking, deployment progress and the service files.
 */
import '../../src/polyfill.js'
import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import fs from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import { Level } from 'level'
import { defaultOptions, resolveOptions } from '../../src/config/index.js'
import { ConfigError } from '../../src/errors.js'
import { preflight, type PreflightFacts } from '../../src/cli/preflight.js'
import { duplicateNames } from '../../src/cli/start-notes.js'
import { npmAncestor } from '../../src/cli/service-signals.js'
import { launchdPlist, systemdUnit, type ServiceSpec } from '../../src/cli/service.js'
import { progressLine } from '../../src/cli/deployments.js'
import { resolvePeer } from '../../src/api/commands.js'
import { deploymentProgress } from '../../src/api/deployment-progress.js'
import { TransferTracker, percentOf } from '../../src/node/transfers.js'
import { MEMBER_OPERATOR_TERM, operatorAuthority } from '../../src/node/control-plane.js'
import { CommandExecutor, CommandStore, type AuthorityVerdict } from '../../src/node/commands/index.js'
import { createIdentity, peerIdOf } from '../../src/p2p/identity.js'
import { createCommand } from '../../src/p2p/command-messages.js'

const facts = (f: Partial<PreflightFacts> = {}): PreflightFacts => ({ modelsDirs: [], llamacppBuilds: null, gpus: null, platform: 'linux', keysOnArgv: [], ...f })

describe('start-time checks (preflight)', () => {
  const o = { ...defaultOptions(), engine: 'embedded' as const }

  it('passes a plain setup', () => {
    assert.deepEqual(preflight(o, facts({ modelsDirs: [{ dir: '/m', state: 'dir' }] })), { errors: [], warnings: [] })
  })

  it('refuses a models dir that does not exist, is a file or cannot be read, naming it', () => {
    const r = preflight(o, facts({ modelsDirs: [{ dir: '/nope', state: 'missing' }, { dir: '/etc/hosts', state: 'not_dir' }, { dir: '/root/x', state: 'unreadable' }] }))
    assert.equal(r.errors.length, 3)
    assert.match(r.errors[0], /models dir \/nope does not exist/)
    assert.match(r.errors[1], /\/etc\/hosts is not a directory/)
    assert.match(r.errors[2], /\/root\/x cannot be read/)
  })

  it('refuses --engine llama-server without a build, --gpu cuda without an NVIDIA GPU, --gpu metal off macOS', () => {
    assert.match(preflight({ ...o, engine: 'llama-server' }, facts({ llamacppBuilds: 0 })).errors[0], /no llama-server build found/)
    assert.deepEqual(preflight({ ...o, engine: 'llama-server' }, facts({ llamacppBuilds: 1 })).errors, [])
    assert.match(preflight({ ...o, gpu: 'cuda' }, facts({ gpus: [{ name: 'Radeon', vendor: 'amd' }] })).errors[0], /--gpu cuda: no NVIDIA GPU/)
    assert.deepEqual(preflight({ ...o, gpu: 'cuda' }, facts({ gpus: [{ name: 'H200', vendor: 'nvidia' }] })).errors, [])
    assert.match(preflight({ ...o, gpu: 'metal' }, facts()).errors[0], /Metal exists on macOS only/)
    assert.deepEqual(preflight({ ...o, gpu: 'metal' }, facts({ platform: 'darwin' })).errors, [])
    // A GPU that may appear (Vulkan) is a warning, not a refusal.
    const v = preflight({ ...o, gpu: 'vulkan' }, facts({ gpus: [] }))
    assert.deepEqual(v.errors, [])
    assert.match(v.warnings[0], /--gpu vulkan: no GPU found/)
    // --engine none needs neither.
    assert.deepEqual(preflight({ ...o, engine: 'none', gpu: 'cuda' }, facts({ gpus: [] })).errors, [])
  })

  it('warns about keys on the command line', () => {
    assert.match(preflight(o, facts({ keysOnArgv: ['--api-key'] })).warnings[0], /--api-key on the command line.*--api-key-file/)
  })
})

describe('API keys from a file; an empty key fails at start', () => {
  it('reads keys (one a line, comments and blanks skipped) and adds them to the others', async () => {
    const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'shepherd-keys-'))
    const file = path.join(dir, 'keys')
    await fs.writeFile(file, '# the API keys\nalpha\n\n  beta  \n', { mode: 0o600 })
    const o = await resolveOptions({ env: { SHEPHERD_API_KEYS: 'env-key' }, flags: { 'api-key-file': file } })
    assert.deepEqual(o.apiKeys, ['env-key', 'alpha', 'beta'])
    const fromEnv = await resolveOptions({ env: { SHEPHERD_API_KEY_FILE: file } })
    assert.deepEqual(fromEnv.apiKeys, ['alpha', 'beta'])
    await fs.writeFile(file, '# nothing\n\n')
    await assert.rejects(resolveOptions({ env: {}, flags: { 'api-key-file': file } }), (err: any) => err instanceof ConfigError && /holds no key/.test(err.message))
    await assert.rejects(resolveOptions({ env: {}, flags: { 'api-key-file': path.join(dir, 'missing') } }), /cannot read the API key file .*ENOENT/)
  })

  it('refuses an empty key from a flag or the file', async () => {
    await assert.rejects(resolveOptions({ env: {}, flags: { 'api-key': [''] } }), (err: any) => err instanceof ConfigError && /an API key is empty/.test(err.message))
    await assert.rejects(resolveOptions({ env: {}, flags: { 'api-key': ['ok', '  '] } }), /an API key is empty/)
  })
})

describe('names and peer references', () => {
  it('finds names shared by several nodes, this one included', () => {
    const d = duplicateNames([{ id: 'A', name: 'raspberrypi' }, { id: 'B', name: 'raspberrypi' }, { id: 'C', name: 'rig' }, { id: 'A', name: 'raspberrypi' }])
    assert.deepEqual([...d], [['raspberrypi', ['A', 'B']]])
  })

  const node = {
    id: '12D3KooWSelfSelfSelfSelf000001',
    name: 'pi',
    peers: () => [{ id: '12D3KooWPeerPeerPeerPeer000002', name: 'pi' }, { id: '12D3KooWPeerPeerPeerPeer000003', name: 'rig' }] as any
  }

  it('resolves an id, a unique name or a unique suffix; a shared name is refused with the ids', () => {
    assert.equal(resolvePeer(node, 'rig'), '12D3KooWPeerPeerPeerPeer000003')
    assert.equal(resolvePeer(node, '12D3KooWPeerPeerPeerPeer000002'), '12D3KooWPeerPeerPeerPeer000002')
    assert.equal(resolvePeer(node, '000003'), '12D3KooWPeerPeerPeerPeer000003')
    assert.throws(() => resolvePeer(node, 'pi'), (err: any) => err.code === 'ambiguous_peer' && err.status === 409 && err.message.includes('12D3KooWSelfSelfSelfSelf000001') && err.message.includes('12D3KooWPeerPeerPeerPeer000002'))
    // A short suffix could match anything: not accepted.
    assert.throws(() => resolvePeer(node, '3'), (err: any) => err.code === 'peer_not_found')
    assert.throws(() => resolvePeer(node, 'nobody'), (err: any) => err.code === 'peer_not_found')
  })
})

describe('who may give a command: operator members, never by claim', () => {
  const leaderOk = (): AuthorityVerdict => ({ ok: true })
  const leaderNo = (): AuthorityVerdict => ({ ok: false, reason: 'not_proven_leader: no' })
  const ctx = (mode: 'admission' | 'swarm-key' | 'open', member: boolean, leader = leaderNo) => ({ selfId: 'SELF', mode, isMember: () => member, authorizeLeader: leader })

  it('decides by issuer, term and mode', () => {
    assert.deepEqual(operatorAuthority({ issuer: 'SELF', group: 'g', term: 7 }, ctx('open', false)), { ok: true, operator: true })
    assert.deepEqual(operatorAuthority({ issuer: 'M', group: 'g', term: MEMBER_OPERATOR_TERM }, ctx('admission', true)), { ok: true, operator: true })
    assert.deepEqual(operatorAuthority({ issuer: 'M', group: 'g', term: MEMBER_OPERATOR_TERM }, ctx('swarm-key', true)), { ok: true, operator: true })
    const stranger = operatorAuthority({ issuer: 'X', group: 'g', term: MEMBER_OPERATOR_TERM }, ctx('admission', false)) as { ok: boolean, reason: string }
    assert.ok(!stranger.ok && /^not_member_operator: the issuer is not a member/.test(stranger.reason))
    const open = operatorAuthority({ issuer: 'M', group: 'g', term: MEMBER_OPERATOR_TERM }, ctx('open', true)) as { ok: boolean, reason: string }
    assert.ok(!open.ok && /^not_member_operator: member commands are off in an open mesh/.test(open.reason))
    // At a leader's term the leader check decides (a deposed leader stays refused and fenced).
    assert.deepEqual(operatorAuthority({ issuer: 'M', group: 'g', term: 3 }, ctx('admission', true)), { ok: false, reason: 'not_proven_leader: no' })
    assert.deepEqual(operatorAuthority({ issuer: 'L', group: 'g', term: 3 }, ctx('admission', true, leaderOk)), { ok: true })
  })

  it('the executor runs a member operator\'s command unfenced, without raising the term; refuses a non-member and a stale leader', async () => {
    const [kSelf, kMember, kStranger] = await Promise.all([createIdentity(), createIdentity(), createIdentity()])
    const [SELF, MEMBER, STRANGER] = [kSelf, kMember, kStranger].map(peerIdOf)
    const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'shepherd-opauth-'))
    const db = new Level<string, any>(dir, { valueEncoding: 'json' })
    await db.open()
    const store = new CommandStore(db.sublevel<string, any>('commands', { valueEncoding: 'json' }))
    await store.admitTerm('g', 5)
    const executor = new CommandExecutor({
      privateKey: kSelf,
      store,
      handlers: { scan_models: async () => ({ models: [] }) },
      authority: env => operatorAuthority(env, { selfId: SELF, mode: 'admission', isMember: p => p === MEMBER, authorizeLeader: () => ({ ok: false, reason: 'not_proven_leader: none' }) })
    })
    try {
      const send = async (key: typeof kSelf, term: number): Promise<{ status: string, code?: string, message?: string }> => {
        const env = await createCommand(key, { type: 'scan_models', payload: {}, group: 'g', term, target: SELF, ttlMs: 60_000 })
        const reply = await executor.receive(env, { peer: peerIdOf(key), onOutput: () => {} })
        assert.equal(reply.t, 'result')
        const r = (reply as any).result
        return { status: r.status, code: r.error?.code, message: r.error?.message }
      }
      assert.deepEqual(await send(kMember, MEMBER_OPERATOR_TERM), { status: 'ok', code: undefined, message: undefined })
      assert.equal(await store.termOf('g'), 5, 'an operator command neither is fenced nor raises the term')
      const stranger = await send(kStranger, MEMBER_OPERATOR_TERM)
      assert.equal(stranger.code, 'not_authorized')
      assert.match(stranger.message!, /^not_member_operator: /)
      // A member that signs at an old leader term is a (deposed) leader's command: fenced first.
      assert.equal((await send(kMember, 4)).code, 'stale_term')
      const claimed = await send(kMember, 9)
      assert.equal(claimed.code, 'not_authorized')
      assert.equal(await store.termOf('g'), 5, 'a refused claim raises nothing')
      const audit = await store.listAudit({ limit: 50 })
      assert.ok(audit.some(e => e.issuer === STRANGER && e.reason === 'not_authorized'), 'the refusal is audited')
    } finally {
      await executor.close()
      await db.close()
    }
  })
})

describe('transfer progress and deployment progress', () => {
  it('tracks a pull, throttles progress, keeps finished rows a while', () => {
    let now = 1000
    const t = new TransferTracker({ clock: () => now, progressEveryMs: 500, keepFinishedMs: 60_000 })
    const seen: string[] = []
    t.on('change', r => seen.push(`${r.phase}:${r.receivedBytes ?? '-'}`))
    t.begin('m', 'f'.repeat(64))
    t.progress('m', 10, 100) // right after begin: recorded, not announced
    now += 100
    t.progress('m', 20, 100) // within 500 ms: recorded, not announced
    now += 1000
    t.progress('m', 60, 100)
    t.progress('m', 100, 100) // the end is always announced
    assert.equal(t.list()[0].bytesPerSec, 45) // (60-10) bytes over 1.1 s
    t.loading('m', null, null)
    t.loaded('m')
    assert.deepEqual(seen, ['transferring:-', 'transferring:60', 'transferring:100', 'loading:100', 'loaded:100'])
    const row = t.list()[0]
    assert.equal(row.bytesPerSec, null)
    assert.equal(percentOf(row), 100)
    now += 61_000
    assert.deepEqual(t.list(), [])
    t.begin('x', null)
    t.failed('x', Object.assign(new Error('source gone'), { code: 'blob_unavailable' }))
    assert.equal(t.list()[0].error, 'blob_unavailable: source gone')
    assert.equal(percentOf({ phase: 'transferring', receivedBytes: 1, totalBytes: 3 }), 33.3)
  })

  it('combines members\' rows, snapshots and the leader\'s pending placements', () => {
    const now = Date.parse('2026-12-03T19:00:00Z')
    const rows = [
      { nodeId: 'B', name: 'b', model: 'm', fingerprint: 'f1', phase: 'transferring' as const, receivedBytes: 25, totalBytes: 100, bytesPerSec: 10, error: null, at: now },
      { nodeId: 'C', name: 'c', model: 'm', fingerprint: 'f2', phase: 'transferring' as const, receivedBytes: 5, totalBytes: 100, bytesPerSec: 1, error: null, at: now },
      { nodeId: 'D', name: 'd', model: 'other', fingerprint: null, phase: 'loading' as const, receivedBytes: null, totalBytes: null, bytesPerSec: null, error: null, at: now }
    ]
    const d = { model: 'm', replicas: 3, fingerprint: 'f1' }
    const p = deploymentProgress(d, { actual: [{ nodeId: 'A', name: 'a', state: 'loaded' }], pending: ['B', 'E'], unplaceable: 0 }, rows, now)
    assert.equal(p.phase, 'transferring')
    assert.equal(p.placed, 1)
    assert.deepEqual(p.replicas.map(r => `${r.nodeId}:${r.phase}:${r.percent ?? '-'}`), ['E:pending:-', 'A:loaded:100', 'B:transferring:25'])
    assert.match(progressLine({ model: 'm', replicas: 3, group: 'g', status: { leader: null, lastError: null, actual: [] }, progress: p }), /^m: transferring 1\/3 · …E pending · a loaded · b \[#####-+\] 25\.0%/)
    const placed = deploymentProgress({ model: 'm', replicas: 1 }, { actual: [{ nodeId: 'A', name: 'a', state: 'loaded' }], pending: [], unplaceable: 0 }, [], now)
    assert.equal(placed.phase, 'placed')
    const failed = deploymentProgress({ model: 'm', replicas: 1 }, { actual: [], pending: [], unplaceable: 0 }, [{ ...rows[0], phase: 'failed', error: 'model_fingerprint_mismatch: no' }], now)
    assert.equal(failed.phase, 'failed')
    assert.equal(deploymentProgress({ model: 'm', replicas: 1 }, { actual: [], pending: [], unplaceable: 1 }, [], now).phase, 'unplaceable')
  })
})

describe('service files', () => {
  const spec: ServiceSpec = { name: 'shepherd-mesh', system: false, platform: 'linux', node: '/usr/bin/node', bin: '/opt/sm/bin/shepherd-mesh.js', startArgs: ['--models-dir', '/srv/my models', '--name', 'rig%1'], user: 'pi', home: '/home/pi' }

  it('a systemd unit runs node on the bin directly, stops with SIGTERM and quotes its words', () => {
    const unit = systemdUnit(spec)
    assert.match(unit, /^ExecStart=\/usr\/bin\/node \/opt\/sm\/bin\/shepherd-mesh\.js start --models-dir "\/srv\/my models" --name rig%%1$/m)
    assert.match(unit, /^KillSignal=SIGTERM$/m)
    assert.match(unit, /^WantedBy=default\.target$/m)
    assert.doesNotMatch(unit, /npx|npm/)
    const system = systemdUnit({ ...spec, system: true })
    assert.match(system, /^User=pi$/m)
    assert.match(system, /^WantedBy=multi-user\.target$/m)
  })

  it('a launchd plist lists the same program arguments, XML-escaped', () => {
    const plist = launchdPlist({ ...spec, platform: 'darwin', startArgs: ['--name', 'a&b'] })
    assert.match(plist, /<string>\/usr\/bin\/node<\/string>\n\s*<string>\/opt\/sm\/bin\/shepherd-mesh\.js<\/string>\n\s*<string>start<\/string>/)
    assert.match(plist, /<string>a&amp;b<\/string>/)
  })

  it('finds the npm process a node runs under (npx → sh → node)', () => {
    const procs: Record<number, { ppid: number, state: string, cmd: string }> = {
      30: { ppid: 20, state: 'S', cmd: 'sh -c shepherd-mesh start ' },
      20: { ppid: 10, state: 'S', cmd: 'npm exec shepherd-mesh start ' },
      10: { ppid: 1, state: 'S', cmd: '-bash ' }
    }
    assert.equal(npmAncestor(30, pid => procs[pid] ?? null), 20)
    assert.equal(npmAncestor(10, pid => procs[pid] ?? null), null)
  })
})
