/**
 * A stand-in `llama-server` for tests of process supervision (not of inference): it answers
 * `--version` like a CPU build, then serves `/health` and `/props` on the `--host`/`--port` it
 * was given, and records its command line as `<pid>.json` in `$FAKE_LLAMA_DIR`. Start-up takes
 * milliseconds, so tests of spawning, caps and kill -9 do not wait on a real model load.
 */
import fs from 'node:fs/promises'
import path from 'node:path'

const SCRIPT = `
import http from 'node:http'
import fs from 'node:fs'
const argv = process.argv.slice(2)
if (argv.includes('--version')) { process.stderr.write('version: 4242 (abcdef0)\\nbuilt with fake-cc for x86_64-linux-gnu\\n'); process.exit(0) }
if (argv.includes('--list-devices')) { process.stdout.write('Available devices:\\n'); process.exit(0) }
const get = flag => { const i = argv.indexOf(flag); return i >= 0 ? argv[i + 1] : undefined }
if (process.env.FAKE_LLAMA_DIR) fs.writeFileSync(process.env.FAKE_LLAMA_DIR + '/' + process.pid + '.json', JSON.stringify(argv))
const nCtx = Number(get('--ctx-size') ?? 512)
http.createServer((req, res) => {
  res.setHeader('content-type', 'application/json')
  if (req.url === '/health') res.end('{"status":"ok"}')
  else if (req.url === '/props') res.end(JSON.stringify({ default_generation_settings: { n_ctx: nCtx } }))
  else { res.statusCode = 404; res.end('{"error":{"message":"not here"}}') }
}).listen(Number(get('--port')), get('--host'))
`

/** Writes the stand-in as `DIR/llama-server` (executable, run by this Node) and returns its path. */
export async function writeFakeLlamaServer (dir: string): Promise<string> {
  const file = path.join(dir, 'llama-server')
  await fs.writeFile(file, `#!${process.execPath}\n${SCRIPT}`, { mode: 0o755 })
  return file
}

/** The command lines the stand-ins started from `dir` were given, by pid. */
export async function fakeLlamaServerArgs (dir: string): Promise<Map<number, string[]>> {
  const out = new Map<number, string[]>()
  for (const name of await fs.readdir(dir)) {
    const m = /^(\d+)\.json$/.exec(name)
    if (m != null) out.set(Number(m[1]), JSON.parse(await fs.readFile(path.join(dir, name), 'utf8')))
  }
  return out
}
