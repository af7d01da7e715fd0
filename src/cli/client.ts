import { ShepherdError } from '../errors.js'
import type { PeerView } from '../node/index.js'
import { clientFlags, parse, UsageError } from './args.js'
import { COMMAND_HELP, GROUPS_HELP, LOGS_HELP, PEERS_HELP, STATUS_HELP, UNDEPLOY_HELP } from './help.js'
import { PEER_HEADER, bytes, peerRow, table } from './format.js'
import { stripControl, stripControlDeep } from '../p2p/text.js'

export function apiBase (values: Record<string, unknown>): string {
  return String(values.api ?? process.env.SHEPHERD_API ?? 'http://127.0.0.1:9190').replace(/\/+$/, '')
}

function authHeaders (): Record<string, string> {
  const key = process.env.SHEPHERD_API_KEY
  return key != null && key !== '' ? { authorization: `Bearer ${key}` } : {}
}

/**
 * Calls the node's API. Every mutating call carries a JSON body (`{}` when there is nothing to
 * say): the API refuses anything else on those routes (cross-site request forgery). The answer
 * is cleaned of control characters before anything prints it: names in it come from peers, and
 * an older node does not clean them itself.
 */
export async function getJson<T> (base: string, path: string, init: { method?: string, body?: unknown, timeoutMs?: number } = {}): Promise<T> {
  const method = init.method ?? 'GET'
  const body = init.body !== undefined ? init.body : method === 'GET' || method === 'HEAD' ? undefined : {}
  let res: Response
  try {
    res = await fetch(base + path, {
      method,
      headers: { ...authHeaders(), ...(body !== undefined ? { 'content-type': 'application/json' } : {}) },
      body: body !== undefined ? JSON.stringify(body) : undefined,
      signal: AbortSignal.timeout(init.timeoutMs ?? 5000)
    })
  } catch {
    throw new ShepherdError(`no node answers at ${base} (is 'shepherd-mesh start' running? use --api)`, { code: 'node_unreachable', status: 503 })
  }
  const answer = stripControlDeep(await res.json().catch(() => null) as any)
  if (!res.ok) throw new ShepherdError(`${base}${path}: ${stripControl(String(answer?.error?.message ?? res.statusText))}`, { code: stripControl(String(answer?.error?.code ?? 'api_error')), status: res.status })
  return answer as T
}

/** `shepherd-mesh status`: this machine's node. */
export async function status (args: string[], out: (line: string) => void): Promise<void> {
  const { values } = parse(args, clientFlags)
  if (values.help === true) { out(STATUS_HELP); return }
  const base = apiBase(values)
  const [self, peers] = await Promise.all([getJson<PeerView>(base, '/api/node'), getJson<{ peers: PeerView[] }>(base, '/api/peers')])
  if (values.json === true) { out(JSON.stringify({ node: self, peers: peers.peers.length }, null, 2)); return }
  const r = self.resources
  const loaded = self.models.filter(m => m.state === 'loaded' || m.state === 'loading').map(m => m.state === 'loading' ? `${m.name} (loading)` : m.name)
  const counts = peers.peers.reduce<Record<string, number>>((acc, p) => { acc[p.status] = (acc[p.status] ?? 0) + 1; return acc }, {})
  const lines = [
    `name:       ${self.name}`,
    `id:         ${self.id}`,
    `version:    ${self.version ?? '-'}`,
    `groups:     ${self.groups.join(', ')}`,
    `addresses:  ${self.addresses.join(' ')}`,
    `cpu:        ${r != null ? `${r.cpu.model} (${r.cpu.cores} cores, ${Math.round(r.cpu.usagePercent)}% used)` : '-'}`,
    `memory:     ${r != null ? `${bytes(r.memory.availableBytes)} free of ${bytes(r.memory.totalBytes)}` : '-'}`,
    `disk:       ${r != null ? `${bytes(r.disk.availableBytes)} free of ${bytes(r.disk.totalBytes)}` : '-'}`,
    `gpus:       ${r == null || r.gpus.length === 0 ? 'none' : r.gpus.map(g => `#${g.index} ${g.name} ${bytes(g.usedMemoryBytes)}/${bytes(g.totalMemoryBytes)}`).join('; ')}`,
    `llama.cpp:  ${r == null || r.llamacpp.length === 0 ? 'none' : r.llamacpp.map(b => `${b.path} (${b.version}, ${b.backend})`).join('; ')}`,
    `models:     ${self.models.length === 0 ? 'none' : self.models.map(m => `${m.name} (${bytes(m.sizeBytes)}, ${m.state === 'on_disk' ? 'on disk' : m.state}${m.pinned === true ? ', replica' : ''})`).join(', ')}`,
    `loaded:     ${loaded.length === 0 ? 'none' : loaded.join(', ')}`,
    `peers:      ${peers.peers.length === 0 ? 'none' : Object.entries(counts).map(([s, n]) => `${n} ${s}`).join(', ')}`
  ]
  if (peers.peers.length === 0) lines.push(`hint:       ${await lonelyHint(base)}`)
  out(lines.join('\n'))
}

