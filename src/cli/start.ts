import { resolveOptions } from '../config/index.js'
import { buildApi } from '../api/index.js'
import { MeshNode } from '../node/index.js'
import { Scheduler } from '../scheduler/index.js'
import { setLogLevel } from '../logger.js'
import { ShepherdError } from '../errors.js'
import { parse, startFlags } from './args.js'
import { startHelp } from './help.js'

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
  const options = await resolveOptions({ configFile: values.config as string | undefined, flags: values })
  setLogLevel(options.logLevel)

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
  process.stderr.write(node.isPrivate
    ? 'shepherd-mesh: private mesh: only nodes with the same swarm key can connect\n'
    : 'shepherd-mesh: open LAN mesh: any shepherd-mesh node on this network can join (use keygen and --swarm-key for a private one)\n')
  if (!isLoopback(options.apiHost) && options.apiKeys.length === 0) {
    process.stderr.write(`shepherd-mesh: warning: the API listens on ${options.apiHost} without an API key: anyone who can reach it can use it (set --api-key)\n`)
  }
  if (!options.mdns && options.bootstrap.length === 0) {
    process.stderr.write('shepherd-mesh: mDNS is off and no --bootstrap peer is set: this node will only see peers that dial it\n')
  }
  out(`shepherd-mesh ${node.id} api=http://${options.apiHost.includes(':') ? `[${options.apiHost}]` : options.apiHost}:${port}`)

  await new Promise<void>(resolve => {
    let stopping = false
    const stop = (): void => {
      if (stopping) return
      stopping = true
      const hard = setTimeout(() => { process.exit(1) }, 5000)
      hard.unref()
      scheduler.stop()
      Promise.allSettled([node.stop({ announce: true }), api.close()]).then(() => { resolve() }, () => { resolve() })
    }
    process.once('SIGINT', stop)
    process.once('SIGTERM', stop)
  })
}
