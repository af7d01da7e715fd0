/**
 * `npm run bench [-- NAME...]`: runs every registered bench (or the named ones) one after
 * another and prints each one's table. Exits 1 when any bench threw.
 *
 * To add a bench: write `bench/<name>.ts` exporting `async function run (): Promise<BenchTable>`
 * and add a line to BENCHES.
 */
import { formatTable } from './table.js'
import type { BenchModule } from './table.js'

const BENCHES: Record<string, () => Promise<BenchModule>> = {
  'lan-mesh': async () => await import('./lan-mesh.js'),
  'lan-groups': async () => await import('./lan-groups.js'),
  placement: async () => await import('./placement.js'),
  routing: async () => await import('./routing.js'),
  load: async () => await import('./load.js'),
  engines: async () => await import('./engines.js'),
  split: async () => await import('./split.js'),
  prefix: async () => await import('./prefix.js'),
  sim: async () => await import('./sim.js'),
  scale: async () => await import('./scale.js')
}

async function main (argv: string[]): Promise<number> {
  const unknown = argv.filter(name => !(name in BENCHES))
  if (unknown.length > 0) {
    console.error(`unknown bench: ${unknown.join(', ')} (have: ${Object.keys(BENCHES).join(', ')})`)
    return 2
  }
  const names = argv.length > 0 ? argv : Object.keys(BENCHES)
  let failed = 0
  for (const name of names) {
    const started = performance.now()
    try {
      const mod = await BENCHES[name]()
      const table = await mod.run()
      console.log(formatTable(table))
      console.log(`  (${name}: ${((performance.now() - started) / 1000).toFixed(1)} s)\n`)
    } catch (err) {
      failed++
      console.error(`bench ${name} failed: ${(err as Error).stack ?? String(err)}\n`)
    }
  }
  return failed > 0 ? 1 : 0
}

process.exitCode = await main(process.argv.slice(2))
