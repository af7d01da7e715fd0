import assert from 'node:assert/strict'
import { chmod, mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, it } from 'node:test'
import { execRunner } from '../../../src/node/resources/exec.js'

describe('execRunner', () => {
  let dir: string
  before(async () => { dir = await mkdtemp(join(tmpdir(), 'shepherd-exec-')) })
  after(async () => { await rm(dir, { recursive: true, force: true }) })

  async function script (name: string, body: string): Promise<string> {
    const path = join(dir, name)
    await writeFile(path, `#!/bin/sh\n${body}\n`)
    await chmod(path, 0o755)
    return path
  }

  it('returns stdout, stderr and the exit code, also on failure', async () => {
    const path = await script('two-streams', 'echo out; echo err >&2; exit 3')
    assert.deepEqual(await execRunner(path, [], { timeoutMs: 5000 }), { stdout: 'out\n', stderr: 'err\n', exitCode: 3 })
    const okPath = await script('args', 'echo "$1|$2"')
    assert.deepEqual(await execRunner(okPath, ['a b', '$HOME'], { timeoutMs: 5000 }), { stdout: 'a b|$HOME\n', stderr: '', exitCode: 0 })
  })

  it('reports a missing binary as ENOENT without throwing', async () => {
    const r = await execRunner(join(dir, 'no-such-tool'), [], { timeoutMs: 5000 })
    assert.equal(r.errorCode, 'ENOENT')
    assert.equal(r.exitCode, null)
  })

  it('kills a binary that runs past the timeout', async () => {
    const path = await script('slow', 'echo started; exec sleep 10')
    const t0 = Date.now()
    const r = await execRunner(path, [], { timeoutMs: 200 })
    assert.equal(r.errorCode, 'ETIMEDOUT')
    assert.equal(r.stdout, 'started\n')
    assert.ok(Date.now() - t0 < 5000)
  })
})
