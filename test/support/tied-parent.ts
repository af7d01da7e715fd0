/**
 * A stand-in node for tests of `spawnTied`: starts `sleep 300` tied to itself in the mode named
 * by argv[2], prints `pid <n> tie <mode>` and stays alive until it is killed.
 */
import { spawnTied, type TieMode } from '../../src/node/engines/tied-child.js'

const t = spawnTied('sleep', ['300'], { stdio: 'ignore' }, (process.argv[2] ?? 'auto') as TieMode)
process.stdout.write(`pid ${t.pid} tie ${t.tie}\n`)
setInterval(() => {}, 60_000)
