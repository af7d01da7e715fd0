import assert from 'node:assert/strict'
import { chmod, mkdir, mkdtemp, rm, symlink, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, it } from 'node:test'
import type { ExecRunner } from '../../../src/node/resources/exec.js'
import { findLlamacppBuilds, parseLlamacppVersion } from '../../../src/node/resources/llamacpp.js'
import { gpuFixture } from './fixtures.js'

const MIB = 1024 * 1024
const BIN = '/opt/llama/llama-server'

describe('parseLlamacppVersion', () => {
  it('reads the CUDA 4xGTX1080 llama-server output', () => {
    assert.deepEqual(parseLlamacppVersion(gpuFixture('llama-server-version-cuda-4xGTX1080.txt'), BIN), {
      path: BIN,
      version: '7079',
      build: 7079,
      commit: '416e7c7f4',
      backend: 'cuda',
      devices: Array.from({ length: 4 }, () => ({ name: 'NVIDIA GeForce GTX 1080', computeCapability: '6.1' })),
      compiler: 'cc (Ubuntu 13.3.0-6ubuntu2~24.04) 13.3.0',
      target: 'x86_64-linux-gnu'
    })
  })

  it('reads the CUDA 1xGTX1080 output', () => {
    const b = parseLlamacppVersion(gpuFixture('llama-cli-version-cuda-1xGTX1080.txt'), BIN)
    assert.equal(b?.version, '5143')
    assert.equal(b?.build, 5143)
    assert.equal(b?.commit, 'b43d89e3')
    assert.equal(b?.backend, 'cuda')
    assert.deepEqual(b?.devices, [{ name: 'NVIDIA GeForce GTX 1080', computeCapability: '6.1' }])
    assert.equal(b?.target, 'x86_64-linux-gnu')
  })

  it('reads the ROCm output with per-device VRAM and gfx targets', () => {
    const b = parseLlamacppVersion(gpuFixture('llama-cli-version-rocm-2dev-RX9070-740M.txt'), BIN)
    assert.equal(b?.backend, 'rocm')
    assert.equal(b?.version, '8821')
    assert.equal(b?.commit, '4adac43f6')
    assert.deepEqual(b?.devices, [
      { name: 'AMD Radeon RX 9070', computeCapability: 'gfx1201', vramBytes: 16304 * MIB },
      { name: 'AMD Radeon 740M Graphics', computeCapability: 'gfx1103', vramBytes: 15594 * MIB }
    ])
    assert.equal(b?.compiler, 'GNU 15.2.1')
    assert.equal(b?.target, 'Linux x86_64')
  })

  it('reads both Vulkan outputs, dropping the driver name', () => {
    const rtx = parseLlamacppVersion(gpuFixture('llama-cli-version-vulkan-1xRTX3060.txt'), BIN)
    assert.equal(rtx?.backend, 'vulkan')
    assert.deepEqual(rtx?.devices, [{ name: 'NVIDIA GeForce RTX 3060' }])
    assert.equal(rtx?.build, 4641)
    const adreno = parseLlamacppVersion(gpuFixture('llama-cli-version-vulkan-android-adreno732.txt'), BIN)
    assert.equal(adreno?.backend, 'vulkan')
    assert.deepEqual(adreno?.devices, [{ name: 'Adreno (TM) 732' }])
    assert.equal(adreno?.compiler, 'clang version 21.1.4')
    assert.equal(adreno?.target, 'aarch64-unknown-linux-android24')
  })

  it('reads the macOS Homebrew output: an x86_64 darwin target with no devices is a CPU build', () => {
    const b = parseLlamacppVersion(gpuFixture('llama-cli-version-macos-homebrew.txt'), BIN)
    assert.equal(b?.version, '5970')
    assert.equal(b?.commit, '07a19e27')
    assert.equal(b?.backend, 'cpu')
    assert.deepEqual(b?.devices, [])
    assert.equal(b?.compiler, 'Apple clang version 16.0.0 (clang-1600.0.26.6)')
    assert.equal(b?.target, 'x86_64-apple-darwin23.6.0')
    // The same build line for Apple silicon means Metal.
    const arm = gpuFixture('llama-cli-version-macos-homebrew.txt').replace('x86_64-apple-darwin', 'arm64-apple-darwin')
    assert.equal(parseLlamacppVersion(arm, BIN)?.backend, 'metal')
  })

  it('reads the new version format (semver with build and commit)', () => {
    const b = parseLlamacppVersion(gpuFixture('llama-cli-version-newformat-0.3.0.txt'), BIN)
    assert.equal(b?.version, '0.3.0')
    assert.equal(b?.build, 10621)
    assert.equal(b?.commit, 'c1d0e7a00')
    assert.equal(b?.compiler, 'GNU 12.2.0')
    assert.equal(b?.target, 'Linux x86_64') // trailing space dropped
    assert.equal(b?.backend, 'cpu')
  })

  it('returns null for output without a version line', () => {
    assert.equal(parseLlamacppVersion(gpuFixture('nvidia-smi-no-driver.txt'), BIN), null)
    assert.equal(parseLlamacppVersion('', BIN), null)
  })
})

