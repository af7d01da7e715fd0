/**
 * Issue 15 item 3, the node as a service: SIGTERM to the node stops it cleanly (exit 0), with its
 * llama-server children, and frees its ports; SIGTERM to the `npx` (npm exec) process it runs
 * under stops it too; `service install --print` writes a valid unit that runs node on this bin.
 */
import { after, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { spawn, spawnSync } from 'node:child_process'
import fs from 'node:fs/promises'
import net from 'node:net'
import path from 'node:path'
import { fakeLlamaServerArgs, writeFakeLlamaServer } from '../support/fake-llama-server.js'
import { CLI, ROOT, freePorts, runCli, sharedSwarmKeyFile, startNode, stopNode, tempDir, waitFor, type NodeProcess } from '../support/cluster.js'
import { createTinyModel } from '../support/tiny-model.js'
import { UpstreamStandin } from '../support/upstream-standin.js'

const alive = (pid: number): boolean => { try { process.kill(pid, 0); return true } catch { return false } }

/** Whether `port` can be bound on loopback now (the node let it go). */
async function bindable (port: number): Promise<boolean> {
  return await new Promise(resolve => {
    const s = net.createServer()
    s.once('error', () => { resolve(false) })
    s.listen(port, '127.0.0.1', () => { s.close(() => { resolve(true) }) })
  })
}

describe('shepherd-mesh as a service', () => {
  const nodes: NodeProcess[] = []
  after(async () => { await Promise.all(nodes.map(async n => await stopNode(n, 'SIGKILL'))) })

  it('SIGTERM to the node: it leaves cleanly, exit code 0, its llama-server child stops and its ports are free', async () => {
    const models = await tempDir()
    await createTinyModel(path.join(models, 'tiny-chat.gguf'))
    const binary = await writeFakeLlamaServer(await tempDir())
    const argsDir = await tempDir()
    const [apiPort, p2pPort] = await freePorts(2)
    const n = await startNode({ name: 'svc', timeoutMs: 90_000, apiPort, p2pPort, env: { FAKE_LLAMA_DIR: argsDir }, args: ['--engine', 'llama-server', '--models-dir', models, '--llamacpp', binary, '--threads', '1'] })
    nodes.push(n)
    const res = await fetch(`${n.api}/api/commands`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ target: 'self', type: 'load_model', payload: { model: 'tiny-chat' } }) })
    assert.equal((await res.json() as any).status, 'ok')
    const [child] = [...(await fakeLlamaServerArgs(argsDir)).keys()]
    assert.ok(child != null && alive(child), 'the llama-server child runs')
    assert.equal(await bindable(apiPort), false)
    assert.equal(await stopNode(n, 'SIGTERM'), 0)
    assert.match(n.stderr.join(''), /SIGTERM: leaving the mesh and stopping/)
    await waitFor(`child ${child} stopped with its node`, () => !alive(child), 5000, 50)
    assert.equal(await bindable(apiPort), true, 'API port free')
    assert.equal(await bindable(p2pPort), true, 'p2p port free')
  })

  it('a node stopped mid-stream ends the stream with an error event, not a silent cut', async () => {
    const upstream = await UpstreamStandin.start({ models: ['slow-chat'], chunkDelayMs: 150 })
    try {
      const n = await startNode({ name: 'svc-stream', timeoutMs: 90_000, args: ['--engine', 'none', '--upstream', upstream.url] })
      nodes.push(n)
      await waitFor('the upstream model listed', async () => ((await (await fetch(`${n.api}/v1/models`)).json()) as any).data.some((m: any) => m.id === 'slow-chat'), 15_000)
      const res = await fetch(`${n.api}/v1/chat/completions`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ model: 'slow-chat', stream: true, messages: [{ role: 'user', content: Array.from({ length: 200 }, (_, i) => `word${i}`).join(' ') }] })
      })
      assert.equal(res.status, 200)
      let text = ''
      const reader = (res.body as ReadableStream<Uint8Array>).getReader()
      while (!text.includes('word1')) text += Buffer.from((await reader.read()).value ?? []).toString('utf8')
      void stopNode(n, 'SIGTERM')
      for (;;) {
        const { value, done } = await reader.read()
        if (done) break
        text += Buffer.from(value).toString('utf8')
      }
      assert.match(text, /event: error\ndata: \{"type":"error","error":\{"message":"The node answering this request is shutting down","type":"server_error","param":null,"code":"node_stopping"\}/)
      assert.ok(!text.includes('[DONE]'), 'a cut answer is not marked done')
    } finally {
      await upstream.close()
    }
  })

  it('SIGTERM to the npx process (npm exec) stops the node it started', async () => {
    const [apiPort, p2pPort] = await freePorts(2)
    // `npm exec -- node ...` is what `npx shepherd-mesh` runs (npm → sh → node, npm_command=exec).
    const npm = spawn('npm', ['exec', '--offline', '--', process.execPath, '--import', 'tsx', CLI, 'start', '--no-mdns', '--engine', 'none', '--data-dir', await tempDir(),
      '--api-port', String(apiPort), '--listen', `/ip4/127.0.0.1/tcp/${p2pPort}`, '--swarm-key', await sharedSwarmKeyFile()], { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] })
    let out = ''
    let err = ''
    npm.stdout.on('data', d => { out += String(d) })
    npm.stderr.on('data', d => { err += String(d) })
    try {
      await waitFor('the node under npx is ready', () => /api=http/.test(out), 120_000, 100)
      assert.equal((await fetch(`http://127.0.0.1:${apiPort}/healthz`)).status, 200)
      npm.kill('SIGTERM')
      // npm does not pass SIGTERM on: the node notices npm is gone and stops cleanly.
      await waitFor('the API port freed', async () => await bindable(apiPort), 15_000, 100)
      await waitFor('the p2p port freed', async () => await bindable(p2pPort), 5000, 100)
      await assert.rejects(fetch(`http://127.0.0.1:${apiPort}/healthz`, { signal: AbortSignal.timeout(2000) }))
    } finally {
      if (npm.exitCode == null) npm.kill('SIGKILL')
    }
    // Whatever npm printed, the node's own stop line is there only when npm let it through.
    assert.ok(!/unexpected error/.test(err), err)
  })

  it('service install --print: a valid systemd unit that runs node on this bin; keys on its command line refused', async () => {
    const r = await runCli(['service', 'install', '--print', '--', '--models-dir', '/srv/models', '--api-key-file', '/etc/shepherd-mesh/keys'])
    assert.equal(r.code, 0, r.err)
    const exec = /^ExecStart=(.*)$/m.exec(r.out)?.[1]
    assert.ok(exec != null, r.out)
    const words = exec.split(' ')
    assert.equal(words[0], process.execPath)
    assert.equal(words[1], path.join(ROOT, 'bin', 'shepherd-mesh.js'))
    await fs.access(words[1])
    assert.deepEqual(words.slice(2), ['start', '--models-dir', '/srv/models', '--api-key-file', '/etc/shepherd-mesh/keys'])
    for (const line of ['[Unit]', '[Service]', '[Install]', 'KillSignal=SIGTERM', 'Restart=on-failure', 'WantedBy=default.target']) assert.ok(r.out.split('\n').includes(line), `unit has ${line}`)
    // systemd's own checker, where this machine has it (CI does): the unit must parse and its binary exist.
    const file = path.join(await tempDir(), 'shepherd-mesh.service')
    await fs.writeFile(file, r.out)
    const verify = spawnSync('systemd-analyze', ['verify', file], { encoding: 'utf8' })
    if (verify.error == null) assert.equal(verify.status, 0, `systemd-analyze verify: ${verify.stderr}`)
    const secret = await runCli(['service', 'install', '--print', '--', '--api-key', 'k'])
    assert.equal(secret.code, 2)
    assert.match(secret.err, /--api-key would be readable in the service file/)
    const mac = await runCli(['service', 'install', '--print', '--platform', 'darwin'])
    assert.match(mac.out, /<key>ProgramArguments<\/key>/)
  })
})
