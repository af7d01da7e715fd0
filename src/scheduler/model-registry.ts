import type { ModelSummary, PeerView } from '../node/index.js'

/** One node that can serve a model. */
export interface ModelHost {
  peerId: string
  name: string
  local: boolean
  state: ModelSummary['state']
  fingerprint: string
  /** Requests running + waiting on the host, as it last told us. */
  load: number
  rttMs: number | null
  /** Relative capacity for weighted balancing: GPU memory (GiB) plus CPU cores. */
  weight: number
}

/** A model as the mesh sees it: its replicas, and same-named files that differ (conflicts). */
export interface MeshModel {
  name: string
  /** The fingerprint the replicas share. */
  fingerprint: string
  hosts: ModelHost[]
  /** Hosts with the same name but a different file: reported, never routed to. */
  conflicts: ModelHost[]
  sizeBytes: number
  architecture: string | null
  quantization: string | null
  contextLength: number | null
}

function hostOf (p: PeerView, m: ModelSummary, local: boolean): ModelHost {
  const r = p.resources
  const gpuGiB = r == null ? 0 : r.gpus.reduce((s, g) => s + g.totalMemoryBytes, 0) / 1024 ** 3
  return {
    peerId: p.id,
    name: p.name,
    local,
    state: m.state,
    fingerprint: m.fingerprint,
    load: p.load != null ? p.load.active + p.load.queued : 0,
    rttMs: local ? 0 : p.rttMs,
    weight: Math.max(1, gpuGiB + (r?.cpu.cores ?? 1))
  }
}

/**
 * Builds the mesh's model table from this node and its alive peers' snapshots. Replicas are the
 * hosts whose file fingerprint matches; when fingerprints differ, the local file's wins, else the
 * one most hosts have (ties: smallest fingerprint), and the rest are conflicts.
 */
export function buildModelRegistry (self: PeerView, peers: PeerView[]): Map<string, MeshModel> {
  const byName = new Map<string, Array<{ host: ModelHost, summary: ModelSummary }>>()
  const add = (p: PeerView, local: boolean): void => {
    for (const m of p.models) {
      let list = byName.get(m.name)
      if (list == null) byName.set(m.name, list = [])
      list.push({ host: hostOf(p, m, local), summary: m })
    }
  }
  add(self, true)
  // A peer that serves its own clients only (allowRemote off) is not a host for us.
  for (const p of peers) if (p.status === 'alive' && p.servesPeers) add(p, false)

  const out = new Map<string, MeshModel>()
  for (const [name, list] of byName) {
    const counts = new Map<string, number>()
    for (const { host } of list) counts.set(host.fingerprint, (counts.get(host.fingerprint) ?? 0) + 1)
    const local = list.find(x => x.host.local)
    const fingerprint = local?.host.fingerprint ??
      [...counts.entries()].sort((a, b) => b[1] - a[1] || a[0].localeCompare(b[0]))[0][0]
    const primary = list.filter(x => x.host.fingerprint === fingerprint)
    const ref = primary[0].summary
    out.set(name, {
      name,
      fingerprint,
      hosts: primary.map(x => x.host),
      conflicts: list.filter(x => x.host.fingerprint !== fingerprint).map(x => x.host),
      sizeBytes: ref.sizeBytes,
      architecture: ref.architecture,
      quantization: ref.quantization,
      contextLength: ref.contextLength
    })
  }
  return out
}
