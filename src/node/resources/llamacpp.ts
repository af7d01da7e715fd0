/**
 * Finds llama.cpp builds (`llama-server`) and reads what `--version` says about them: version,
 * build, commit, compiler, target, GPU backend and the devices the backend found.
 */
import { access, constants, realpath, stat } from 'node:fs/promises'
import { delimiter, join, resolve } from 'node:path'
import { createLogger, type Logger } from '../../logger.js'
import { execRunner, type ExecRunner } from './exec.js'
import type { LlamacppBackend, LlamacppBuild } from './types.js'

const MIB = 1024 * 1024

/** The binary looked for in configured dirs and on PATH. */
export const LLAMA_SERVER_BINARY = process.platform === 'win32' ? 'llama-server.exe' : 'llama-server'

const BACKEND_BY_NAME: Record<string, LlamacppBackend> = {
  cuda: 'cuda', rocm: 'rocm', hip: 'rocm', vulkan: 'vulkan', metal: 'metal', sycl: 'sycl', cpu: 'cpu'
}

type Device = LlamacppBuild['devices'][number]

/** `Device 0: NVIDIA GeForce GTX 1080, compute capability 6.1, VMM: yes[, VRAM: 8105 MiB]` (CUDA/ROCm). */
function parseCudaDevice (rest: string): Device {
  const parts = rest.split(/,\s*/)
  const device: Device = { name: parts[0].trim() }
  for (const p of parts.slice(1)) {
    const cc = /^compute capability\s+([\d.]+)/i.exec(p)
    if (cc !== null) device.computeCapability = cc[1]
    const gfx = /^(gfx[0-9a-f]+)/i.exec(p)
    if (gfx !== null) device.computeCapability = gfx[1]
    const vram = /^VRAM:\s*(\d+)\s*MiB/i.exec(p)
    if (vram !== null) device.vramBytes = Number(vram[1]) * MIB
  }
  return device
}

/**
 * Parses the output of `llama-server --version` (or any llama.cpp tool's), stdout and stderr
 * together. Returns null when the text has no `version:` line.
 * @param path the binary that printed it, recorded in the result
 */
export function parseLlamacppVersion (output: string, path: string): LlamacppBuild | null {
  const version = /^version:\s*(\S+)\s*\(([^)]*)\)/m.exec(output)
  if (version === null) return null
  let build: number | null = null
  let commit: string | null = null
  const inner = version[2]
  const newFormat = /build\s+(\d+)\s*,\s*commit\s+([0-9a-f]+)/i.exec(inner)
  if (newFormat !== null) {
    build = Number(newFormat[1])
    commit = newFormat[2]
  } else {
    commit = /^[0-9a-f]+$/i.test(inner.trim()) ? inner.trim() : null
    // The old format's version is the build number.
    if (/^\d+$/.test(version[1])) build = Number(version[1])
  }

  const built = /^built with (.+?) for (.+?)\s*$/m.exec(output)
  const compiler = built?.[1] ?? null
  const target = built?.[2] ?? null

  const devices: Device[] = []
  let backend: LlamacppBackend | null = null
  const found = /found \d+ (CUDA|ROCm|HIP|MUSA|SYCL) devices/i.exec(output)
  if (found !== null) backend = BACKEND_BY_NAME[found[1].toLowerCase()] ?? 'cuda'
  for (const m of output.matchAll(/^\s*Device \d+:\s*(.+)$/gm)) devices.push(parseCudaDevice(m[1]))

  if (/^ggml_vulkan:/m.test(output)) {
    backend ??= 'vulkan'
    // `ggml_vulkan: 0 = NVIDIA GeForce RTX 3060 (NVIDIA) | uma: 0 | ...`: the last parenthesis is the driver.
    for (const m of output.matchAll(/^ggml_vulkan:\s*\d+\s*=\s*(.+?)(?:\s+\([^()]*\))?\s*\|/gm)) devices.push({ name: m[1].trim() })
  }
  if (backend === null) {
    // Builds with dynamically loaded backends announce them instead.
    const loaded = [...output.matchAll(/load_backend: loaded (\w+) backend/gi)].map(m => BACKEND_BY_NAME[m[1].toLowerCase()])
    backend = loaded.find(b => b !== undefined && b !== 'cpu') ?? null
  }
  if (backend === null && /ggml_metal|\bMetal\b/.test(output)) backend = 'metal'
  if (backend === null && /ggml_sycl|\bSYCL\b/.test(output)) backend = 'sycl'
  if (backend === null) {
    // Metal builds list no devices on --version; an Apple-silicon macOS target means Metal.
    const t = target?.toLowerCase() ?? ''
    backend = /darwin|macos|apple/.test(t) && /arm64|aarch64/.test(t) ? 'metal' : 'cpu'
  }

  return { path, version: version[1], build, commit, backend, devices, compiler, target }
}

