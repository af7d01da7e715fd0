/**
 * A deployment's progress (issue 15 item 4) as `/api/deployments` shows it: one row per replica
 * (pending, transferring with bytes and %, loading, loaded, failed) and a phase for the whole.
 * Pure: the reconciler's status and the members' transfer rows in, the view out. The shape is
 * written down in docs (README "Deployments and progress") for the console and scripts.
 */
import { percentOf, type Deployment, type ProgressEvent } from '../node/index.js'
import type { DeploymentStatus } from '../scheduler/index.js'

export type DeploymentPhase = 'pending' | 'transferring' | 'loading' | 'placed' | 'failed' | 'unplaceable'

export interface ReplicaProgress {
  nodeId: string
  name: string
  phase: 'pending' | 'transferring' | 'loading' | 'loaded' | 'failed'
  receivedBytes: number | null
  totalBytes: number | null
  percent: number | null
  bytesPerSec: number | null
  error: string | null
  updatedAt: string
}

export interface DeploymentProgress {
  phase: DeploymentPhase
  desired: number
  placed: number
  replicas: ReplicaProgress[]
}

/** The progress view of `d`, from the reconciler's `status` and every member's transfer rows. */
export function deploymentProgress (d: Pick<Deployment, 'model' | 'replicas' | 'fingerprint'>, status: Pick<DeploymentStatus, 'actual' | 'pending' | 'unplaceable'>, rows: readonly ProgressEvent[], now = Date.now()): DeploymentProgress {
  const replicas = new Map<string, ReplicaProgress>()
  const at = new Date(now).toISOString()
  // Rows of this model (of the deployment's file when it names one); a row of another file is not this deployment's.
  for (const r of rows) {
    if (r.model !== d.model) continue
    if (d.fingerprint != null && r.fingerprint != null && r.fingerprint !== d.fingerprint) continue
    replicas.set(r.nodeId, {
      nodeId: r.nodeId,
      name: r.name,
      phase: r.phase,
      receivedBytes: r.receivedBytes,
      totalBytes: r.totalBytes,
      percent: percentOf(r),
      bytesPerSec: r.phase === 'transferring' ? r.bytesPerSec : null,
      error: r.error,
      updatedAt: new Date(r.at).toISOString()
    })
  }
  // What the snapshots show wins for a replica that is loaded (a row may lag a snapshot behind).
  let placed = 0
  for (const a of status.actual) {
    const row = replicas.get(a.nodeId)
    if (a.state === 'loaded') {
      placed++
      replicas.set(a.nodeId, { ...(row ?? { nodeId: a.nodeId, name: a.name, receivedBytes: null, totalBytes: null, bytesPerSec: null, error: null, updatedAt: at }), phase: 'loaded', percent: 100, bytesPerSec: null, error: null })
    } else if (row == null) {
      replicas.set(a.nodeId, { nodeId: a.nodeId, name: a.name, phase: 'loading', receivedBytes: null, totalBytes: null, percent: null, bytesPerSec: null, error: null, updatedAt: at })
    }
  }
  // Placed by the leader, nothing heard from the node yet (known on the leader only).
  for (const id of status.pending) {
    if (!replicas.has(id)) replicas.set(id, { nodeId: id, name: '', phase: 'pending', receivedBytes: null, totalBytes: null, percent: null, bytesPerSec: null, error: null, updatedAt: at })
  }
  // A `loaded` row of a node that no longer holds the replica (retired, unloaded) is history.
  const holding = new Set(status.actual.map(a => a.nodeId))
  const list = [...replicas.values()].filter(r => r.phase !== 'loaded' || holding.has(r.nodeId))
  const some = (p: ReplicaProgress['phase']): boolean => list.some(r => r.phase === p)
  const phase: DeploymentPhase = placed >= d.replicas
    ? 'placed'
    : some('transferring') ? 'transferring'
      : some('loading') ? 'loading'
        : status.unplaceable > 0 ? 'unplaceable'
          : some('failed') && !some('pending') ? 'failed'
            : 'pending'
  return { phase, desired: d.replicas, placed, replicas: list.sort((a, b) => a.name.localeCompare(b.name) || a.nodeId.localeCompare(b.nodeId)) }
}
