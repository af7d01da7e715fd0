/**
 * run_llamacpp / stop_process: a signed command starts a real managed llama-server (built from the
 * llama.cpp source node-llama-cpp ships, cached by scripts/build-llama-server.sh) whose model the
 * mesh then serves; stop_process ends it, and only processes the node started can be stopped;
 * a kill -9 of the node takes its llama-server with it.
 */
import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import path from 'node:path'
import { execFile } from 'node:child_process'
import { promisify } from 'node:util'
import { createTinyModel } from '../support/tiny-model.js'
import { ROOT, getJson, startNode, stopNode, tempDir, waitFor, type NodeProcess } from '../support/cluster.js'

const run = promisify(execFile)
const alive = (pid: number): boolean => { try { process.kill(pid, 0); return true } catch { return false } }

async function command (api: string, type: string, payload: unknown): Promise<any> {
  const res = await fetch(`${api}/api/commands`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ target: 'self', type, payload }) })
  assert.equal(res.status, 200)
  return await res.json()
}

describe('run_llamacpp and stop_process with a real llama-server', () => {
  let n: NodeProcess
  before(async () => {
    const { stdout } = await run('bash', [path.join(ROOT, 'scripts', 'build-llama-server.sh')], { cwd: ROOT, maxBuffer: 64 * 1024 * 1024 })
    const binary = stdout.trim().split('\n').at(-1)!
    const models = await tempDir()
    await createTinyModel(path.join(models, 'tiny-chat.gguf'))
    n = await startNode({ name: 'proc', args: ['--engine', 'none', '--models-dir', models, '--llamacpp', binary, '--threads', '1'] })
  })
  after(async () => { await stopNode(n, 'SIGKILL') })

  it('starts llama-server for a model, serves it through the mesh API, and stops it', async () => {
    assert.equal((await getJson(`${n.api}/v1/models`)).data.length, 0, 'no engine serves the file yet')
    const started = await command(n.api, 'run_llamacpp', { model: 'tiny-chat', args: ['--batch-size', '256'] })
    assert.equal(started.status, 'ok', JSON.stringify(started))
    const { pid, processId } = started.result
    assert.ok(alive(pid), 'the llama-server process runs')
    assert.match(started.output.join('\n'), /llama-server for tiny-chat running/)
    await waitFor('the model served', async () => (await getJson(`${n.api}/v1/models`)).data.some((m: any) => m.id === 'tiny-chat' && m.state === 'loaded'), 5000)
    const emb = await fetch(`${n.api}/v1/embeddings`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ model: 'tiny-chat', input: 'hello' }) })
    assert.equal(emb.status, 200, await emb.clone().text())
    assert.equal(((await emb.json()) as any).data[0].embedding.length, 64)

    const refused = await command(n.api, 'stop_process', { pid: process.pid })
    assert.equal(refused.status, 'error')
    assert.equal(refused.error.code, 'process_not_found', 'a pid the node did not start is never signalled')
    assert.ok(alive(process.pid))

    const stopped = await command(n.api, 'stop_process', { processId })
    assert.equal(stopped.status, 'ok', JSON.stringify(stopped))
    await waitFor('llama-server gone', () => !alive(pid), 8000)
    assert.equal((await getJson(`${n.api}/v1/models`)).data.length, 0)
  })

  it('a real llama-server started by a command dies with a kill -9 of its node', async () => {
    const started = await command(n.api, 'run_llamacpp', { model: 'tiny-chat' })
    assert.equal(started.status, 'ok', JSON.stringify(started))
    const pid = started.result.pid as number
    assert.ok(alive(pid))
    await stopNode(n, 'SIGKILL')
    await waitFor(`llama-server ${pid} gone after its node was killed`, () => !alive(pid), 5000, 50)
  })
})
