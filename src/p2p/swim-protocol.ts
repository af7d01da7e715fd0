import type { ValidateFunction } from 'ajv'
import { compileSchema } from './schemas.js'
import type { SwimMessage, SwimStatus, SwimUpdate } from './swim.js'
import { lead, load } from './messages.js'

/**
 * SWIM failure detection between members (issue 14, "constant per-node cost"), two versions of
 * one frame format (a varint length, then JSON; see framing.ts), checked once here and fed to
 * `swim.ts`'s `step`:
 * - `/shepherd/swim/1.1.0` (a link): one long-lived stream per pair of members carries frames
 *   both ways, in a row: probes, acks and pokes cost one encrypted write each, not a stream
 *   (yamux open, protocol negotiation, close) apiece, which was most of an idle node's cost.
 *   Whichever member needs it first opens it; an idle link is closed (`SWIM_LINK_IDLE_MS`).
 * - `/shepherd/swim/1.0.0`: one frame per stream (open, write, close), for members that do not
 *   speak 1.1.0 yet; still answered, and used when a dial negotiates it.
 *
 * The sender's identity is the stream's authenticated remote peer, never a field of the frame.
 * What a member says about itself (the frame's `inc`: "I am alive at this incarnation") is taken
 * as it is; what it says about third parties is screened (`screenUpdates`), because one hostile
 * member could otherwise declare honest nodes dead or push their incarnations out of range.
 */
export const SWIM_PROTOCOL = '/shepherd/swim/1.0.0'
/** The link version: many frames, both ways, on one stream per pair of members. */
export const SWIM_LINK_PROTOCOL = '/shepherd/swim/1.1.0'
/** A link that carried no frame either way for this long is closed (reopened when next needed). */
export const SWIM_LINK_IDLE_MS = 30_000
/** Links one connection may open to this node at once (honestly one; two when both ends dial at once). */
export const MAX_SWIM_LINKS = 4
/**
 * Frames a member may send this node per second over links (burst: twice that). An honest member
 * sends a few (a probe, acks to this node's probes, a poke); a flood of frames is dropped, and
 * one that keeps flooding has its link reset and is audited.
 */
export const MAX_SWIM_FRAMES_PER_SEC = 40
export const SWIM_VERSION = 1
/** Largest frame: 16 updates of ~120 bytes, 32 leadership views of ~200 and the envelope; an honest frame is < 2 KiB. */
export const MAX_SWIM_FRAME_BYTES = 16 * 1024
/** Updates one frame may carry (swim.ts piggybacks at most 8, the driver adds 1 or 2). */
export const MAX_SWIM_UPDATES = 16
/** Incarnations on the wire stay below this (start: the process's start time in ms, ~1.8e12). */
export const MAX_SWIM_INCARNATION = 2 ** 51
/**
 * How far a third party may move a member's incarnation forward in one claim. A refutation moves
 * it by one; more than this is a member pushing others' incarnations towards the limit, after
 * which they could no longer refute.
 */
export const MAX_THIRD_PARTY_INC_JUMP = 1024
/**
 * A suspicion with no confirmation lasts this multiple of its minimum (memberlist: 6). Lower than
 * memberlist's so that silent loss is seen within the 5 s in a small mesh, where fewer
 * members are there to confirm it; a wrongly suspected member still refutes well within it.
 */
export const SWIM_SUSPICION_MAX_MULT = 3
/** Streams of this protocol open at once per connection, each way (one frame each, short-lived). */
export const MAX_SWIM_STREAMS = 32
/** A peer that opens a stream must send its frame within this time. */
export const SWIM_READ_TIMEOUT_MS = 2_000

/** One frame: the message for `step`, and what the sender says of itself. */
export interface SwimFrame {
  v: 1
  /** The sender's SWIM incarnation: it is alive at it. */
  inc: number
  /** The sender's process start time (its gossip incarnation): two values for one id are two processes. */
  boot: number
  /** Version of the sender's latest snapshot (a receiver that lacks it asks for it). */
  snap: number
  /**
   * The sender's load and leadership views, as in a heartbeat. Heartbeats go out on change only;
   * these reach the few members a node talks to each interval, so a view missed (or a newcomer)
   * is caught up within a probe round at a cost that does not grow with the mesh.
   */
  load?: [active: number, queued: number]
  lead?: Array<[group: string, term: number, leader: string]>
  m: SwimMessage
}

