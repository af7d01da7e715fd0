/**
 * Which local engine a node runs (`--engine auto` is the default): llama-server where a build is
 * found, else embedded; an explicit choice is kept. And where `auto` looks for the build script's
 * cached binaries, and that `createEngines` builds what the choice says.
 */
import assert from 'node:assert/strict'
import { mkdir, mkdtemp, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { describe, it } from 'node:test'
import { defaultOptions } from '../../src/config/options.js'
import { cachedLlamaServerDirs, chooseLocalEngine, createEngines } from '../../src/node/engine-setup.js'
import type { LlamacppBuild } from '../../src/node/resources/index.js'

const build = (over: Partial<LlamacppBuild> = {}): LlamacppBuild => ({
  path: '/opt/llama/llama-server', version: '6000', build: 6000, commit: 'abc', backend: 'cpu', devices: [], compiler: null, target: null, ...over
})

describe('chooseLocalEngine', () => {
  it('auto: llama-server when a build is found, saying which; embedded when none', () => {
    const found = chooseLocalEngine('auto', [build()])
    assert.equal(found.kind, 'llama-server')
    assert.match(found.reason, /^auto: llama-server 6000 \(cpu\) at \/opt\/llama\/llama-server$/)
    const none = chooseLocalEngine('auto', [])
    assert.equal(none.kind, 'embedded')
    assert.match(none.reason, /no llama-server build found/)
  })

  it('auto with only unusable builds (a backend outside the known order) falls back to embedded', () => {
    assert.equal(chooseLocalEngine('auto', [build({ backend: 'unknown' as LlamacppBuild['backend'] })]).kind, 'embedded')
  })

  it('an explicit engine is kept whatever was found', () => {
    assert.equal(chooseLocalEngine('embedded', [build()]).kind, 'embedded')
    assert.equal(chooseLocalEngine('llama-server', []).kind, 'llama-server')
    assert.equal(chooseLocalEngine('none', [build()]).kind, 'none')
  })
})

describe('createEngines', () => {
  const base = { ...defaultOptions(), upstreams: [] }
  it('builds the engine the choice names, with the parallel slots asked for', async () => {
    assert.equal(base.engine, 'auto', 'auto is the default')
    const deps = { modelFiles: () => [], builds: [build()] }
    const auto = createEngines({ ...base }, deps)
    assert.deepEqual(auto.map(e => e.kind), ['llama-server'])
    const fallback = createEngines({ ...base }, { ...deps, builds: [] })
    assert.deepEqual(fallback.map(e => e.kind), ['embedded'])
    assert.deepEqual(createEngines({ ...base, engine: 'embedded', parallel: 3 }, deps).map(e => e.kind), ['embedded'])
    assert.deepEqual(createEngines({ ...base, engine: 'none' }, deps), [])
    await Promise.all([...auto, ...fallback].map(async e => { await e.close() }))
  })
})

describe('cachedLlamaServerDirs', () => {
  it('lists the build cache entries under $SHEPHERD_CACHE/llama-server, newest name first; none when absent', async () => {
    const root = await mkdtemp(path.join(tmpdir(), 'shepherd-cache-'))
    assert.deepEqual(cachedLlamaServerDirs({ SHEPHERD_CACHE: root }), [])
    await mkdir(path.join(root, 'llama-server', 'aaaa'), { recursive: true })
    await mkdir(path.join(root, 'llama-server', 'aaaa-rpc1'), { recursive: true })
    await writeFile(path.join(root, 'llama-server', 'stray-file'), '')
    assert.deepEqual(cachedLlamaServerDirs({ SHEPHERD_CACHE: root }), [path.join(root, 'llama-server', 'aaaa-rpc1'), path.join(root, 'llama-server', 'aaaa')])
  })
})