export interface FindLlamacppOptions {
  /** Also look for `llama-server` on PATH. Default true. */
  searchPath?: boolean
  /** Per-binary limit for `--version`; CUDA builds initialize the driver first. Default 10 s. */
  timeoutMs?: number
  exec?: ExecRunner
  /** PATH to search; defaults to process.env.PATH. */
  envPath?: string
  log?: Logger
}

const defaultLog = createLogger('resources:llamacpp')

async function isExecutableFile (path: string): Promise<boolean> {
  try {
    const st = await stat(path)
    if (!st.isFile()) return false
    await access(path, constants.X_OK)
    return true
  } catch {
    return false
  }
}

/** A configured path is the binary itself or a dir holding it (directly or under bin/). */
async function candidatesFor (path: string): Promise<string[]> {
  const abs = resolve(path)
  try {
    const st = await stat(abs)
    if (st.isFile()) return [abs]
    if (st.isDirectory()) return [join(abs, LLAMA_SERVER_BINARY), join(abs, 'bin', LLAMA_SERVER_BINARY)]
  } catch {}
  return []
}

/**
 * Runs `--version` on every llama-server in `paths` (binaries or dirs) and, unless disabled, on
 * PATH, and returns the builds that answered. The same binary reached twice is run once;
 * binaries that are missing, fail or print no version are skipped.
 */
export async function findLlamacppBuilds (paths: string[], opts: FindLlamacppOptions = {}): Promise<LlamacppBuild[]> {
  const exec = opts.exec ?? execRunner
  const log = opts.log ?? defaultLog
  const timeoutMs = opts.timeoutMs ?? 10_000

  const candidates: string[] = []
  for (const p of paths) candidates.push(...await candidatesFor(p))
  if (opts.searchPath ?? true) {
    for (const dir of (opts.envPath ?? process.env.PATH ?? '').split(delimiter)) {
      if (dir !== '') candidates.push(join(resolve(dir), LLAMA_SERVER_BINARY))
    }
  }

  const seen = new Set<string>()
  const builds: LlamacppBuild[] = []
  for (const candidate of candidates) {
    if (!await isExecutableFile(candidate)) continue
    let real: string
    try { real = await realpath(candidate) } catch { continue }
    if (seen.has(real)) continue
    seen.add(real)
    const r = await exec(candidate, ['--version'], { timeoutMs })
    const build = parseLlamacppVersion(`${r.stdout}\n${r.stderr}`, candidate)
    if (build === null) {
      log.warn('llama.cpp binary did not report a version', { path: candidate, exitCode: r.exitCode, errorCode: r.errorCode })
      continue
    }
    // Newer builds print no device lines on --version; --list-devices still names them.
    if (build.devices.length === 0) {
      const listed = await exec(candidate, ['--list-devices'], { timeoutMs })
      const found = parseLlamacppDeviceList(`${listed.stdout}\n${listed.stderr}`)
      if (found.devices.length > 0) {
        build.devices = found.devices
        if (build.backend === 'cpu' && found.backend != null) build.backend = found.backend
      }
    }
    builds.push(build)
  }
  return builds
}

const DEVICE_PREFIX: Array<[RegExp, LlamacppBuild['backend']]> = [[/^CUDA/i, 'cuda'], [/^ROCm|^HIP/i, 'rocm'], [/^Vulkan/i, 'vulkan'], [/^Metal|^MTL/i, 'metal'], [/^SYCL/i, 'sycl']]

/**
 * Parses `llama-server --list-devices`: lines such as
 * `  CUDA0: NVIDIA H100 80GB HBM3 (81079 MiB, 80552 MiB free)`.
 */
export function parseLlamacppDeviceList (text: string): { backend: LlamacppBuild['backend'] | null, devices: LlamacppBuild['devices'] } {
  const devices: LlamacppBuild['devices'] = []
  let backend: LlamacppBuild['backend'] | null = null
  for (const line of text.split(/\r?\n/)) {
    const m = /^\s*([A-Za-z]+)(\d+):\s+(.+?)\s*\((\d+) MiB,\s*(\d+) MiB free\)\s*$/.exec(line)
    if (m == null) continue
    const kind = DEVICE_PREFIX.find(([re]) => re.test(m[1]))?.[1]
    if (kind == null) continue
    backend ??= kind
    devices.push({ name: m[3], vramBytes: Number(m[4]) * 1024 * 1024 })
  }
  return { backend, devices }
}
