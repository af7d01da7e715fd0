/**
 * Runs the embedded engine (node-llama-cpp) and the GPU detection on the machine it is on, and
 * prints one JSON report: which GPU node-llama-cpp sees, load times, tokens per second at
 * temperature 0 and embeddings, once with `gpu: 'cuda'` and once with `gpu: 'off'`, for
 * synthetic models from test/support/tiny-model.ts.
 *
 * Here: `node --import tsx scripts/device/embedded-gpu.mjs [--gpus cuda,off] [--embd 64,1024,4096]
 * [--tokens 128] [--only engine|resources|all] [--full-vectors yes]`. On a device machine it runs
 * as one esbuild bundle (scripts/device/pack.sh, device-run.sh), since tsx and TypeScript don't
 * travel there; docs/GPU.md records what it showed on an H100.
 *
 * It reads two private members of EmbeddedEngine (`llama()`, `models`) to report what
 * node-llama-cpp chose; a rename there shows up here as a TypeError, not a wrong number.
 */
import { mkdtempSync, rmSync, statSync } from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { execFileSync } from 'node:child_process'
import { EmbeddedEngine } from '../../src/node/engines/embedded.ts'
import { detectGpus, ResourceMonitor, parseNvidiaSmiCsv, parseNvidiaSmiXml, NVIDIA_SMI_ARGS, NVIDIA_SMI_XML_ARGS } from '../../src/node/resources/index.ts'
import { createTinyModel } from '../../test/support/tiny-model.ts'

function arg (name, fallback) {
  const i = process.argv.indexOf(`--${name}`)
  return i >= 0 ? process.argv[i + 1] : fallback
}
const gpus = arg('gpus', 'cuda,off').split(',')
const embds = arg('embd', '64,1024,4096').split(',').map(Number)
const maxTokens = Number(arg('tokens', '128'))
const only = arg('only', 'all') // 'engine' | 'resources' | 'all'

const report = { host: { hostname: os.hostname(), cpus: os.cpus()[0]?.model, cores: os.cpus().length, node: process.version }, models: [], runs: [] }
const say = (...a) => { console.error(`[${new Date().toISOString()}]`, ...a) }

function sh (cmd, args) {
  try {
    return execFileSync(cmd, args, { encoding: 'utf8', timeout: 10_000 })
  } catch (err) {
    return `ERROR ${err.message}`
  }
}

async function resources () {
  const out = {}
  out.nvidiaSmiRaw = sh('nvidia-smi', NVIDIA_SMI_ARGS)
  out.nvidiaSmiRawParsed = parseNvidiaSmiCsv(out.nvidiaSmiRaw)
  out.nvidiaSmiCheck = sh('nvidia-smi', ['--query-gpu=name,memory.total,memory.used,driver_version,uuid', '--format=csv'])
  // The XML report is the fallback path for old drivers; parse this machine's too.
  out.nvidiaSmiXmlParsed = parseNvidiaSmiXml(sh('nvidia-smi', NVIDIA_SMI_XML_ARGS))
  out.detectGpus = await detectGpus()
  const dataDir = mkdtempSync(path.join(os.tmpdir(), 'shepherd-monitor-'))
  const monitor = new ResourceMonitor({ dataDir, searchPath: true })
  await monitor.refresh()
  out.monitorSnapshot = monitor.snapshot()
  out.monitorGpuReasons = monitor.gpuReasons()
  monitor.stop()
  rmSync(dataDir, { recursive: true, force: true })
  return out
}

function firstDims (v, n = 6) { return Array.from(v.slice(0, n), x => Number(x.toFixed(6))) }

