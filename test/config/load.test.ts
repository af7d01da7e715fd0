import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import fs from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import { resolveOptions, defaultOptions } from '../../src/config/index.js'
import { ConfigError } from '../../src/errors.js'

async function tmpFile (text: string): Promise<string> {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'shepherd-cfg-'))
  const file = path.join(dir, 'node.config.yaml')
  await fs.writeFile(file, text)
  return file
}

describe('configuration', () => {
  it('defaults match the documented ones', async () => {
    const o = await resolveOptions({ env: {} })
    const d = defaultOptions()
    assert.equal(o.apiHost, '127.0.0.1')
    assert.equal(o.apiPort, 9190)
    assert.equal(o.heartbeatMs, 1000)
    assert.equal(o.mdns, true)
    assert.deepEqual(o.groups, ['default'])
    assert.equal(o.name, os.hostname())
    assert.equal(o.dataDir, d.dataDir)
  })

  it('applies defaults < file < env < flags', async () => {
    const file = await tmpFile('node:\n  name: from-file\n  groups: [a, b]\napi:\n  port: 1000\n  host: 0.0.0.0\nmembership:\n  heartbeat_ms: 500\n')
    const o = await resolveOptions({
      configFile: file,
      env: { SHEPHERD_API_PORT: '2000', SHEPHERD_NAME: 'from-env' },
      flags: { 'api-port': '3000', 'no-mdns': true, 'models-dir': ['/m1', '/m2'] }
    })
    assert.equal(o.name, 'from-env')
    assert.equal(o.apiPort, 3000)
    assert.equal(o.apiHost, '0.0.0.0')
    assert.equal(o.heartbeatMs, 500)
    assert.deepEqual(o.groups, ['a', 'b'])
    assert.equal(o.mdns, false)
    assert.deepEqual(o.modelsDirs, ['/m1', '/m2'])
  })

  it('accepts seed-style llamacpp path entries', async () => {
    const file = await tmpFile('llamacpp:\n  paths:\n    - path: /usr/local/bin/llama-server\n      backend: cuda\n')
    const o = await resolveOptions({ configFile: file, env: {} })
    assert.deepEqual(o.llamacppPaths, ['/usr/local/bin/llama-server'])
  })

  it('names the bad key of a config file', async () => {
    const unknown = await tmpFile('node:\n  nmae: typo\n')
    await assert.rejects(resolveOptions({ configFile: unknown, env: {} }), (err: unknown) => err instanceof ConfigError && /unknown key 'node.nmae'/.test(err.message))
    const badType = await tmpFile('api:\n  port: lots\n')
    await assert.rejects(resolveOptions({ configFile: badType, env: {} }), (err: unknown) => err instanceof ConfigError && /'api.port'/.test(err.message) && err.param === 'api.port')
    const badYaml = await tmpFile('node: [unclosed\n')
    await assert.rejects(resolveOptions({ configFile: badYaml, env: {} }), /not valid YAML/)
    await assert.rejects(resolveOptions({ configFile: '/nonexistent/x.yaml', env: {} }), /cannot read config file/)
  })

  it('rejects inconsistent timings and bad env values', async () => {
    await assert.rejects(resolveOptions({ env: {}, flags: { 'suspect-after-ms': '500', 'heartbeat-ms': '1000' } }), /suspect_after_ms must exceed/)
    await assert.rejects(resolveOptions({ env: { SHEPHERD_MDNS: 'maybe' } }), /SHEPHERD_MDNS: expected true or false/)
  })
})

describe('README', () => {
  it('its configuration example is a valid config file', async () => {
    const readme = await fs.readFile(new URL('../../README.md', import.meta.url), 'utf8')
    const yaml = readme.split('```yaml')[1].split('```')[0]
    const file = await tmpFile(yaml)
    const o = await resolveOptions({ configFile: file, env: {} })
    assert.equal(o.apiPort, 9190)
    assert.equal(o.engine, 'embedded')
  })
})
