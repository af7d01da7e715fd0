import { InvalidFingerprintPinError, ModelFingerprintNotFoundError } from '../errors.js'
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
  /** Where the host's file came from, when it pulled it (as the host reports it). */
  source?: ModelSummary['source']
  /** The host heads a split replica (issue 16): each node's layers, the host first. */
  shards?: ModelSummary['shards']
}

/**
 * Why the mesh serves this fingerprint for the name: the deployment names it, this node holds
 * it, it is the only one, most member hosts have it, it was already chosen (a tie), or nothing
 * decides (a tie never seen before: no host is used until a deployment or a pin decides).
 */
export type FingerprintChoice = 'deployment' | 'local' | 'only' | 'majority' | 'incumbent' | 'ambiguous'

/** What decides between files of one name besides the hosts themselves. */
export interface RegistryPolicy {
  /** The fingerprint the model's deployment names (set when it was deployed), if any. */
  deployed?: (model: string) => string | undefined
  /** The fingerprint this node chose for the model before (breaks ties in favour of the incumbent). */
  incumbent?: (model: string) => string | undefined
}

/** A model as the mesh sees it: its replicas, and same-named files that differ (conflicts). */
export interface MeshModel {
  name: string
  /** The fingerprint the replicas share; null when nothing decides between the files (`ambiguous`). */
  fingerprint: string | null
  chosenBy: FingerprintChoice
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
    weight: Math.max(1, gpuGiB + (r?.cpu.cores ?? 1)),
    ...(m.source != null ? { source: m.source } : {}),
    ...(m.shards != null ? { shards: m.shards } : {})
  }
}

/**
 * Picks the file a name means. Never by the fingerprint's value (an attacker picks its own
 * fingerprint freely, the smallest included): the deployment's fingerprint, else this node's
 * copy, else the one most hosts have; a tie keeps the earlier choice, else stays undecided.
 */
export function chooseFingerprint (name: string, hosts: ReadonlyArray<Pick<ModelHost, 'fingerprint' | 'local'>>, policy: RegistryPolicy = {}): { fingerprint: string | null, chosenBy: FingerprintChoice } {
  const deployed = policy.deployed?.(name)
  // Strict: with a deployment naming a file, no other file of that name is served, even while none is up.
  if (deployed != null) return { fingerprint: deployed, chosenBy: 'deployment' }
  const local = hosts.find(h => h.local)
  if (local != null) return { fingerprint: local.fingerprint, chosenBy: 'local' }
  const counts = new Map<string, number>()
  for (const h of hosts) counts.set(h.fingerprint, (counts.get(h.fingerprint) ?? 0) + 1)
  if (counts.size === 1) return { fingerprint: hosts[0].fingerprint, chosenBy: 'only' }
  const most = Math.max(...counts.values())
  const top = [...counts.entries()].filter(([, n]) => n === most).map(([fp]) => fp)
  if (top.length === 1) return { fingerprint: top[0], chosenBy: 'majority' }
  const incumbent = policy.incumbent?.(name)
  if (incumbent != null && top.includes(incumbent)) return { fingerprint: incumbent, chosenBy: 'incumbent' }
  return { fingerprint: null, chosenBy: 'ambiguous' }
}

/** Shortest fingerprint prefix a client may pin with (48 bits: no accidental collisions among a mesh's files). */
export const MIN_PIN_HEX = 12

/**
 * The hosts of `model` whose file matches the client's pin (`x-shepherd-model-fingerprint`): a
 * full sha256 or a unique prefix of at least 12 hex digits, among every file of that name
 * (conflicts included: a pin is how a client reaches a file the mesh does not choose by default).
 */
export function pinnedHosts (model: MeshModel, pin: string): ModelHost[] {
  const want = pin.trim().toLowerCase()
  if (!/^[0-9a-f]+$/.test(want) || want.length < MIN_PIN_HEX || want.length > 64) {
    throw new InvalidFingerprintPinError(`x-shepherd-model-fingerprint must be a sha256 (64 hex digits) or a prefix of at least ${MIN_PIN_HEX}`)
  }
  const all = [...model.hosts, ...model.conflicts]
  const matching = new Set(all.filter(h => h.fingerprint.startsWith(want)).map(h => h.fingerprint))
  if (matching.size === 0) throw new ModelFingerprintNotFoundError(model.name, want)
  if (matching.size > 1) throw new InvalidFingerprintPinError(`'${want}' is a prefix of ${matching.size} files of '${model.name}'; give more digits`)
  const [fingerprint] = matching
  return all.filter(h => h.fingerprint === fingerprint)
}

/**
 * Builds the mesh's model table from this node and its alive peers' snapshots. Replicas are the
 * hosts whose file fingerprint matches the one `chooseFingerprint` picks; the rest are
 * conflicts, reported and never routed to (unless a client pins their file).
 */
export function buildModelRegistry (self: PeerView, peers: PeerView[], policy: RegistryPolicy = {}): Map<string, MeshModel> {
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
    const { fingerprint, chosenBy } = chooseFingerprint(name, list.map(x => x.host), policy)
    const primary = list.filter(x => x.host.fingerprint === fingerprint)
    const ref = (primary[0] ?? list[0]).summary
    out.set(name, {
      name,
      fingerprint,
      chosenBy,
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
