/**
 * The upstream stand-in in a process of its own, for the routing bench: an upstream server runs
 * on the host's machine, beside the host node, not in the client's process. Prints
 * `standin <url>` once listening; stops on SIGTERM or when its parent goes away.
 */
import { UpstreamStandin } from '../test/support/upstream-standin.js'

const standin = await UpstreamStandin.start({ latencyMs: 0 })
process.stdout.write(`standin ${standin.url}\n`)
const stop = (): void => { void standin.close().finally(() => process.exit(0)) }
process.on('SIGTERM', stop)
process.on('disconnect', stop)
process.stdin.on('end', stop).resume()
