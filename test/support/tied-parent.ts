/**
 * A stand-in node for tests of `spawnTied`: starts `sleep 300` tied to itself in the mode named
 * by argv[2], prints `pid <n> tie <mode>` and stays alive until it is killed; with argv[3]
 * `die-now` it kills itself with SIGKILL right after the spawn, before the child can have set
 * anything up (the race a death signal set by the child itself leaves open).
 */
import { writeSync } from 'node:fs'
import { spawnTied, type TieMode } from '../../src/node/engines/tied-child.js'

const t = spawnTied('sleep', ['300'], { stdio: 'ignore' }, (process.argv[2] ?? 'auto') as TieMode)
writeSync(1, `pid ${t.pid} tie ${t.tie}\n`)
if (process.argv[3] === 'die-now') process.kill(process.pid, 'SIGKILL')
setInterval(() => {}, 60_000)
