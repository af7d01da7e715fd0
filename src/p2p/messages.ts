import type { ValidateFunction } from 'ajv'
import { compileSchema } from './schemas.js'
import { MAX_ADDRS, MAX_GROUPS, MAX_MEMBERSHIP_MESSAGE_BYTES, MAX_NAME_LENGTH, MEMBERSHIP_VERSION } from './constants.js'
import { MAX_WANTS } from './membership-limits.js'

/**
 * Membership wire messages, version 1. JSON on the gossip topic. The sender's identity is
 * never taken from the body: it is the gossipsub `from` field, which StrictSign proves.
 */
interface Common {
  v: 1
  /** Start time of the sender process: a restart is a new incarnation. */
  inc: number
  /** Per-incarnation counter; stale or replayed messages carry an old one. */
  seq: number
  /** Sender's wall clock (ms), informational only. */
  at: number
}

export interface HeartbeatMessage extends Common {
  t: 'hb'
  name: string
  groups: string[]
  /** Version of the sender's latest snapshot, so a receiver can tell it is missing one. */
  snap: number
  /** Requests running and waiting on the sender, for load balancing between snapshots. */
  load?: [active: number, queued: number]
  /** The sender's view of each of its groups' leadership: [group, term, leader id]. */
  lead?: Array<[group: string, term: number, leader: string]>
  /**
   * Peers whose latest snapshot the sender lacks (their heartbeats name a newer version than it
   * holds): each named peer publishes its snapshot again. Snapshots are pulled this way when one
   * was missed, instead of every node re-publishing its own to everyone periodically.
   */
  want?: string[]
}

export interface SnapshotMessage extends Common {
  t: 'snap'
  name: string
  groups: string[]
  snap: number
  /** Sender's listen multiaddrs, so peers that only heard of it through gossip can dial it. */
  addrs: string[]
  /** Application content (resources, models, ...), validated by its owner's schema. */
  data: Record<string, unknown>
  /**
   * As in a heartbeat: with SWIM, heartbeats go out only on change, so a peer that joins learns
   * the others' load and leadership views from the snapshots they send it.
   */
  load?: [active: number, queued: number]
  lead?: Array<[group: string, term: number, leader: string]>
}

export interface LeaveMessage extends Common {
  t: 'leave'
}

export type MembershipMessage = HeartbeatMessage | SnapshotMessage | LeaveMessage

const common = {
  v: { const: MEMBERSHIP_VERSION },
  inc: { type: 'integer', minimum: 0 },
  seq: { type: 'integer', minimum: 0 },
  at: { type: 'integer', minimum: 0 }
}
const identity = {
  name: { type: 'string', minLength: 1, maxLength: MAX_NAME_LENGTH },
  groups: { type: 'array', maxItems: MAX_GROUPS, items: { type: 'string', minLength: 1, maxLength: MAX_NAME_LENGTH } },
  snap: { type: 'integer', minimum: 0 }
}

/** Schemas of a node's load and leadership views, shared with SWIM frames (swim-protocol.ts). */
export const load = { type: 'array', minItems: 2, maxItems: 2, items: { type: 'integer', minimum: 0 } }
export const lead = {
  type: 'array',
  maxItems: MAX_GROUPS,
  items: {
    type: 'array',
    minItems: 3,
    maxItems: 3,
    items: [{ type: 'string', minLength: 1, maxLength: MAX_NAME_LENGTH }, { type: 'integer', minimum: 0 }, { type: 'string', minLength: 1, maxLength: 128 }]
  }
}

const schema = {
  oneOf: [
    {
      type: 'object',
      required: ['v', 't', 'inc', 'seq', 'at', 'name', 'groups', 'snap'],
      properties: {
        ...common,
        ...identity,
        t: { const: 'hb' },
        load,
        lead,
        want: { type: 'array', maxItems: MAX_WANTS, items: { type: 'string', minLength: 1, maxLength: 128 } }
      },
      additionalProperties: false
    },
    {
      type: 'object',
      required: ['v', 't', 'inc', 'seq', 'at', 'name', 'groups', 'snap', 'addrs', 'data'],
      properties: { ...common, ...identity, t: { const: 'snap' }, addrs: { type: 'array', maxItems: MAX_ADDRS, items: { type: 'string', maxLength: 256 } }, data: { type: 'object' }, load, lead },
      additionalProperties: false
    },
    { type: 'object', required: ['v', 't', 'inc', 'seq', 'at'], properties: { ...common, t: { const: 'leave' } }, additionalProperties: false }
  ]
}

let validator: ValidateFunction<MembershipMessage> | undefined
function validate (): ValidateFunction<MembershipMessage> {
  validator ??= compileSchema<MembershipMessage>(schema)
  return validator
}

export type DropReason = 'oversized' | 'malformed_json' | 'invalid_schema' | 'unsupported_version'

export type DecodeResult = { ok: true, message: MembershipMessage } | { ok: false, reason: DropReason }

const encoder = new TextEncoder()
const decoder = new TextDecoder('utf-8', { fatal: true })

export function encodeMembership (msg: MembershipMessage): Uint8Array {
  return encoder.encode(JSON.stringify(msg))
}

/** Decodes and validates one message; never throws. */
export function decodeMembership (bytes: Uint8Array): DecodeResult {
  if (bytes.byteLength > MAX_MEMBERSHIP_MESSAGE_BYTES) return { ok: false, reason: 'oversized' }
  let parsed: unknown
  try {
    parsed = JSON.parse(decoder.decode(bytes))
  } catch {
    return { ok: false, reason: 'malformed_json' }
  }
  // A newer protocol version is not an attack: ignored without penalty (see the topic validator).
  if (typeof parsed === 'object' && parsed !== null && 'v' in parsed && (parsed as { v: unknown }).v !== MEMBERSHIP_VERSION && Number.isInteger((parsed as { v: unknown }).v)) {
    return { ok: false, reason: 'unsupported_version' }
  }
  if (!validate()(parsed)) return { ok: false, reason: 'invalid_schema' }
  return { ok: true, message: parsed }
}
