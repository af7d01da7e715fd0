import { resolveOptions } from '../config/index.js'
import { buildApi } from '../api/index.js'
import { failOpenStreams } from '../api/stream-response.js'
import { MeshNode } from '../node/index.js'
import { Scheduler } from '../scheduler/index.js'
import { setLogLevel } from '../logger.js'
import { ConfigError, ShepherdError } from '../errors.js'
import { parse, startFlags } from './args.js'
import { startHelp } from './help.js'
import { gatherFacts, preflight } from './preflight.js'
import { startupSummary, watchDuplicateNames, watchLoneliness } from './start-notes.js'
import { watchNpxParent } from './service-signals.js'

/** One line at start that says who may join this node's mesh. */
function membershipBanner (node: MeshNode): string {
  const mode = node.membership.mode
  if (mode === 'open') {
    return '\n  *** OPEN MESH: every shepherd-mesh node that can reach this one is a member: it gets prompts,\n  *** sends state and may lead groups. For labs only; drop --open for admission, or use --swarm-key.\n\n'
  }
  if (mode === 'swarm-key') return 'shepherd-mesh: private mesh: only nodes with the same swarm key can connect; each of them is a member\n'
  const members = node.trust.ledger?.members.size ?? 1
  return `shepherd-mesh: mesh ${node.trust.ledger?.mesh ?? '-'} with ${members} member(s): new nodes wait as pending until a member runs 'shepherd-mesh admit NAME' (or use an invite or --swarm-key)\n`
}

/** Flags whose value is a credential: every local user can read a process's argv (`ps`). */
const SECRET_FLAGS = ['--join', '--api-key']

/**
 * `argv` with the values of credential flags (`--join TOKEN`, `--api-key=KEY`) masked: what the
 * process shows as its command line once started (SHEPHERD_JOIN / SHEPHERD_API_KEYS never show).
 */
export function maskSecretArgs (argv: readonly string[]): string[] {
  const out: string[] = []
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]
    if (a === '--') { out.push(...argv.slice(i)); break }
    const eq = SECRET_FLAGS.find(f => a.startsWith(f + '='))
    if (eq != null) out.push(`${eq}=***`)
    else if (SECRET_FLAGS.includes(a) && i + 1 < argv.length) {
      out.push(a, '***')
      i++
    } else out.push(a)
  }
  return out
}

function isLoopback (host: string): boolean {
  return host === 'localhost' || host === '::1' || host.startsWith('127.')
}

/** `shepherd-mesh start`: runs a node until SIGINT/SIGTERM, then leaves the mesh cleanly. */
export async function start (args: string[], out: (line: string) => void): Promise<void> {
  const { values, positionals } = parse(args, startFlags())
  if (values.help === true) {
    out(startHelp())
    return
  }
  if (positionals.length > 0) throw new ShepherdError(`unexpected argument '${positionals[0]}'`, { code: 'usage', status: 400 })
  // An invite token or API key given as a flag must not stay readable in `ps` for the node's life.
  const shown = maskSecretArgs(process.argv)
  if (shown.some((a, i) => a !== process.argv[i])) process.title = shown.join(' ')
  const options = await resolveOptions({ configFile: values.config as string | undefined, flags: values })
  setLogLevel(options.logLevel)
  // Settings that would only fail later (at the first request, or silently) fail here, one line each.
  const checked = preflight(options, await gatherFacts(options, values))
  for (const w of checked.warnings) process.stderr.write(`shepherd-mesh: warning: ${w}\n`)
  if (checked.errors.length > 0) {
    for (const e of checked.errors.slice(1)) process.stderr.write(`shepherd-mesh: ${e}\n`)
    throw new ConfigError(checked.errors[0])
  }

  const node = await MeshNode.create(options)
  try {
    await node.start()
  } catch (err: any) {
    await node.stop({ announce: false }).catch(() => {})
    if (err.code === 'EADDRINUSE' || /EADDRINUSE/.test(String(err.message))) {
      throw new ShepherdError(`a listen address is already in use (${options.listen.join(', ')}); use --listen`, { code: 'address_in_use', status: 500 })
    }
    throw err
  }
  const scheduler = new Scheduler(node)
  scheduler.start()
  const api = await buildApi({ node, scheduler })
  try {
    await api.listen({ host: options.apiHost, port: options.apiPort })
  } catch (err: any) {
    await node.stop({ announce: false }).catch(() => {})
    if (err.code === 'EADDRINUSE') throw new ShepherdError(`API port ${options.apiPort} is already in use on ${options.apiHost}; use --api-port`, { code: 'address_in_use', status: 500 })
    if (err.code === 'EADDRNOTAVAIL') throw new ShepherdError(`API host ${options.apiHost} is not an address of this machine; use --api-host`, { code: 'address_not_available', status: 500 })
    throw err
  }
  const address = api.server.address()
  const port = typeof address === 'object' && address != null ? address.port : options.apiPort
  node.setApiPort(port)
  process.stderr.write(membershipBanner(node))
  if (!isLoopback(options.apiHost) && options.apiKeys.length === 0) {
    process.stderr.write(`shepherd-mesh: warning: the API listens on ${options.apiHost} without an API key: anyone who can reach it can use it (set --api-key-file)\n`)
  }
  if (!options.mdns && options.bootstrap.length === 0) {
    process.stderr.write('shepherd-mesh: mDNS is off and no --bootstrap peer is set: this node will only see peers that dial it\n')
  }
  const apiUrl = `http://${options.apiHost.includes(':') ? `[${options.apiHost}]` : options.apiHost}:${port}`
  process.stderr.write(startupSummary(node, apiUrl) + '\n')
  const notes = [watchDuplicateNames(node, line => process.stderr.write(line + '\n')), watchLoneliness(node, line => process.stderr.write(line + '\n'))]
  out(`shepherd-mesh ${node.id} api=${apiUrl}`)

  await new Promise<void>(resolve => {
    let stopping = false
    const stop = (why: string): void => {
      if (stopping) {
        // A second signal: the operator does not want to wait for the clean stop.
        process.stderr.write(`shepherd-mesh: ${why} again, exiting now\n`)
        process.exit(130)
      }
      stopping = true
      process.stderr.write(`shepherd-mesh: ${why}: leaving the mesh and stopping\n`)
      for (const n of notes) n()
      stopParent()
      const hard = setTimeout(() => { process.stderr.write('shepherd-mesh: the clean stop took over 5 s; exiting\n'); process.exit(1) }, 5000)
      hard.unref()
      scheduler.stop()
      // Open answers end with an error event, not a silent cut that looks like a finished answer.
      failOpenStreams('The node answering this request is shutting down')
      Promise.allSettled([node.stop({ announce: true }), api.close()]).then(() => {
        clearTimeout(hard)
        // A handle someone forgot (a socket in TIME_WAIT, a timer) must not keep a service from exiting.
        setTimeout(() => { process.exit(process.exitCode ?? 0) }, 1000).unref()
        resolve()
      }, () => { resolve() })
    }
    process.on('SIGINT', () => { stop('SIGINT') })
    process.on('SIGTERM', () => { stop('SIGTERM') })
    // Under `npx`, a SIGTERM to npm ends npm and not this process: follow npm out.
    const stopParent = watchNpxParent(() => { stop('npx (our parent) exited') })
  })
}
