/**
 * When a worker's rpc-server has outlived its split (issue 16): the split moved to other nodes,
 * the deployment was deleted, or the head's load failed after the worker said yes. Nothing tells
 * the worker so (the leader's `serve_rpc {stop}` can be lost, the leader can change), so the
 * worker decides itself, from what it sees: a grant is idle when no tunnel of its head is open,
 * none has been for a while, and the head's own snapshot does not name this node in a loaded
 * (or loading) split of that model. Pure; split-node.ts runs it on a timer.
 */

export const RPC_IDLE_DEFAULTS = Object.freeze({
  /**
   * After the head's last tunnel closed. llama.cpp keeps its RPC connections open for as long
   * as the model is loaded, so a closed one means an unload, a crash or a reload in progress;
   * a reload reconnects within seconds.
   */
  idleMs: 15_000,
  /**
   * A grant whose head never connected: the head may still be pulling the file (minutes for a
   * large model) before its llama-server dials the worker.
   */
  unusedMs: 10 * 60_000,
  /** How often a worker looks. */
  sweepMs: 5_000
})

/** One grant as the sweep sees it. */
export interface GrantUse {
  model: string
  head: string
  /** When this grant (for this head) began, ms. */
  startedAt: number
  /** Tunnels of this head for this model open now. */
  open: number
  /** When one last opened or closed, ms; null when never (for this grant). */
  lastAt: number | null
  /** Whether the head's latest snapshot names this node in a loaded or loading split of the model. */
  headNamesMe: boolean
}

/** The grants to stop now. Pure. */
export function idleGrants (grants: GrantUse[], now: number, opts: { idleMs: number, unusedMs: number } = RPC_IDLE_DEFAULTS): GrantUse[] {
  return grants.filter(g => {
    if (g.open > 0 || g.headNamesMe) return false
    const used = g.lastAt != null && g.lastAt >= g.startedAt
    return used ? now - (g.lastAt as number) >= opts.idleMs : now - g.startedAt >= opts.unusedMs
  })
}

/** Whether a head's snapshot models name `self` in a loaded or loading split of `model`. Pure. */
export function headNamesWorker (models: unknown, model: string, self: string): boolean {
  if (!Array.isArray(models)) return false
  return models.some((m: { name?: unknown, state?: unknown, shards?: unknown }) =>
    m?.name === model && m.state !== 'on_disk' && Array.isArray(m.shards) &&
    m.shards.some((s: { nodeId?: unknown } | null) => s?.nodeId === self))
}
