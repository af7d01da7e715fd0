/**
 * `spawnTied`: a child dies with its parent even when the parent is killed with SIGKILL (where
 * no exit hook runs), through setpriv's death signal and through the watchdog; and `kill`
 * signals the child's whole process group.
 */
import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { once } from 'node:events'
import { dirname, join, resolve } from 'node:path'
import { describe, it } from 'node:test'
import { fileURLToPath } from 'node:url'
import { hasSetprivPdeathsig, spawnTied } from '../../../src/node/engines/tied-child.js'

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..', '..')
const alive = (pid: number): boolean => { try { process.kill(pid, 0); return true } catch { return false } }

async function waitGone (pid: number, ms: number): Promise<boolean> {
  const deadline = Date.now() + ms
  while (Date.now() < deadline) {
    if (!alive(pid)) return true
    await new Promise(resolve => setTimeout(resolve, 50))
  }
  return !alive(pid)
}

async function parentWithChild (mode: string, dieNow = false): Promise<{ parent: ReturnType<typeof spawn>, pid: number, tie: string }> {
  const argv = [process.execPath, '--import', 'tsx', join(ROOT, 'test', 'support', 'tied-parent.ts'), mode]
  // Dying at once: pinned to one core, the parent (which runs on after fork) is killed before
  // the child is scheduled, so the child's own setup comes after its parent is gone.
  const [cmd, ...args] = dieNow ? ['taskset', '-c', '0', ...argv, 'die-now'] : argv
  const parent = spawn(cmd, args, { cwd: ROOT, stdio: ['ignore', 'pipe', 'inherit'] })
  let out = ''
  parent.stdout!.setEncoding('utf8')
  while (!/\n/.test(out)) {
    const [chunk] = await once(parent.stdout!, 'data') as [string]
    out += chunk
  }
  const m = /^pid (\d+) tie (\S+)/.exec(out)
  assert.ok(m != null, out)
  return { parent, pid: Number(m[1]), tie: m[2] }
}

describe('spawnTied', () => {
  it('finds setpriv --pdeathsig on this Linux machine (util-linux is installed)', () => {
    assert.equal(hasSetprivPdeathsig(), true)
  })

  for (const mode of ['setpriv', 'watchdog', 'auto'] as const) {
    it(`the child dies when its parent is killed with SIGKILL (${mode})`, async () => {
      const { parent, pid, tie } = await parentWithChild(mode)
      assert.equal(tie, mode === 'auto' ? 'setpriv' : mode)
      assert.ok(pid > 0 && alive(pid), 'the child runs')
      parent.kill('SIGKILL')
      await once(parent, 'exit')
      assert.ok(await waitGone(pid, 5000), `child ${pid} outlived its parent (${mode})`)
    })
  }

  for (const mode of ['setpriv', 'watchdog'] as const) {
    it(`the child dies when its parent is killed the instant after spawning it (${mode})`, async () => {
      // Repeated: the parent dies before the child has (usually) run a single instruction.
      for (let i = 0; i < 5; i++) {
        const { parent, pid } = await parentWithChild(mode, true)
        if (parent.exitCode === null && parent.signalCode === null) await once(parent, 'exit')
        assert.ok(await waitGone(pid, 5000), `child ${pid} outlived a parent killed at once (${mode}, try ${i + 1})`)
      }
    })
  }

  it('kill() signals the whole process group, grandchildren included', async () => {
    // The shell forks a grandchild `sleep` and waits on it.
    const t = spawnTied('sh', ['-c', 'sleep 300 & echo $!; wait'], { stdio: ['ignore', 'pipe', 'ignore'] })
    t.child.stdout!.setEncoding('utf8')
    const [line] = await once(t.child.stdout!, 'data') as [string]
    const grandchild = Number(line.trim())
    assert.ok(alive(grandchild))
    t.kill('SIGTERM')
    assert.ok(await waitGone(t.pid, 5000), 'the child is gone')
    assert.ok(await waitGone(grandchild, 5000), 'the grandchild went with its group')
  })
})
