import '../polyfill.js'
import { ShepherdError } from '../errors.js'
import { VERSION } from '../version.js'
import { UsageError } from './args.js'
import { command, deploy, groups, logs, peers, status, undeploy } from './client.js'
import { MAIN_HELP } from './help.js'
import { start } from './start.js'
import { keygen } from './keygen.js'
import { doctor } from './doctor.js'
import { admit, invite, members, revoke } from './members.js'

const COMMANDS: Record<string, (args: string[], out: (line: string) => void) => Promise<void>> = { start, status, peers, groups, deploy, undeploy, command, logs, keygen, doctor, admit, revoke, invite, members }

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
  const run = COMMANDS[command]
  try {
    if (run == null) throw new UsageError(`unknown command '${command}' (try --help)`)
    await run(rest, out)
    return 0
  } catch (err: any) {
    const msg = err instanceof ShepherdError ? err.message : `unexpected error: ${err?.message ?? String(err)}`
    process.stderr.write(`shepherd-mesh: ${msg}\n`)
    return err instanceof UsageError || err?.code === 'usage' || err?.code === 'invalid_config' ? 2 : 1
  }
}
