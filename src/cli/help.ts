import { OPTION_SPECS, defaultOptions } from '../config/options.js'

export const MAIN_HELP = `shepherd-mesh: turn the machines on a LAN into one OpenAI-compatible LLM service

Usage: shepherd-mesh <command> [options]

Commands:
  start     run a node (finds peers on the LAN with mDNS)
  status    show this machine's node
  peers     list the peers this node sees
  groups    list swarm groups, their leaders and members
  deploy    keep N replicas of a model loaded in a group (--wait: until placed)
  deployments  list deployments with their progress (transfer %, loading, placed)
  undeploy  remove a deployment
  command   send a signed command to a peer (load_model, unload_model, scan_models, ...)
  logs      show a peer's recent log lines
  keygen    write a swarm key for a private mesh
  members   list this mesh's members, pending and revoked peers
  admit     admit a pending peer (NAME or ID) into this node's mesh
  revoke    revoke a member: cut off at once, on every member
  invite    print a single-use invite token (start --join / SHEPHERD_JOIN on the new machine)
  doctor    check (and repair) this node's data dir
  service   install (or uninstall) the node as a systemd/launchd service

Options:
  -v, --version   print the version
  -h, --help      show this help

Run 'shepherd-mesh <command> --help' for a command's options.
`

export function startHelp (): string {
  const d = defaultOptions() as unknown as Record<string, unknown>
  const rows = OPTION_SPECS.filter(s => s.type !== 'bool').map(s => {
    const def = d[s.key]
    const shown = Array.isArray(def) ? (def.length > 0 ? def.join(',') : '') : String(def)
    // At least two spaces between a long flag and its help (--command-results-retention-ms N).
    const flag = `  --${s.flag} ${s.type === 'int' ? 'N' : 'VALUE'}`
    return `${flag}${' '.repeat(Math.max(2, 34 - flag.length))}` + s.help + (shown !== '' ? ` (default ${shown})` : '') + `  [${s.env}]`
  })
  return `Usage: shepherd-mesh start [options]

Runs a node: joins the mesh, gossips this machine's resources and serves the local API.

Options:
  -c, --config FILE               YAML config file (keys as in the README's Configuration section)
  --no-mdns                       do not use mDNS (use --bootstrap instead)
  --no-allow-remote               serve this node's own clients only
  --no-prefix-routing             route each turn by the strategy alone (no KV-cache affinity)
${rows.join('\n')}
  -h, --help                      show this help

Precedence: defaults < config file < environment < flags. Keys and tokens: prefer
--api-key-file FILE, SHEPHERD_API_KEYS or SHEPHERD_JOIN to flags (flags show in ps).
As a service: 'shepherd-mesh service install' (not npx: see the README).
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

export const DEPLOY_HELP = `Usage: shepherd-mesh deploy MODEL [--replicas N] [--group G] [--strategy S] [--gpu-required] [--min-vram-mb N] [--label k=v] [--split] [--wait]

Asks the group's leader to keep N replicas of MODEL loaded on its members (from any member: the
deployment is signed by this node and gossiped). Nodes that lack the file pull it from a peer.

Options:
  --replicas N       replicas to keep (default 1)
  --group G          swarm group (default default)
  --strategy S       resource-fit (default), least-loaded, locality, round-robin, weighted,
                     random, label-cost
  --gpu-required     place only on nodes with a GPU
  --min-vram-mb N    place only where a GPU has N MiB of VRAM
  --label k=v        place only on nodes with this label (repeatable)
  --split            run ONE replica split over several nodes (llama.cpp RPC through the mesh);
                     without it a model that fits no single node is split anyway
  --fingerprint HEX  the file meant, when members hold different files of one name
  --wait             wait until placed, with a progress line (transfer %, loading) on stderr;
                     exit 1 when failed or unplaceable for 10 s
  --timeout T        longest wait (default 10m; s, m, h)
${CLIENT_OPTIONS}
`

export const DEPLOYMENTS_HELP = `Usage: shepherd-mesh deployments [--api URL] [--json]

Lists the deployments: replicas placed of desired, phase (pending, transferring, loading, placed,
failed, unplaceable), the replicas in progress (transfer %) and the group's leader.

Options:
${CLIENT_OPTIONS}
`

export const UNDEPLOY_HELP = `Usage: shepherd-mesh undeploy MODEL [--api URL]

Removes MODEL's deployment; its replicas are unloaded.

Options:
${CLIENT_OPTIONS}
`

export const COMMAND_HELP = `Usage: shepherd-mesh command PEER TYPE [--payload JSON] [--group G] [--api URL] [--json]

Signs a command with this node's key and runs it on PEER (a peer id, a unique id suffix or a
name; 'self' for this node). Works from any member: a peer accepts commands from itself, from its
group's proven leader, and from a member of its mesh acting as an operator (admission or
swarm-key mesh; not in an --open mesh). A name several nodes share is refused with their ids.
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

Writes a new swarm key (default ~/.shepherd-mesh/swarm.key, mode 0600; never into a repository by
accident: give FILE to choose). Nodes started with --swarm-key FILE form a
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
