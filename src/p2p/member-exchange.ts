import { peerIdFromString } from '@libp2p/peer-id'
import type { Connection, Stream } from '@libp2p/interface'
import type { ValidateFunction } from 'ajv'
import { TimeoutError, WireError } from '../errors.js'
import { createLogger } from '../logger.js'
import { FramedStream } from './framing.js'
import type { Host } from './host.js'
import { compileSchema } from './schemas.js'
import { TokenBuckets } from './token-buckets.js'

/**
 * `/shepherd/members/1.0.0`: push-pull anti-entropy of the member list (memberlist's push-pull).
 *
 * Why: a node learns of members it is not connected to from their gossiped snapshots, which go
 * out on a change and then stop. A newcomer whose dial to a member failed while the seed was
 * swamped (a 48-node mesh coming up on two cores) never heard of that member again, and the mesh
 * never became whole: half the pairs had not met 4 minutes after the last node started.
 * Re-publishing snapshots to everyone to cover that costs every node a message per node.
 *
 * Shape: the dialer sends one frame `{ v: 1, m: [[id, addrs], ...] }` naming the members it is
 * connected to (so has verified) and itself; the answer is the same frame from the other side.
 * Each side dials the members it lacks, as hints: bounded in number, rate-limited and dropped
 * after failed dials (redialer.ts), because a member can name any id at any address. A node runs
 * one exchange with one random connected member every interval (scaled up past 32 members as
 * memberlist scales its push-pull) and one with each member it meets, which is how a newcomer
 * learns the whole mesh from its seed.
 *
 * Bounds: at most `MAX_LISTED_MEMBERS` entries of `MAX_MEMBER_ADDRS` addresses; a peer is
 * answered at most `EXCHANGES_PER_SEC` times a second (burst `EXCHANGE_BURST`), past that the
 * stream is reset and the peer reported; a stream that sends no list within
 * `EXCHANGE_READ_TIMEOUT_MS` (the requester's own limit) is reset and reported; one ended
 * with nothing sent is refused unreported; non-members are refused.
 */
export const MEMBERS_PROTOCOL = '/shepherd/members/1.0.0'
export const MAX_LISTED_MEMBERS = 1024
export const MAX_MEMBER_ADDRS = 4
const MAX_ADDR_CHARS = 256
/** 1,024 entries of a 52-character id and four addresses fit with room to spare. */
const MAX_FRAME_BYTES = 1024 * 1024
/** Periodic exchanges run this often with up to 32 members (memberlist's LAN push-pull is 30 s; a newcomer missed by one is met within this). */
export const MEMBER_EXCHANGE_BASE_MS = 10_000
/**
 * Period of exchanges while they still teach this node members it lacked (it is joining, or a
 * newcomer's dial to it failed while the host was busy): a missed introduction is repaired in
 * seconds, not at the next scaled period (20 s at 48 members). A settled mesh's lists teach
 * nothing, so it costs nothing there.
 */
export const MEMBER_EXCHANGE_FAST_MS = 2_000
/** How long exchanges stay fast after the last list that named a member this node lacked. */
export const MEMBER_EXCHANGE_FAST_WINDOW_MS = 20_000
/** A requester's whole exchange, dial to answer: it gives up (and ends its stream) past this. */
const EXCHANGE_TIMEOUT_MS = 5000
/**
 * How long a served stream may stay silent: the requester's own limit, so that only a stream
 * kept open past the point where an honest requester has given up is reported (a member merely
 * slow on a saturated host ends its stream, which is refused without a report).
 */
export const EXCHANGE_READ_TIMEOUT_MS = EXCHANGE_TIMEOUT_MS
const EXCHANGES_PER_SEC = 0.5
const EXCHANGE_BURST = 4
const MAX_STREAMS = 8

/** One listed member: its id and where it listens. */
export type MemberEntry = [id: string, addrs: string[]]
interface MembersFrame { v: 1, m: MemberEntry[] }

let validFrame: ValidateFunction<MembersFrame> | undefined
/** Whether `x` is a well-formed members frame (validated once, at the boundary). */
export function isMembersFrame (x: unknown): x is MembersFrame {
  validFrame ??= compileSchema<MembersFrame>({
    type: 'object',
    additionalProperties: false,
    required: ['v', 'm'],
    properties: {
      v: { const: 1 },
      m: {
        type: 'array',
        maxItems: MAX_LISTED_MEMBERS,
        items: {
          type: 'array',
          minItems: 2,
          maxItems: 2,
          items: [
            { type: 'string', pattern: '^[1-9A-HJ-NP-Za-km-z]{32,128}$' },
            { type: 'array', maxItems: MAX_MEMBER_ADDRS, items: { type: 'string', maxLength: MAX_ADDR_CHARS } }
          ]
        }
      }
    }
  })
  return validFrame(x)
}

/**
 * memberlist's push-pull scale: the base interval up to 32 members, then one more interval for
 * each doubling, so a large mesh's exchanges (each O(members) bytes) do not grow its per-node cost.
 */
export function exchangeIntervalMs (baseMs: number, members: number): number {
  if (members <= 32) return baseMs
  return baseMs * (Math.ceil(Math.log2(members) - Math.log2(32)) + 1)
}

