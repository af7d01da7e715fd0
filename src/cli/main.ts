import '../polyfill.js'
import { ShepherdError } from '../errors.js'
import { VERSION } from '../version.js'
import { UsageError } from './args.js'
import { MAIN_HELP } from './help.js'

type Command = (args: string[], out: (line: string) => void) => Promise<void>

/**
 * Each command's module is imported when it runs: `start` needs libp2p, Fastify and the engines
 * (seconds of module loading on a Raspberry Pi), a client command or `--version` needs none of it.
 */
const COMMANDS: Record<string, () => Promise<Command>> = {
  start: async () => (await import('./start.js')).start,
  status: async () => (await import('./client.js')).status,
  peers: async () => (await import('./client.js')).peers,
  groups: async () => (await import('./client.js')).groups,
  undeploy: async () => (await import('./client.js')).undeploy,
  command: async () => (await import('./client.js')).command,
  logs: async () => (await import('./client.js')).logs,
  deploy: async () => (await import('./deployments.js')).deploy,
  deployments: async () => (await import('./deployments.js')).deployments,
  keygen: async () => (await import('./keygen.js')).keygen,
  doctor: async () => (await import('./doctor.js')).doctor,
  admit: async () => (await import('./members.js')).admit,
  revoke: async () => (await import('./members.js')).revoke,
  invite: async () => (await import('./members.js')).invite,
  members: async () => (await import('./members.js')).members,
  service: async () => (await import('./service.js')).service
}

/** Entry point of the `shepherd-mesh` command. Returns the exit code. */
export async function main (argv: string[], out: (line: string) => void = line => { process.stdout.write(line + '\n') }): Promise<number> {
  const [command, ...rest] = argv
  if (command == null || command === '--help' || command === '-h' || command === 'help') {
    out(MAIN_HELP)
    return command == null ? 2 : 0
  }
  if (command === '--version' || command === '-v') {
    out(VERSION)
    return 0
  }
  const load = Object.hasOwn(COMMANDS, command) ? COMMANDS[command] : undefined
  try {
    if (load == null) throw new UsageError(`unknown command '${command}' (try --help)`)
    await (await load())(rest, out)
    return 0
  } catch (err: any) {
    const msg = err instanceof ShepherdError ? err.message : `unexpected error: ${err?.message ?? String(err)}`
    process.stderr.write(`shepherd-mesh: ${msg}\n`)
    return err instanceof UsageError || err?.code === 'usage' || err?.code === 'invalid_config' ? 2 : 1
  }
}
