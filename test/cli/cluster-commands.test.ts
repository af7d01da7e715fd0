/** The group, deployment and command CLI against a running node (a real process on loopback). */
import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import path from 'node:path'
import { createTinyModel } from '../support/tiny-model.js'
import { runCli, getJson, startNode, stopNode, tempDir, waitFor, type NodeProcess } from '../support/cluster.js'

const cli = runCli

describe('shepherd-mesh groups / deploy / undeploy / command / logs', () => {
  let n: NodeProcess
  before(async () => {
    const models = await tempDir()
    await createTinyModel(path.join(models, 'tiny.gguf'))
    n = await startNode({ name: 'cli-ops', timeoutMs: 90_000, args: ['--models-dir', models, '--threads', '1', '--api-key', 'sekret'] })
    await waitFor('leader of default', async () => (await (await fetch(`${n.api}/api/groups/default`, { headers: { authorization: 'Bearer sekret' } })).json() as any).leader === n.id, 8000)
  })
  after(async () => { await stopNode(n, 'SIGKILL') })
  const env = (): NodeJS.ProcessEnv => ({ SHEPHERD_API: n.api, SHEPHERD_API_KEY: 'sekret' })

  it('needs the API key, from SHEPHERD_API_KEY', async () => {
    const r = await cli(['groups'], { SHEPHERD_API: n.api, SHEPHERD_API_KEY: '' })
    assert.equal(r.code, 1)
    assert.match(r.err, /API key/)
  })

  it('groups prints the leader', async () => {
    const r = await cli(['groups'], env())
    assert.equal(r.code, 0, r.err)
    assert.match(r.out, /^GROUP\s+LEADER\s+TERM/m)
    assert.match(r.out, new RegExp(`default\\s+cli-ops \\(…${n.id.slice(-8)}\\)\\s+\\d+\\s+yes\\s+cli-ops`))
    const json = JSON.parse((await cli(['groups', '--json'], env())).out)
    assert.equal(json[0].leader, n.id)
  })

  it('deploy, then the replica is loaded; undeploy unloads it', async () => {
    const d = await cli(['deploy', 'tiny', '--replicas', '1', '--group', 'default'], env())
    assert.equal(d.code, 0, d.err)
    assert.match(d.out, /deployed tiny: 1 replica\(s\) in group default/)
    await waitFor('replica loaded', async () => {
      const res = await fetch(`${n.api}/api/deployments`, { headers: { authorization: 'Bearer sekret' } })
      const body = await res.json() as any
      return body.deployments[0]?.status.actual[0]?.state === 'loaded'
    }, 15_000)
    const bad = await cli(['deploy', 'tiny', '--replicas', 'many'], env())
    assert.equal(bad.code, 2)
    const u = await cli(['undeploy', 'tiny'], env())
    assert.equal(u.code, 0, u.err)
    const again = await cli(['undeploy', 'tiny'], env())
    assert.equal(again.code, 1)
    assert.match(again.err, /No deployment of 'tiny'/)
  })

  it('command runs a signed command and prints its output; logs shows recent lines', async () => {
    const c = await cli(['command', 'self', 'scan_models'], env())
    assert.equal(c.code, 0, c.err)
    assert.match(c.out, /"models":\[\{"id":"tiny"/)
    const bad = await cli(['command', 'self', 'load_model', '--payload', '{"model": 5}'], env())
    assert.equal(bad.code, 1)
    assert.match(bad.err, /invalid_payload/)
    const logs = await cli(['logs', 'self', '--lines', '50'], env())
    assert.equal(logs.code, 0, logs.err)
    assert.match(logs.out, /"component":"node:groups"|"msg":"claimed leadership"/)
    assert.ok(!logs.out.includes('sekret'))
    const audit = await getJson(`${n.api}/healthz`)
    assert.equal(audit.status, 'ok')
  })
})