/** The next exchange's delay: fast while lists still teach (`fastUntil` ahead of `now`), else scaled. */
export function nextExchangeMs (now: number, fastUntil: number, members: number, baseMs = MEMBER_EXCHANGE_BASE_MS): number {
  return now < fastUntil ? MEMBER_EXCHANGE_FAST_MS : exchangeIntervalMs(baseMs, members)
}

export interface MemberExchangeDeps {
  /** The members this node vouches for (connected, so authenticated) and itself, with addresses. */
  list: () => MemberEntry[]
  /** A member list from `from` (the stream's authenticated peer): dial those this node lacks. */
  onMembers: (from: string, members: MemberEntry[]) => void
  /** Only members are answered and asked. */
  isMember: (peer: string) => boolean
  onViolation?: (peer: string, reason: string) => void
}

export interface MemberExchangeStats {
  exchanged: number
  failures: number
  served: number
  refused: number
}

/** Runs and answers member-list exchanges. */
export class MemberExchange {
  private readonly log = createLogger('p2p:members')
  private readonly buckets = new TokenBuckets(EXCHANGES_PER_SEC, EXCHANGE_BURST)
  private readonly inFlight = new Set<string>()
  private stopped = false
  readonly stats: MemberExchangeStats = { exchanged: 0, failures: 0, served: 0, refused: 0 }

  constructor (private readonly host: Host, private readonly deps: MemberExchangeDeps) {}

  async start (): Promise<void> {
    await this.host.handle(MEMBERS_PROTOCOL, (stream, conn) => {
      this.serve(stream, conn).catch(err => {
        this.log.debug('members stream failed', { err })
        stream.abort(err)
      })
    }, { maxInboundStreams: MAX_STREAMS, maxOutboundStreams: MAX_STREAMS })
  }

  async stop (): Promise<void> {
    this.stopped = true
    await this.host.unhandle(MEMBERS_PROTOCOL).catch(() => {})
  }

  /** Exchanges member lists with `peer` (a connected member); one at a time per peer. */
  async exchange (peer: string): Promise<void> {
    if (this.stopped || this.inFlight.has(peer) || !this.deps.isMember(peer)) return
    this.inFlight.add(peer)
    let stream: Stream | undefined
    const signal = AbortSignal.timeout(EXCHANGE_TIMEOUT_MS)
    try {
      stream = await this.host.dialProtocol(peerIdFromString(peer), MEMBERS_PROTOCOL, { signal })
      const framed = new FramedStream(stream, { read: MAX_FRAME_BYTES, write: MAX_FRAME_BYTES })
      await framed.write(this.frame(), signal)
      const answer = await framed.read(signal)
      await stream.close().catch(() => {})
      if (!isMembersFrame(answer)) {
        this.deps.onViolation?.(peer, 'not a member list')
        throw new WireError('the answer is not a member list', 'malformed')
      }
      this.stats.exchanged++
      this.deps.onMembers(peer, answer.m)
    } catch (err) {
      this.stats.failures++
      stream?.abort(err instanceof Error ? err : new Error(String(err)))
      this.log.debug('member exchange failed', { peer, err })
    } finally {
      this.inFlight.delete(peer)
    }
  }

  private frame (): MembersFrame {
    const m = this.deps.list().slice(0, MAX_LISTED_MEMBERS).map(([id, addrs]): MemberEntry => [id, addrs.filter(a => a.length <= MAX_ADDR_CHARS).slice(0, MAX_MEMBER_ADDRS)])
    return { v: 1, m }
  }

  private async serve (stream: Stream, conn: Connection): Promise<void> {
    const peer = conn.remotePeer.toString()
    if (!this.deps.isMember(peer)) {
      this.stats.refused++
      stream.abort(new WireError('member lists are exchanged with members only', 'unauthorized'))
      return
    }
    if (!this.buckets.take(peer)) {
      this.stats.refused++
      this.deps.onViolation?.(peer, `member exchanges past ${EXCHANGES_PER_SEC}/s`)
      stream.abort(new WireError('too many member exchanges', 'rate_limited'))
      return
    }
    const framed = new FramedStream(stream, { read: MAX_FRAME_BYTES, write: MAX_FRAME_BYTES })
    let req: unknown
    let problem: string | undefined
    try {
      req = await framed.read(undefined, EXCHANGE_READ_TIMEOUT_MS)
    } catch (err) {
      problem = err instanceof TimeoutError ? `no member list within ${EXCHANGE_READ_TIMEOUT_MS} ms` : 'not a member list'
    }
    if (!isMembersFrame(req)) {
      this.stats.refused++
      // Ended with nothing sent (null): a requester that gave up (or was stopped), not a misbehaviour.
      problem ??= req === null ? undefined : 'not a member list'
      if (problem !== undefined) this.deps.onViolation?.(peer, problem)
      stream.abort(new WireError(problem ?? 'no member list', 'malformed'))
      return
    }
    this.stats.served++
    await framed.write(this.frame())
    await stream.close()
    this.deps.onMembers(peer, req.m)
  }
}
