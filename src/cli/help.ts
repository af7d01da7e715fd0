import { OPTION_SPECS, defaultOptions } from '../config/index.js'

export const MAIN_HELP = `shepherd-mesh: turn the machines on a LAN into one OpenAI-compatible LLM service

Usage: shepherd-mesh <command> [options]

Commands:
  start     run a node (finds peers on the LAN with mDNS)
  status    show this machine's node
  peers     list the peers this node sees

Run 'shepherd-mesh <command> --help' for a command's options.
`

export function startHelp (): string {
  const d = defaultOptions() as unknown as Record<string, unknown>
  const rows = OPTION_SPECS.filter(s => s.type !== 'bool').map(s => {
    const def = d[s.key]
    const shown = Array.isArray(def) ? (def.length > 0 ? def.join(',') : '') : String(def)
    return `  --${s.flag} ${s.type === 'int' ? 'N' : 'VALUE'}`.padEnd(34) + s.help + (shown !== '' ? ` (default ${shown})` : '') + `  [${s.env}]`
  })
  return `Usage: shepherd-mesh start [options]

Runs a node: joins the mesh, gossips this machine's resources and serves the local API.

Options:
  -c, --config FILE               YAML config file (shaped like node.config.yaml)
  --no-mdns                       do not use mDNS (use --bootstrap instead)
${rows.join('\n')}
  -h, --help                      show this help

Precedence: defaults < config file < environment < flags.
`
}

export const STATUS_HELP = `Usage: shepherd-mesh status [--api URL] [--json]

Shows this machine's node: id, addresses, resources, models and a peer count.

Options:
  --api URL    the node's API (default http://127.0.0.1:9190, or SHEPHERD_API)
  --json       print JSON for scripts
  -h, --help   show this help
`

export const PEERS_HELP = `Usage: shepherd-mesh peers [--api URL] [--json]

Lists the peers the local node sees, with status, last seen, RTT and resources.

Options:
  --api URL    the node's API (default http://127.0.0.1:9190, or SHEPHERD_API)
  --json       print JSON for scripts
  -h, --help   show this help
`
