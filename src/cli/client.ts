import { ShepherdError } from '../errors.js'
import type { PeerView } from '../node/index.js'
import { clientFlags, parse } from './args.js'
import { PEERS_HELP, STATUS_HELP } from './help.js'
import { PEER_HEADER, bytes, peerRow, table } from './format.js'

function apiBase (values: Record<string, unknown>): string {
  return String(values.api ?? process.env.SHEPHERD_API ?? 'http://127.0.0.1:9190').replace(/\/+$/, '')
}

async function getJson<T> (base: string, path: string): Promise<T> {
  let res: Response
  try {
    res = await fetch(base + path, { signal: AbortSignal.timeout(5000) })
  } catch {
    throw new ShepherdError(`no node answers at ${base} (is 'shepherd-mesh start' running? use --api)`, { code: 'node_unreachable', status: 503 })
  }
  const body = await res.json().catch(() => null) as any
  if (!res.ok) throw new ShepherdError(`${base}${path}: ${body?.error?.message ?? res.statusText}`, { code: body?.error?.code ?? 'api_error', status: res.status })
  return body as T
}

/** `shepherd-mesh status`: this machine's node. */
export async function status (args: string[], out: (line: string) => void): Promise<void> {
  const { values } = parse(args, clientFlags)
  if (values.help === true) { out(STATUS_HELP); return }
  const base = apiBase(values)
  const [self, peers] = await Promise.all([getJson<PeerView>(base, '/api/node'), getJson<{ peers: PeerView[] }>(base, '/api/peers')])
  if (values.json === true) { out(JSON.stringify({ node: self, peers: peers.peers.length }, null, 2)); return }
  const r = self.resources
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
    `models:     ${self.models.length === 0 ? 'none' : self.models.map(m => `${m.name} (${bytes(m.sizeBytes)})`).join(', ')}`,
    `peers:      ${peers.peers.length === 0 ? 'none' : Object.entries(counts).map(([s, n]) => `${n} ${s}`).join(', ')}`
  ]
  out(lines.join('\n'))
}

/** `shepherd-mesh peers`: the peer table. */
export async function peers (args: string[], out: (line: string) => void): Promise<void> {
  const { values } = parse(args, clientFlags)
  if (values.help === true) { out(PEERS_HELP); return }
  const { peers } = await getJson<{ peers: PeerView[] }>(apiBase(values), '/api/peers')
  if (values.json === true) { out(JSON.stringify(peers, null, 2)); return }
  out(peers.length === 0 ? 'no peers yet' : table(PEER_HEADER, peers.map(p => peerRow(p))))
}
