/**
 * Commands are bounded (issue 11 item 4), against real nodes over real HTTP: run_llamacpp's
 * child gets the node's flags (once each, loopback host) whatever the command adds, a cap on
 * processes started by commands answers `process_limit`, update_config logs what it changed, and
 * children die with their node when it is killed with SIGKILL: one started by a command, and
 * one started by the llama-server engine. A stand-in llama-server (test/support) makes starts
 * take milliseconds; the spawn path is the engine's own.
 */
import assert from 'node:assert/strict'
import path from 'node:path'
import { after, before, describe, it } from 'node:test'
import { fakeLlamaServerArgs, writeFakeLlamaServer } from '../support/fake-llama-server.js'
import { startNode, stopNode, tempDir, waitFor, type NodeProcess } from '../support/cluster.js'
import { createTinyModel } from '../support/tiny-model.js'

const alive = (pid: number): boolean => { try { process.kill(pid, 0); return true } catch { return false } }

async function command (api: string, type: string, payload: unknown): Promise<any> {
  const res = await fetch(`${api}/api/commands`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ target: 'self', type, payload }) })
  assert.equal(res.status, 200, await res.clone().text())
  return await res.json()
}

async function killed9 (n: NodeProcess): Promise<void> {
  await stopNode(n, 'SIGKILL')
}

describe('command bounds on a running node', () => {
  let models: string
  let binary: string
  const nodes: NodeProcess[] = []
  before(async () => {
    models = await tempDir()
    await createTinyModel(path.join(models, 'tiny-chat.gguf'))
    binary = await writeFakeLlamaServer(await tempDir())
  })
  after(async () => { for (const n of nodes) await stopNode(n, 'SIGKILL') })

  it('run_llamacpp: node flags win, the cap holds, update_config is logged, the child dies with a kill -9 of its node', async () => {
    const argsDir = await tempDir()
    const n = await startNode({ name: 'bounded', env: { FAKE_LLAMA_DIR: argsDir }, args: ['--engine', 'none', '--models-dir', models, '--llamacpp', binary, '--threads', '1', '--max-command-processes', '1'] })
    nodes.push(n)
    // A flag the node sizes never reaches the child: the payload is refused outright.
    const oversized = await command(n.api, 'run_llamacpp', { model: 'tiny-chat', args: ['--ctx-size', '999999999', '--parallel', '512'] })
    assert.equal(oversized.status, 'rejected', JSON.stringify(oversized))
    assert.equal(oversized.error.code, 'invalid_payload')
    assert.match(oversized.error.message, /chosen by the node/)

    const started = await command(n.api, 'run_llamacpp', { model: 'tiny-chat', args: ['--temp', '0.5'] })
    assert.equal(started.status, 'ok', JSON.stringify(started))
    const pid = started.result.pid as number
    assert.ok(alive(pid))
    const argv = (await fakeLlamaServerArgs(argsDir)).get(pid)!
    for (const flag of ['--model', '--host', '--port', '--threads', '--ctx-size', '--parallel']) assert.equal(argv.filter(a => a === flag).length, 1, flag)
    assert.equal(argv[argv.indexOf('--host') + 1], '127.0.0.1')

    const second = await command(n.api, 'run_llamacpp', { model: 'tiny-chat' })
    assert.equal(second.status, 'error', JSON.stringify(second))
    assert.equal(second.error.code, 'process_limit')

    const changed = await command(n.api, 'update_config', { key: 'maxQueue', value: 64 })
    assert.equal(changed.status, 'ok', JSON.stringify(changed))
    assert.deepEqual(changed.result, { key: 'maxQueue', value: 64, previous: 256 })
    await waitFor('the change logged', () => n.stderr.join('').split('\n').some(l => /config updated/.test(l) && /"setting":"maxQueue"/.test(l) && /"from":256/.test(l) && /"to":64/.test(l) && l.includes(n.id)), 5000)

    await killed9(n)
    await waitFor(`child ${pid} gone after its node was killed`, () => !alive(pid), 5000, 50)
  })

  it('a llama-server engine child dies with a kill -9 of its node', async () => {
    const argsDir = await tempDir()
    const n = await startNode({ name: 'engine', env: { FAKE_LLAMA_DIR: argsDir }, args: ['--engine', 'llama-server', '--models-dir', models, '--llamacpp', binary, '--threads', '1'] })
    nodes.push(n)
    await waitFor('the model listed', async () => {
      const res = await fetch(`${n.api}/v1/models`)
      return ((await res.json()) as any).data.some((m: any) => m.id === 'tiny-chat')
    }, 10_000)
    const loaded = await command(n.api, 'load_model', { model: 'tiny-chat' })
    assert.equal(loaded.status, 'ok', JSON.stringify(loaded))
    const pids = [...(await fakeLlamaServerArgs(argsDir)).keys()]
    assert.equal(pids.length, 1)
    assert.ok(alive(pids[0]))
    await killed9(n)
    await waitFor(`engine child ${pids[0]} gone after its node was killed`, () => !alive(pids[0]), 5000, 50)
  })
})
