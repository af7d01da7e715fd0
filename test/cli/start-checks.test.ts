/**
 * Issue 15: settings that used to fail later fail at start, with one line and exit code 2; a
 * started node says what it is in one summary line; the smaller CLI fixes (help texts, doctor on
 * a missing dir, keygen's default path, status naming loaded models). Real CLI processes.
 */
import { after, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import fs from 'node:fs/promises'
import path from 'node:path'
import { createTinyModel } from '../support/tiny-model.js'
import { runCli, startNode, stopNode, tempDir, waitFor, type NodeProcess } from '../support/cluster.js'

const base = async (): Promise<string[]> => ['start', '--no-mdns', '--data-dir', await tempDir(), '--api-port', '0', '--listen', '/ip4/127.0.0.1/tcp/0']

/** The lines a failed start wrote (the warnings about flags aside). */
const problems = (err: string): string[] => err.trim().split('\n').filter(l => l !== '' && !l.includes('warning:'))

describe('start fails at start, not later', () => {
  it('an empty --api-key', async () => {
    const r = await runCli([...await base(), '--api-key', ''])
    assert.equal(r.code, 2, r.err)
    assert.deepEqual(problems(r.err), ['shepherd-mesh: an API key is empty (--api-key "", api.keys or SHEPHERD_API_KEYS): give a key or drop the option'])
  })

  it('a models dir that does not exist (and it is not created)', async () => {
    const missing = path.join(await tempDir(), 'typo', 'models')
    const r = await runCli([...await base(), '--models-dir', missing])
    assert.equal(r.code, 2, r.err)
    assert.deepEqual(problems(r.err), [`shepherd-mesh: models dir ${missing} does not exist (--models-dir / models.paths): create it or fix the path`])
    await assert.rejects(fs.stat(missing), /ENOENT/)
  })

  it('--engine llama-server with no build found', async () => {
    // PATH holds node only: no llama-server there, none at --llamacpp, none in an empty build cache.
    const r = await runCli([...await base(), '--engine', 'llama-server', '--llamacpp', await tempDir()], { PATH: path.dirname(process.execPath), SHEPHERD_CACHE: await tempDir() })
    assert.equal(r.code, 2, r.err)
    assert.match(problems(r.err)[0], /^shepherd-mesh: --engine llama-server: no llama-server build found on PATH or in /)
  })

  it('--gpu metal off macOS', async () => {
    const r = await runCli([...await base(), '--gpu', 'metal'])
    assert.equal(r.code, 2, r.err)
    assert.match(problems(r.err)[0], /--gpu metal: Metal exists on macOS only/)
  })

  it('an API key file that holds no key', async () => {
    const file = path.join(await tempDir(), 'keys')
    await fs.writeFile(file, '# none yet\n')
    const r = await runCli([...await base(), '--api-key-file', file])
    assert.equal(r.code, 2, r.err)
    assert.match(problems(r.err)[0], /the API key file .* holds no key/)
  })
})

describe('a started node: summary line, keys from a file, status', () => {
  let n: NodeProcess
  let keyFile: string
  after(async () => { if (n != null) await stopNode(n) })

  it('prints one summary line, takes keys from --api-key-file and warns about --api-key', async () => {
    const models = await tempDir()
    await createTinyModel(path.join(models, 'tiny.gguf'))
    keyFile = path.join(await tempDir(), 'keys')
    await fs.writeFile(keyFile, 'from-file\n', { mode: 0o600 })
    n = await startNode({ name: 'summary', timeoutMs: 90_000, args: ['--models-dir', models, '--engine', 'none', '--api-key-file', keyFile, '--api-key', 'from-flag'] })
    const err = n.stderr.join('')
    assert.match(err, /warning: --api-key on the command line: other local users may see it/)
    const summary = err.split('\n').filter(l => l.startsWith('shepherd-mesh: ready: '))
    assert.equal(summary.length, 1, err)
    assert.match(summary[0], new RegExp(`node summary \\(${n.id}\\) · API ${n.api.replace(/[.]/g, '\\.')} · p2p /ip4/127\\.0\\.0\\.1/tcp/${n.p2pPort}/p2p/${n.id} · mesh swarm-key · engine none · GPU auto: .* · models 1 \\(tiny\\) in ${models}$`))
    assert.ok(!err.includes('from-file') && !err.includes('from-flag'), 'keys never reach the log')
    assert.equal((await fetch(`${n.api}/api/node`)).status, 401)
    assert.equal((await fetch(`${n.api}/api/node`, { headers: { authorization: 'Bearer from-file' } })).status, 200)
    assert.equal((await fetch(`${n.api}/api/node`, { headers: { authorization: 'Bearer from-flag' } })).status, 200)
  })

  it('status names the models and which are loaded, and hints why there are no peers', async () => {
    const r = await runCli(['status'], { SHEPHERD_API: n.api, SHEPHERD_API_KEY: 'from-file' })
    assert.equal(r.code, 0, r.err)
    assert.match(r.out, /^loaded:\s+none$/m)
    assert.match(r.out, /^peers:\s+none$/m)
    assert.match(r.out, /^hint:\s+no peers: every node needs the same --swarm-key file/m)
  })

  it('stops on SIGTERM with exit code 0 and says so', async () => {
    const code = await stopNode(n, 'SIGTERM')
    assert.equal(code, 0)
    await waitFor('the stop line', () => n.stderr.join('').includes('shepherd-mesh: SIGTERM: leaving the mesh and stopping'), 2000)
  })
})

describe('smaller CLI fixes', () => {
  it('help texts: --version listed, start names no missing file and aligns long flags, deploy shows every flag', async () => {
    const main = await runCli(['--help'])
    assert.match(main.out, /-v, --version\s+print the version/)
    assert.match(main.out, /deployments\s+list deployments with their progress/)
    assert.match(main.out, /service\s+install/)
    const start = await runCli(['start', '--help'])
    assert.doesNotMatch(start.out, /node\.config\.yaml/)
    assert.match(start.out, /--command-results-retention-ms N {2,}how long/)
    for (const line of start.out.split('\n').filter(l => l.startsWith('  --'))) assert.match(line, /^ {2}--\S+( \S+)? {2,}\S/, `flag and help apart: ${line}`)
    assert.match(start.out, /--api-key-file VALUE\s+file of API keys/)
    const deploy = await runCli(['deploy', '--help'])
    for (const flag of ['--strategy S', '--gpu-required', '--min-vram-mb N', '--label k=v', '--wait', '--timeout T', '--fingerprint']) assert.ok(deploy.out.includes(flag), `deploy --help names ${flag}`)
    assert.equal((await runCli(['--version'])).code, 0)
  })

  it('doctor on a missing data dir says so and creates nothing', async () => {
    const dir = path.join(await tempDir(), 'not-there')
    const r = await runCli(['doctor', '--data-dir', dir])
    assert.equal(r.code, 1)
    assert.match(r.err, /no store at .*not-there\/store: the data dir does not exist/)
    await assert.rejects(fs.stat(dir), /ENOENT/)
  })

  it('keygen writes into the data dir by default, not the current directory', async () => {
    const home = await tempDir()
    const r = await runCli(['keygen'], { HOME: home })
    assert.equal(r.code, 0, r.err)
    const st = await fs.stat(path.join(home, '.shepherd-mesh', 'swarm.key'))
    assert.equal(st.mode & 0o777, 0o600)
    assert.match(r.out, /wrote .*\.shepherd-mesh\/swarm\.key/)
    const gitignore = await fs.readFile(path.join(path.dirname(path.dirname(new URL(import.meta.url).pathname)), '..', '.gitignore'), 'utf8')
    assert.match(gitignore, /^swarm\.key$/m)
  })
})