/**
 * Why a node may see no peer. A swarm key mismatch has no symptom of its own (the handshake just
 * fails on both sides), so the mode is named with what to check.
 */
async function lonelyHint (base: string): Promise<string> {
  const m = await getJson<{ mode: string }>(base, '/api/members').catch(() => null)
  if (m?.mode === 'swarm-key') return 'no peers: every node needs the same --swarm-key file (a node with another key or none cannot connect)'
  return 'no peers: on one LAN, mDNS finds them (or use --bootstrap); if the mesh uses a swarm key, this node needs the same --swarm-key; a new node waits as pending until a member runs \'shepherd-mesh admit\''
}

/** `shepherd-mesh groups`: groups, their leaders and members. */
export async function groups (args: string[], out: (line: string) => void): Promise<void> {
  const { values } = parse(args, clientFlags)
  if (values.help === true) { out(GROUPS_HELP); return }
  const { groups } = await getJson<{ groups: Array<{ name: string, leader: string | null, term: number, joined: boolean, members: Array<{ id: string, name: string, status: string, self: boolean }> }> }>(apiBase(values), '/api/groups')
  if (values.json === true) { out(JSON.stringify(groups, null, 2)); return }
  if (groups.length === 0) { out('no groups'); return }
  // With identical hostnames a name alone does not say which machine leads: the id suffix does.
  out(table(['GROUP', 'LEADER', 'TERM', 'JOINED', 'MEMBERS'], groups.map(g => [
    g.name,
    g.leader == null ? '-' : `${g.members.find(m => m.id === g.leader)?.name ?? '?'} (…${g.leader.slice(-8)})`,
    String(g.term),
    g.joined ? 'yes' : 'no',
    g.members.map(m => `${m.name}${m.status === 'alive' ? '' : `(${m.status})`}`).join(', ')
  ])))
}

/** `shepherd-mesh undeploy MODEL`. */
export async function undeploy (args: string[], out: (line: string) => void): Promise<void> {
  const { values, positionals } = parse(args, clientFlags)
  if (values.help === true) { out(UNDEPLOY_HELP); return }
  if (positionals.length !== 1) throw new UsageError('undeploy needs exactly one MODEL (see --help)')
  await getJson(apiBase(values), `/api/deployments/${encodeURIComponent(positionals[0])}`, { method: 'DELETE' })
  out(`undeployed ${positionals[0]}`)
}

/** `shepherd-mesh command PEER TYPE --payload JSON`: a signed command, run on PEER. */
export async function command (args: string[], out: (line: string) => void): Promise<void> {
  const { values, positionals } = parse(args, { ...clientFlags, payload: { type: 'string' }, group: { type: 'string' } })
  if (values.help === true) { out(COMMAND_HELP); return }
  if (positionals.length !== 2) throw new UsageError('command needs PEER and TYPE (see --help)')
  let payload: unknown = {}
  if (values.payload != null) {
    try { payload = JSON.parse(String(values.payload)) } catch { throw new UsageError('--payload is not valid JSON') }
  }
  const res = await getJson<{ status: string, result?: unknown, error?: { code: string, message: string }, output: string[] }>(apiBase(values), '/api/commands', {
    method: 'POST',
    body: { target: positionals[0], type: positionals[1], payload, ...(values.group != null ? { group: values.group } : {}) },
    timeoutMs: 15 * 60_000
  })
  if (values.json === true) { out(JSON.stringify(res, null, 2)); return }
  for (const line of res.output) out(line)
  if (res.status !== 'ok') throw new ShepherdError(`${positionals[1]} ${res.status}: ${res.error?.code ?? ''} ${res.error?.message ?? ''}`.trim(), { code: res.error?.code ?? 'command_failed', status: 400 })
  out(JSON.stringify(res.result ?? {}))
}

/** `shepherd-mesh logs PEER [--lines N]`: recent log lines of a peer (a collect_logs command). */
export async function logs (args: string[], out: (line: string) => void): Promise<void> {
  const { values, positionals } = parse(args, { ...clientFlags, lines: { type: 'string' } })
  if (values.help === true) { out(LOGS_HELP); return }
  if (positionals.length !== 1) throw new UsageError('logs needs PEER (see --help)')
  const lines = values.lines != null ? Number(values.lines) : 200
  await command([positionals[0], 'collect_logs', '--payload', JSON.stringify({ lines }), ...(values.api != null ? ['--api', String(values.api)] : [])], out)
}

/** `shepherd-mesh peers`: the peer table. */
export async function peers (args: string[], out: (line: string) => void): Promise<void> {
  const { values } = parse(args, clientFlags)
  if (values.help === true) { out(PEERS_HELP); return }
  const { peers } = await getJson<{ peers: PeerView[] }>(apiBase(values), '/api/peers')
  if (values.json === true) { out(JSON.stringify(peers, null, 2)); return }
  out(peers.length === 0 ? 'no peers yet' : table(PEER_HEADER, peers.map(p => peerRow(p))))
}
