/**
 * What `start` tells the operator on stderr at the default log level: one summary line once the
 * node serves, a warning when two nodes share a name, and a hint when no peer ever connects.
 */
import type { MeshNode } from '../node/index.js'
import { chooseLocalEngine } from '../node/engine-setup.js'
import { stripControl } from '../p2p/index.js'

/** How long a node may see no peer before it says why that may be. */
export const LONELY_HINT_MS = 20_000

function list (items: string[], max = 5): string {
  return items.length <= max ? items.join(', ') : `${items.slice(0, max).join(', ')} and ${items.length - max} more`
}

/**
 * One line with what an operator checks first: the API URL, the listen addresses, the mesh mode,
 * the engine, the GPU and the models found.
 */
export function startupSummary (node: MeshNode, apiUrl: string): string {
  const o = node.options
  const snap = node.monitor.snapshot()
  const gpus = snap.resources.gpus
  const members = node.trust.ledger?.members.size
  const mode = node.membership.mode
  const mesh = mode === 'admission' ? `admission (${members ?? 1} member${members === 1 ? '' : 's'})` : mode
  // Which engine `auto` picked, and why: the first thing to check when throughput surprises.
  const choice = chooseLocalEngine(o.engine, snap.resources.llamacpp)
  const engine = choice.kind === 'none' ? 'none' : `${choice.kind} (${choice.reason})`
  const gpu = `${o.gpu}: ${gpus.length === 0 ? 'no GPU found' : list(gpus.map(g => g.name))}`
  const models = snap.models.map(m => m.name)
  const dirs = o.modelsDirs.length === 0 ? 'no --models-dir' : o.modelsDirs.join(', ')
  const parts = [
    `node ${node.name} (${node.id})`,
    `API ${apiUrl}`,
    `p2p ${list(node.mesh.addresses(), 4)}`,
    `mesh ${mesh}`,
    `engine ${engine}${o.upstreams.length > 0 ? ` + ${o.upstreams.length} upstream(s)` : ''}`,
    `GPU ${gpu}`,
    `models ${models.length}${models.length > 0 ? ` (${list(models)})` : ''} in ${dirs}`
  ]
  return stripControl(`shepherd-mesh: ready: ${parts.join(' · ')}`)
}

/**
 * Names shared by two or more members (every Raspberry Pi is "raspberrypi"), this node
 * included. Pure: the list of (id, name) pairs in, the shared names and their ids out.
 */
export function duplicateNames (nodes: ReadonlyArray<{ id: string, name: string }>): Map<string, string[]> {
  const byName = new Map<string, Set<string>>()
  for (const n of nodes) {
    const ids = byName.get(n.name) ?? new Set<string>()
    ids.add(n.id)
    byName.set(n.name, ids)
  }
  return new Map([...byName].filter(([, ids]) => ids.size > 1).map(([name, ids]) => [name, [...ids].sort()]))
}

/** Warns once per shared name as peers appear; returns the unsubscribe. */
export function watchDuplicateNames (node: MeshNode, write: (line: string) => void): () => void {
  const warned = new Set<string>()
  const check = (): void => {
    for (const [name, ids] of duplicateNames([{ id: node.id, name: node.name }, ...node.peers()])) {
      const key = `${name}\n${ids.join(',')}`
      if (warned.has(key)) continue
      warned.add(key)
      write(stripControl(`shepherd-mesh: warning: ${ids.length} nodes are named '${name}' (${ids.join(', ')}): commands by that name will ask for an id; give each node its own --name`))
    }
  }
  const onPeer = (ev: { type: string }): void => { if (ev.type === 'peer:joined' || ev.type === 'peer:snapshot' || ev.type === 'peer:member') check() }
  node.on('peer', onPeer)
  check()
  return () => { node.off('peer', onPeer) }
}

/**
 * After `LONELY_HINT_MS` with no connection although peers are known (bootstrap, met before or
 * found by mDNS), says the likely causes once: a swarm key mismatch shows no other symptom (the
 * handshake just fails), so a node without the key would wait for peers forever in silence.
 */
export function watchLoneliness (node: MeshNode, write: (line: string) => void, afterMs = LONELY_HINT_MS): () => void {
  const timer = setTimeout(() => {
    void (async () => {
      if (node.mesh.libp2p.getConnections().length > 0) return
      const known = (await node.mesh.libp2p.peerStore.all().catch(() => [])).filter(p => p.id.toString() !== node.id).length
      if (known === 0 && node.options.bootstrap.length === 0) return
      const cause = node.isPrivate
        ? 'every node of the mesh needs the same swarm key file (--swarm-key): a node with another key or none cannot connect'
        : 'if the other nodes use a swarm key (a private mesh), start this one with the same --swarm-key FILE; else check the addresses and firewalls'
      write(`shepherd-mesh: warning: no peer has connected after ${Math.round(afterMs / 1000)} s although ${known > 0 ? `${known} peer(s) are known` : 'a --bootstrap peer is set'}: ${cause}`)
    })()
  }, afterMs)
  timer.unref()
  return () => { clearTimeout(timer) }
}
