/**
 * Prints the packages (paths relative to the cwd) that the named packages need at run time:
 * them and their `dependencies`, resolved the way Node resolves them (nearest node_modules
 * upward). Optional dependencies are left out; name the ones wanted.
 *
 * Usage: node scripts/device/closure.mjs node-llama-cpp @node-llama-cpp/linux-x64
 */
import fs from 'node:fs'
import path from 'node:path'

const root = process.cwd()
const seen = new Set()

function resolvePackage (name, fromDir) {
  for (let dir = fromDir; ; dir = path.dirname(dir)) {
    const candidate = path.join(dir, 'node_modules', name)
    if (fs.existsSync(path.join(candidate, 'package.json'))) return candidate
    if (path.dirname(dir) === dir) return null
  }
}

function walk (dir) {
  if (seen.has(dir)) return
  seen.add(dir)
  const pkg = JSON.parse(fs.readFileSync(path.join(dir, 'package.json'), 'utf8'))
  for (const dep of Object.keys(pkg.dependencies ?? {})) {
    const found = resolvePackage(dep, dir)
    if (found === null) throw new Error(`${dep} (needed by ${path.relative(root, dir)}) is not installed`)
    walk(found)
  }
}

for (const name of process.argv.slice(2)) {
  const found = resolvePackage(name, root)
  if (found === null) throw new Error(`${name} is not installed`)
  walk(found)
}
for (const dir of seen) console.log(path.relative(root, dir))