describe('findLlamacppBuilds', () => {
  let dir: string
  before(async () => { dir = await mkdtemp(join(tmpdir(), 'shepherd-llama-')) })
  after(async () => { await rm(dir, { recursive: true, force: true }) })

  /** A stand-in llama-server that prints a recorded --version output on stderr. */
  async function fakeServer (at: string, fixture: string | null, exitCode = 0): Promise<string> {
    await mkdir(at, { recursive: true })
    const path = join(at, 'llama-server')
    const body = fixture === null ? 'echo "error: unknown argument" >&2' : `cat <<'EOF' >&2\n${gpuFixture(fixture)}\nEOF`
    await writeFile(path, `#!/bin/sh\n${body}\nexit ${exitCode}\n`)
    await chmod(path, 0o755)
    return path
  }

  it('runs --version on configured files, dirs and PATH, once per real binary, skipping failures', async () => {
    const cuda = await fakeServer(join(dir, 'cuda'), 'llama-server-version-cuda-4xGTX1080.txt')
    const rocmDir = join(dir, 'rocm')
    await fakeServer(join(rocmDir, 'bin'), 'llama-cli-version-rocm-2dev-RX9070-740M.txt')
    const onPath = join(dir, 'pathdir')
    await fakeServer(onPath, 'llama-cli-version-vulkan-1xRTX3060.txt')
    const broken = join(dir, 'broken')
    await fakeServer(broken, null, 1)
    const aliasDir = join(dir, 'alias')
    await mkdir(aliasDir)
    await symlink(cuda, join(aliasDir, 'llama-server'))

    const builds = await findLlamacppBuilds([cuda, rocmDir, broken, aliasDir, join(dir, 'missing')], {
      envPath: [join(dir, 'nothing-here'), onPath, join(dir, 'cuda')].join(':'),
      log: { warn () {}, debug () {} } as never
    })
    assert.deepEqual(builds.map(b => [b.path, b.backend, b.version]), [
      [cuda, 'cuda', '7079'],
      [join(rocmDir, 'bin', 'llama-server'), 'rocm', '8821'],
      [join(onPath, 'llama-server'), 'vulkan', '4641']
    ])
    assert.equal(builds[0].devices.length, 4)
  })

  it('does not search PATH when told not to, and passes the timeout to the runner', async () => {
    const calls: Array<[string, readonly string[], number]> = []
    const exec: ExecRunner = async (file, args, o) => {
      calls.push([file, args, o.timeoutMs])
      return { stdout: '', stderr: gpuFixture('llama-cli-version-newformat-0.3.0.txt'), exitCode: 0 }
    }
    const path = await fakeServer(join(dir, 'only'), null)
    const builds = await findLlamacppBuilds([path], { searchPath: false, timeoutMs: 1234, exec, envPath: join(dir, 'cuda') })
    // No device lines on --version: the devices are asked for with --list-devices.
    assert.deepEqual(calls, [[path, ['--version'], 1234], [path, ['--list-devices'], 1234]])
    assert.equal(builds[0].version, '0.3.0')
  })

  it('takes the backend and devices from --list-devices when --version names none', async () => {
    const exec: ExecRunner = async (_file, args) => args[0] === '--version'
      ? { stdout: '', stderr: gpuFixture('llama-cli-version-newformat-0.3.0.txt'), exitCode: 0 }
      : { stdout: gpuFixture('llama-server-list-devices-cuda-1xH100.txt'), stderr: '', exitCode: 0 }
    const path = await fakeServer(join(dir, 'listed'), null)
    const [build] = await findLlamacppBuilds([path], { searchPath: false, exec })
    assert.equal(build.backend, 'cuda')
    assert.equal(build.devices[0].name, 'NVIDIA H100 80GB HBM3')
  })
})

describe('parseLlamacppDeviceList', () => {
  it('reads the CUDA device a recent build lists on the H100', async () => {
    const { readFile } = await import('node:fs/promises')
    const text = await readFile(new URL('../../fixtures/gpu/llama-server-list-devices-cuda-1xH100.txt', import.meta.url), 'utf8')
    const { parseLlamacppDeviceList } = await import('../../../src/node/resources/index.js')
    const res = parseLlamacppDeviceList(text)
    assert.equal(res.backend, 'cuda')
    assert.deepEqual(res.devices, [{ name: 'NVIDIA H100 80GB HBM3', vramBytes: 81079 * 1024 * 1024 }])
    assert.deepEqual(parseLlamacppDeviceList('Available devices:\n'), { backend: null, devices: [] })
  })
})
