import { execFile } from 'node:child_process'
import { access, writeFile } from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import { createTinyModel } from './tiny-model.js'

export interface GpuProbeResult {
  ok: boolean
  /** The backend the probe ran on (`cuda`, `vulkan`, `metal`) or `cpu`. */
  backend: string | null
  detail: string
}

/**
 * Runs one real decode of a tiny model on `gpu` in a child process. A GPU build that the driver
 * cannot run (seen on an H100 with driver 580: node-llama-cpp 3.21.1's CUDA build ships only
 * PTX 9.1 for sm_90) aborts the whole process inside llama.cpp, with no exception to catch; in a
 * child that is an exit code, and the node falls back to the CPU instead of dying on its first
 * request. The child also warms the CUDA kernel cache (the first decode can take ~30 s).
 */
export async function probeGpu (gpu: string, opts: { timeoutMs?: number } = {}): Promise<GpuProbeResult> {
  const model = path.join(os.tmpdir(), `shepherd-mesh-gpu-probe-${process.getuid?.() ?? 0}.gguf`)
  try {
    await access(model)
  } catch {
    await createTinyModel(model)
  }
  // A script file, not `node -e`: node-llama-cpp re-runs its process arguments to test its binary.
  const script = path.join(os.tmpdir(), `shepherd-mesh-gpu-probe-${process.getuid?.() ?? 0}.mjs`)
  await writeFile(script, PROBE_SCRIPT)
  const lib = import.meta.resolve('node-llama-cpp')
  return await new Promise(resolve => {
    execFile(process.execPath, [script, lib, model, gpu], { timeout: opts.timeoutMs ?? 180_000, maxBuffer: 1024 * 1024 }, (err, stdout, stderr) => {
      const line = stdout.trim().split('\n').at(-1) ?? ''
      if (err == null && line.startsWith('probe-ok ')) {
        resolve({ ok: true, backend: line.slice('probe-ok '.length), detail: 'a test decode succeeded' })
        return
      }
      const why = (err as NodeJS.ErrnoException & { signal?: string, code?: number | string } | null)
      const tail = stderr.trim().split('\n').slice(-3).join(' | ')
      resolve({ ok: false, backend: null, detail: `the test decode failed (${why?.signal ?? `exit ${String(why?.code ?? '?')}`}): ${tail}`.slice(0, 800) })
    })
  })
}

/** argv: node-llama-cpp's URL, the model path, the gpu setting. Prints `probe-ok <backend>`. */
const PROBE_SCRIPT = `
const [url, modelPath, gpu] = process.argv.slice(2)
const { getLlama, LlamaCompletion, LlamaLogLevel } = await import(url)
const llama = await getLlama({ gpu: gpu === 'off' ? false : gpu, build: 'never', progressLogs: false, logLevel: LlamaLogLevel.error })
if (llama.gpu === false) { console.log('probe-ok cpu'); process.exit(0) }
const model = await llama.loadModel({ modelPath })
const context = await model.createContext({ contextSize: 128 })
await new LlamaCompletion({ contextSequence: context.getSequence() }).generateCompletion('hello', { maxTokens: 2 })
console.log('probe-ok ' + llama.gpu)
process.exit(0)
`