async function runEngine (gpu, dir, names) {
  const run = { gpu, models: [] }
  const engine = new EmbeddedEngine({ modelsDirs: [dir], gpu, keepAliveMs: Infinity, maxSequences: 1 })
  try {
    let t = performance.now()
    // The engine's own getLlama() call: the same instance it loads models with.
    const llama = await engine.llama()
    run.getLlamaMs = Math.round(performance.now() - t)
    run.llama = {
      gpu: llama.gpu,
      supportsGpuOffloading: llama.supportsGpuOffloading,
      gpuDeviceNames: await llama.getGpuDeviceNames(),
      vramState: await llama.getVramState(),
      cpuMathCores: llama.cpuMathCores,
      maxThreads: llama.maxThreads,
      buildType: llama.buildType,
      llamaCppRelease: llama.llamaCppRelease
    }
    say(gpu, 'llama', JSON.stringify(run.llama))
    for (const name of names) {
      const m = { name }
      try {
        t = performance.now()
        await engine.load(name)
        m.loadMs = Math.round(performance.now() - t)
        const lm = engine.models.get(name).loaded
        m.gpuLayers = lm.model.gpuLayers
        m.modelSize = lm.model.size
        m.contextSize = lm.context.contextSize
        m.vramAfterLoad = await llama.getVramState()
        const body = { model: name, prompt: 'the house of the', temperature: 0, max_tokens: maxTokens }
        // Warm-up: the first evaluation allocates compute buffers and, on a GPU without SASS in
        // the build (an H100 with node-llama-cpp 3.21), JIT-compiles the kernels' PTX.
        t = performance.now()
        await engine.completion({ ...body, max_tokens: 8 })
        m.warmupMs = Math.round(performance.now() - t)
        const timings = []
        let res
        for (let i = 0; i < 3; i++) {
          t = performance.now()
          res = await engine.completion(body)
          timings.push(performance.now() - t)
        }
        const best = Math.min(...timings)
        m.completion = {
          text: res.choices[0].text,
          finishReason: res.choices[0].finish_reason,
          usage: res.usage,
          msRuns: timings.map(x => Math.round(x)),
          tokensPerSecondBest: Number((res.usage.completion_tokens / (best / 1000)).toFixed(1))
        }
        const chat = await engine.chat({ model: name, messages: [{ role: 'user', content: 'hello world' }], temperature: 0, max_tokens: 24 })
        m.chat = { text: chat.choices[0].message.content, usage: chat.usage }
        t = performance.now()
        const emb = await engine.embeddings({ model: name, input: ['hello world', 'the house of the father'] })
        m.embeddings = {
          ms: Math.round(performance.now() - t),
          dims: emb.data[0].embedding.length,
          vectors: emb.data.map(d => d.embedding)
        }
        say('result', gpu, JSON.stringify({ ...m, embeddings: { ms: m.embeddings.ms, dims: m.embeddings.dims } }))
        say(gpu, name, 'load', m.loadMs, 'ms', 'gpuLayers', m.gpuLayers, 'tok/s', m.completion.tokensPerSecondBest, 'tokens', res.usage.completion_tokens)
        await engine.unload(name)
      } catch (err) {
        m.error = String(err?.stack ?? err)
        say(gpu, name, 'ERROR', m.error)
      }
      run.models.push(m)
    }
  } catch (err) {
    run.error = String(err?.stack ?? err)
    say(gpu, 'ERROR', run.error)
  } finally {
    await engine.close()
  }
  return run
}

function cosine (a, b) {
  let d = 0; let na = 0; let nb = 0
  for (let i = 0; i < a.length; i++) { d += a[i] * b[i]; na += a[i] * a[i]; nb += b[i] * b[i] }
  return d / Math.sqrt(na * nb)
}

function compare (runs) {
  const [a, b] = runs
  if (a === undefined || b === undefined) return []
  return a.models.map(ma => {
    const mb = b.models.find(x => x.name === ma.name)
    if (ma.completion === undefined || mb?.completion === undefined) return { name: ma.name, comparable: false }
    return {
      name: ma.name,
      completionTextEqual: ma.completion.text === mb.completion.text,
      chatTextEqual: ma.chat.text === mb.chat.text,
      embeddingCosine: ma.embeddings.vectors.map((v, i) => Number(cosine(v, mb.embeddings.vectors[i]).toFixed(8))),
      embeddingMaxAbsDiff: Number(Math.max(...ma.embeddings.vectors.flatMap((v, i) => v.map((x, j) => Math.abs(x - mb.embeddings.vectors[i][j])))).toExponential(3)),
      speedup: Number((ma.completion.tokensPerSecondBest / mb.completion.tokensPerSecondBest).toFixed(2))
    }
  })
}

async function main () {
  if (only !== 'engine') {
    say('resources')
    report.resources = await resources()
  }
  if (only !== 'resources') {
    const dir = mkdtempSync(path.join(os.tmpdir(), 'shepherd-gpu-models-'))
    const names = []
    for (const nEmbd of embds) {
      const name = `tiny-embd${nEmbd}`
      const t = performance.now()
      const file = await createTinyModel(path.join(dir, `${name}.gguf`), { nEmbd })
      report.models.push({ name, nEmbd, bytes: statSync(file).size, writeMs: Math.round(performance.now() - t) })
      say('wrote', name, statSync(file).size)
      names.push(name)
    }
    for (const gpu of gpus) report.runs.push(await runEngine(gpu, dir, names))
    report.comparison = compare(report.runs)
    // Vectors are long; keep the first dims in the printed report, the full ones only when asked.
    if (arg('full-vectors', 'no') !== 'yes') {
      for (const r of report.runs) for (const m of r.models) if (m.embeddings) m.embeddings.vectors = m.embeddings.vectors.map(v => firstDims(v))
    }
    rmSync(dir, { recursive: true, force: true })
  }
  process.stdout.write(JSON.stringify(report, null, 2) + '\n')
}

await main()
