import { spawn, type ChildProcess } from 'node:child_process'
import fs from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..')
/** The CLI entry run from source (no build step in the test loop). */
export const CLI = path.join(ROOT, 'src', 'cli', 'run.ts')
/** The compiled CLI (`npm run build`), what `npx shepherd-mesh` runs. */
export const BUILT_BIN = path.join(ROOT, 'bin', 'shepherd-mesh.js')

export interface NodeProcess {
  name: string
  child: ChildProcess
  id: string
  api: string
  dataDir: string
  p2pPort: number
  stdout: string[]
  stderr: string[]
}

/** Returns `n` free TCP ports on loopback. */
export async function freePorts (n: number): Promise<number[]> {
  const net = await import('node:net')
  const servers = await Promise.all(Array.from({ length: n }, async () => await new Promise<import('node:net').Server>((resolve, reject) => {
    const s = net.createServer()
    s.once('error', reject)
    s.listen(0, '127.0.0.1', () => { resolve(s) })
  })))
  const ports = servers.map(s => (s.address() as { port: number }).port)
  await Promise.all(servers.map(async s => await new Promise(resolve => s.close(resolve))))
  return ports
}

export async function tempDir (prefix = 'shepherd-test-'): Promise<string> {
  return await fs.mkdtemp(path.join(os.tmpdir(), prefix))
}

/**
 * How a test's nodes become members of one mesh (issue 11 item 1):
 * - `swarm-key` (default): every node of this test process gets one shared swarm key file, so
 *   the nodes of one test form one private mesh and are members of each other (a documented
 *   unattended admission mode), as every multi-node test expects;
 * - `admission`: the product default, no key: each node founds its own mesh, newcomers are
 *   pending until admitted;
 * - `open`: `--open` (labs).
 * A test that passes its own `--swarm-key` or `--open` in `args` gets exactly that.
 */
export type MembershipHarness = 'swarm-key' | 'admission' | 'open'

let sharedKeyFile: Promise<string> | undefined

/** The swarm key file the nodes of this test process share (created once, mode 0600). */
export async function sharedSwarmKeyFile (): Promise<string> {
  sharedKeyFile ??= (async () => {
    const { generateSwarmKey } = await import('../../src/p2p/swarm-key.js')
    const file = path.join(await tempDir('shepherd-test-key-'), 'swarm.key')
    await fs.writeFile(file, generateSwarmKey(), { mode: 0o600 })
    return file
  })()
  return await sharedKeyFile
}

/** The `start` flags that give a node `mode` membership (none when the args choose already). */
export async function membershipArgs (mode: MembershipHarness, args: string[] = []): Promise<string[]> {
  if (args.includes('--swarm-key') || args.includes('--open')) return []
  if (mode === 'open') return ['--open']
  if (mode === 'swarm-key') return ['--swarm-key', await sharedSwarmKeyFile()]
  return []
}

/**
 * Every node child this test process started and has not seen exit. They are SIGKILLed when the
 * process exits (the runner's `--test-force-exit` ends a file whose hook failed before its
 * `after` could stop them), so a failed suite neither hangs its file nor leaves nodes running.
 */
const liveChildren = new Set<ChildProcess>()
process.on('exit', () => {
  for (const child of liveChildren) {
    try { child.kill('SIGKILL') } catch {}
  }
})

/** A port this harness picked was taken between picking and binding (loopback's ephemeral range is shared). */
const PORT_RACE = /already in use/

/**
 * Starts `shepherd-mesh start` as a child process on loopback with mDNS off, and waits for its
 * ready line. Extra args are appended (e.g. `--bootstrap`). Nodes share this test's swarm key
 * unless `membership` says otherwise. The engine is `embedded` unless the args name one: the
 * default (`auto`) would pick llama-server wherever a build is cached, and tests say which
 * engine they exercise. Ports picked here are picked again when another process took one first.
 */
export async function startNode (opts: { name: string, dataDir?: string, apiPort?: number, p2pPort?: number, args?: string[], env?: NodeJS.ProcessEnv, timeoutMs?: number, membership?: MembershipHarness, built?: boolean }): Promise<NodeProcess> {
  const dataDir = opts.dataDir ?? await tempDir()
  const ownPorts = opts.apiPort == null || opts.p2pPort == null
  for (let attempt = 1; ; attempt++) {
    try {
      return await startNodeOnce(opts, dataDir)
    } catch (err) {
      if (!ownPorts || attempt >= 4 || !PORT_RACE.test(String(err))) throw err
    }
  }
}

