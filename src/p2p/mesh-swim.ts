/**
 * The mesh's SWIM glue: builds the `SwimDriver` from the mesh's options and carries what SWIM
 * learns into the peer table. Kept apart from `mesh.ts` so the mesh only decides *whether*
 * liveness comes from SWIM probes or from flooded heartbeats.
 */
import type { Host } from './host.js'
import { onSwimStatus, type PeerTable } from './membership.js'
import { SWIM_LAN_DEFAULTS, type SwimStatus } from './swim.js'
import { SwimDriver } from './swim-driver.js'
import { SWIM_SUSPICION_MAX_MULT, type SwimFrame } from './swim-protocol.js'

/** SWIM timings a node may set (absent: memberlist's LAN numbers, `SWIM_LAN_DEFAULTS`). */
export interface MeshSwimTimings {
  swimProbeIntervalMs?: number
  swimProbeTimeoutMs?: number
  swimSuspicionMult?: number
}

/** What the glue needs of the mesh: its peer table and a few narrow hooks. */
export interface MeshSwimContext<S> {
  table: PeerTable<S>
  /** Peers whose advertised snapshot this node lacks; the next heartbeat's `want` asks for them. */
  missing: Map<string, { since: number, askedAt: number }>
  /** The process start time: first incarnation and duplicate-identity evidence sent in every frame. */
  incarnation: number
  snapshotVersion: () => number
  meta: () => Pick<SwimFrame, 'load' | 'lead'>
  /** Whether this node can vouch for `id` itself (connected or verified gossip, and a member). */
  verified: (id: string) => boolean
  /** Duplicate-identity check of a frame's boot time; true when `from` is a duplicate. */
  checkIdentity: (from: string, boot: number, now: number) => boolean
  /** A member's frame arrived: this node is not cut off. */
  heard: (now: number) => void
  stopping: () => boolean
  onLead: (from: string, lead: NonNullable<SwimFrame['lead']>) => void
  onViolation: (peer: string, reason: string) => void
}

/** Starts SWIM on `host` and returns its driver; members are added by the caller as they connect. */
export async function startMeshSwim<S> (host: Host, timings: MeshSwimTimings, ctx: MeshSwimContext<S>): Promise<SwimDriver> {
  const swim = new SwimDriver(host, {
    config: {
      ...SWIM_LAN_DEFAULTS,
      probeIntervalMs: timings.swimProbeIntervalMs ?? SWIM_LAN_DEFAULTS.probeIntervalMs,
      probeTimeoutMs: timings.swimProbeTimeoutMs ?? SWIM_LAN_DEFAULTS.probeTimeoutMs,
      suspicionMult: timings.swimSuspicionMult ?? SWIM_LAN_DEFAULTS.suspicionMult,
      suspicionMaxMult: SWIM_SUSPICION_MAX_MULT
    },
    incarnation: ctx.incarnation,
    boot: ctx.incarnation,
    snapshotVersion: ctx.snapshotVersion,
    meta: ctx.meta,
    verified: ctx.verified,
    onChange: (id, status) => { onSwimChange(ctx, id, status) },
    onFrame: (from, frame) => { onSwimFrame(ctx, swim, from, frame) },
    onRtt: (id, ms) => { ctx.table.patch(id, { rttMs: Math.round(ms * 100) / 100 }) },
    onViolation: ctx.onViolation
  })
  await swim.start()
  return swim
}

/** SWIM changed its view of a member: the peer table follows (see `onSwimStatus`). */
function onSwimChange<S> (ctx: MeshSwimContext<S>, id: string, status: SwimStatus): void {
  if (ctx.stopping()) return
  const rec = ctx.table.get(id)
  // Records are made by connections and verified gossip only; SWIM never adds one.
  if (rec == null) return
  ctx.table.apply(rec, onSwimStatus(rec, status, Date.now()))
}

/**
 * A member's SWIM frame: its process start time is duplicate-identity evidence, its load and
 * leadership views are the latest, and its snapshot version tells this node that it missed a
 * snapshot (asked for with the next heartbeat's `want`).
 */
function onSwimFrame<S> (ctx: MeshSwimContext<S>, swim: SwimDriver, from: string, frame: SwimFrame): void {
  const now = Date.now()
  const duplicate = ctx.checkIdentity(from, frame.boot, now)
  const rec = ctx.table.get(from)
  if (rec == null || rec.lastSeen === 0 || duplicate) return
  ctx.heard(now)
  // Taken for suspect or dead while this node heard nobody (cut off, see `Mesh.tick`), yet alive
  // in SWIM's view all along: it speaks again, so it is alive again.
  if ((rec.status === 'suspect' || rec.status === 'dead') && swim.member(from)?.status === 'alive') {
    ctx.table.apply(rec, onSwimStatus(rec, 'alive', now))
  }
  if (frame.load != null) ctx.table.patch(from, { load: { active: frame.load[0], queued: frame.load[1], at: now } })
  if (frame.lead != null && frame.lead.length > 0) ctx.onLead(from, frame.lead)
  if (frame.boot > rec.incarnation || (frame.boot === rec.incarnation && frame.snap > rec.snapshotVersion)) {
    if (!ctx.missing.has(from)) ctx.missing.set(from, { since: now, askedAt: 0 })
  } else if (frame.boot === rec.incarnation) {
    ctx.missing.delete(from)
  }
}
