import { OPTION_SPECS, defaultOptions } from '../config/index.js'

export const MAIN_HELP = `shepherd-mesh: turn the machines on a LAN into one OpenAI-compatible LLM service

Usage: shepherd-mesh <command> [options]

Commands:
  start     run a node (finds peers on the LAN with mDNS)
  status    show this machine's node
  peers     list the peers this node sees
  groups    list swarm groups, their leaders and members
  deploy    keep N replicas of a model loaded in a group
  undeploy  remove a deployment
  command   send a signed command to a peer (load_model, unload_model, scan_models, ...)
  logs      show a peer's recent log lines
  keygen    write a swarm key for a private mesh
  members   list this mesh's members, pending and revoked peers
  admit     admit a pending peer (NAME or ID) into this node's mesh
  revoke    revoke a member: cut off at once, on every member
  invite    print a single-use invite token (start --join / SHEPHERD_JOIN on the new machine)
  doctor    check (and repair) this node's data dir

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

Lists the peers the local node sees, with status, last seen, RTT and resources. A peer with
status 'pending' said hello but is no member: 'shepherd-mesh admit NAME|ID' admits it.

Options:
  --api URL    the node's API (default http://127.0.0.1:9190, or SHEPHERD_API)
  --json       print JSON for scripts
  -h, --help   show this help
`

const CLIENT_OPTIONS = `  --api URL    the node's API (default http://127.0.0.1:9190, or SHEPHERD_API; key from SHEPHERD_API_KEY)
  --json       print JSON for scripts
  -h, --help   show this help`

export const GROUPS_HELP = `Usage: shepherd-mesh groups [--api URL] [--json]

Lists the swarm groups the mesh knows: leader, term, whether this node joined, members.

Options:
${CLIENT_OPTIONS}
`

export const DEPLOY_HELP = `Usage: shepherd-mesh deploy MODEL [--replicas N] [--group G] [--strategy S] [--gpu-required] [--min-vram-mb N] [--label k=v]

Asks the group's leader to keep N replicas of MODEL loaded on its members.
Strategies: resource-fit (default), least-loaded, locality, round-robin, weighted, random, label-cost.

Options:
  --replicas N       replicas to keep (default 1)
  --group G          swarm group (default default)
${CLIENT_OPTIONS}
`

export const UNDEPLOY_HELP = `Usage: shepherd-mesh undeploy MODEL [--api URL]

Removes MODEL's deployment; its replicas are unloaded.

Options:
${CLIENT_OPTIONS}
`

export const COMMAND_HELP = `Usage: shepherd-mesh command PEER TYPE [--payload JSON] [--group G] [--api URL] [--json]

Signs a command with this node's key and runs it on PEER (a peer id, id suffix or name; 'self'
for this node). A peer accepts commands from its group's leader and from itself only.
Types: load_model, unload_model, run_llamacpp, stop_process, scan_models, collect_logs, update_config.

Options:
  --payload JSON     the command's payload, e.g. '{"model":"qwen2.5-7b"}'
  --group G          the group whose leadership signs it (default: this node's first group)
${CLIENT_OPTIONS}
`

export const LOGS_HELP = `Usage: shepherd-mesh logs PEER [--lines N] [--api URL]

Shows PEER's recent log lines (info and above), fetched with a collect_logs command.

Options:
  --lines N    how many lines (default 200)
${CLIENT_OPTIONS}
`

export const KEYGEN_HELP = `Usage: shepherd-mesh keygen [FILE] [--force]

Writes a new swarm key (default ./swarm.key, mode 0600). Nodes started with --swarm-key FILE form a
private mesh: a node without the same key cannot connect, read or inject gossip, or send commands.

Options:
  --force      replace FILE if it exists
  -h, --help   show this help
`

export const DOCTOR_HELP = `Usage: shepherd-mesh doctor [--data-dir DIR] [--api URL] [--repair] [--reset]

Checks that the node's data dir and store can be opened. With --repair, runs LevelDB's repair on
a damaged store; with --reset, moves an unrecoverable store aside (a new identity is created at
the next start). Stop the node first for those. While the node runs, asks its API instead and
names any duplicate peer id (two processes with one identity, e.g. a copied data dir).

Options:
  --data-dir DIR   the data dir (default ~/.shepherd-mesh)
  --api URL        the running node's API (default $SHEPHERD_API or http://127.0.0.1:9190)
  --repair         try to repair a damaged store
  --reset          move the store aside as store.broken-<time>
  -h, --help       show this help
`