const peerId = { type: 'string', pattern: '^[1-9A-HJ-NP-Za-km-z]{32,128}$' }
const counter = { type: 'integer', minimum: 0, maximum: MAX_SWIM_INCARNATION }
const update = {
  type: 'array',
  minItems: 4,
  maxItems: 4,
  items: [peerId, counter, { enum: ['alive', 'suspect', 'dead', 'left'] }, peerId]
}
const updates = { type: 'array', maxItems: MAX_SWIM_UPDATES, items: update }
const message = {
  oneOf: [
    { type: 'object', required: ['t', 'seq', 'u'], additionalProperties: false, properties: { t: { enum: ['ping', 'ack', 'nack'] }, seq: counter, u: updates } },
    { type: 'object', required: ['t', 'seq', 'target', 'u'], additionalProperties: false, properties: { t: { const: 'ping-req' }, seq: counter, target: peerId, u: updates } },
    { type: 'object', required: ['t', 'u'], additionalProperties: false, properties: { t: { const: 'gossip' }, u: updates } }
  ]
}
const frameSchema = {
  type: 'object',
  required: ['v', 'inc', 'boot', 'snap', 'm'],
  additionalProperties: false,
  properties: { v: { const: SWIM_VERSION }, inc: counter, boot: counter, snap: { type: 'integer', minimum: 0 }, load, lead, m: message }
}

let validator: ValidateFunction<SwimFrame> | undefined
function validate (): ValidateFunction<SwimFrame> {
  validator ??= compileSchema<SwimFrame>(frameSchema)
  return validator
}

/** Whether `x` (a parsed frame) is a well-formed SWIM frame of this version. Never throws. */
export function isSwimFrame (x: unknown): x is SwimFrame {
  return validate()(x)
}

/** What this node knows of a member, for screening claims about it. */
export type MemberView = (id: string) => { inc: number, status: SwimStatus } | undefined

export interface ScreenDeps {
  self: string
  /** This node's current SWIM incarnation. */
  selfInc: number
  view: MemberView
  /** Whether this node can vouch for `id` (connected, or in its ledger): only those become members. */
  verified: (id: string) => boolean
}

/**
 * The updates of a frame from `from` that this node lets reach `step`, first among them the
 * sender's own aliveness at `frame.inc`, and how many were dropped or downgraded. Pure. Rules, each against one hostile member:
 * - about this node: only at our incarnation (a claim far ahead would make us refute at an
 *   incarnation we can no longer raise);
 * - about the sender itself: `alive` and `left` are its word; it cannot suspect itself;
 * - about a third party: only a member this node can verify (no ghosts enter the probe list);
 *   `suspect` only at an incarnation this node knows (or below); `dead` and `left` count as
 *   `suspect` (the honest peer hears of it and refutes, and nobody evicts it on one member's
 *   word: this node's own suspicion timer decides); `alive` moves an incarnation forward by at
 *   most `MAX_THIRD_PARTY_INC_JUMP`.
 */
export function screenUpdates (from: string, frame: SwimFrame, d: ScreenDeps): { updates: SwimUpdate[], screened: number } {
  const out: SwimUpdate[] = [[from, frame.inc, 'alive', from]]
  let downgraded = 0
  for (const u of frame.m.u) {
    const [id, inc, status, reporter] = u
    if (id === d.self) {
      // At our incarnation: we refute. Below it: stale, we answer with our incarnation (swim.ts).
      if ((status === 'suspect' || status === 'dead') && inc <= d.selfInc) out.push(u)
      continue
    }
    if (id === from) {
      if (status === 'alive' || status === 'left') out.push(u)
      continue
    }
    if (!d.verified(id)) continue
    const known = d.view(id)
    if (status === 'alive') {
      if (known == null || inc <= known.inc + MAX_THIRD_PARTY_INC_JUMP) out.push(u)
      continue
    }
    if (known == null || inc > known.inc) continue
    if (status !== 'suspect') downgraded++
    out.push([id, inc, 'suspect', reporter])
  }
  return { updates: out, screened: frame.m.u.length + 1 - out.length + downgraded }
}

const encoder = new TextEncoder()

/** The encoded body of a frame (the framer adds the length). */
export function encodeSwimFrame (frame: SwimFrame): Uint8Array {
  return encoder.encode(JSON.stringify(frame))
}