async function startNodeOnce (opts: Parameters<typeof startNode>[0], dataDir: string): Promise<NodeProcess> {
  const [apiPort, p2pPort] = opts.apiPort != null && opts.p2pPort != null ? [opts.apiPort, opts.p2pPort] : await freePorts(2)
  const args = [
    // `built`: the compiled package, as `npx shepherd-mesh` runs it (benches that measure a node's
    // own cost: under tsx an idle node spends ~5 % of a core more, on source maps and its loader).
    ...(opts.built === true ? [BUILT_BIN] : ['--import', 'tsx', CLI]), 'start',
    '--no-mdns',
    '--name', opts.name,
    '--data-dir', dataDir,
    '--api-host', '127.0.0.1',
    '--api-port', String(apiPort),
    '--listen', `/ip4/127.0.0.1/tcp/${p2pPort}`,
    ...await membershipArgs(opts.membership ?? 'swarm-key', opts.args),
    ...(opts.args?.includes('--engine') === true ? [] : ['--engine', 'embedded']),
    ...(opts.args ?? [])
  ]
  const child = spawn(process.execPath, args, { cwd: ROOT, env: { ...process.env, ...opts.env }, stdio: ['ignore', 'pipe', 'pipe'] })
  liveChildren.add(child)
  child.once('exit', () => { liveChildren.delete(child) })
  const stdout: string[] = []
  const stderr: string[] = []
  child.stderr.setEncoding('utf8').on('data', (d: string) => stderr.push(d))
  const ready = await new Promise<{ id: string, api: string }>((resolve, reject) => {
    const timer = setTimeout(() => {
      child.kill('SIGKILL')
      reject(new Error(`node ${opts.name} not ready in time; stderr: ${stderr.join('')}`))
    }, opts.timeoutMs ?? 20_000)
    let buf = ''
    child.stdout.setEncoding('utf8').on('data', (d: string) => {
      stdout.push(d)
      buf += d
      const m = /^shepherd-mesh (\S+) api=(\S+)$/m.exec(buf)
      if (m != null) { clearTimeout(timer); resolve({ id: m[1], api: m[2] }) }
    })
    child.once('exit', code => { clearTimeout(timer); reject(new Error(`node ${opts.name} exited with ${code}; stderr: ${stderr.join('')}`)) })
  })
  return { name: opts.name, child, dataDir, p2pPort, stdout, stderr, ...ready }
}

export async function stopNode (n: NodeProcess, signal: NodeJS.Signals = 'SIGTERM'): Promise<number | null> {
  if (n.child.exitCode != null || n.child.signalCode != null) return n.child.exitCode
  return await new Promise(resolve => {
    n.child.once('exit', code => { resolve(code) })
    n.child.kill(signal)
  })
}

export async function getJson<T = any> (url: string): Promise<T> {
  const res = await fetch(url, { signal: AbortSignal.timeout(5000) })
  if (!res.ok) throw new Error(`${url}: ${res.status} ${await res.text()}`)
  return await res.json() as T
}

/** Polls `check` until it returns a truthy value or the time runs out; returns the elapsed ms. */
export async function waitFor<T> (what: string, check: () => Promise<T | undefined | false | null> | T | undefined | false | null, timeoutMs: number, everyMs = 25): Promise<{ value: T, ms: number }> {
  const start = performance.now()
  let last: unknown
  while (performance.now() - start < timeoutMs) {
    try {
      const v = await check()
      if (v != null && v !== false) return { value: v as T, ms: performance.now() - start }
    } catch (err) {
      last = err
    }
    await new Promise(resolve => setTimeout(resolve, everyMs))
  }
  throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${last != null ? `: ${String(last)}` : ''}`)
}

/** Peer status of `id` as seen by the node at `api`. */
export async function statusOf (api: string, id: string): Promise<string | undefined> {
  const { peers } = await getJson<{ peers: Array<{ id: string, status: string }> }>(`${api}/api/peers`)
  return peers.find(p => p.id === id)?.status
}

/** Runs the CLI from source (`shepherd-mesh ARGS`) and collects its exit code and output. */
export async function runCli (args: string[], env: NodeJS.ProcessEnv = {}): Promise<{ code: number | null, out: string, err: string }> {
  const { spawn: spawnChild } = await import('node:child_process')
  return await new Promise(resolve => {
    const child = spawnChild(process.execPath, ['--import', 'tsx', CLI, ...args], { cwd: ROOT, env: { ...process.env, ...env } })
    let out = ''
    let err = ''
    child.stdout.on('data', d => { out += String(d) })
    child.stderr.on('data', d => { err += String(d) })
    child.on('exit', code => { resolve({ code, out, err }) })
  })
}
