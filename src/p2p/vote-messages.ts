import type { ValidateFunction } from 'ajv'
import { compileSchema } from './schemas.js'
import type { PrivateKey } from '@libp2p/interface'
import { MAX_NAME_LENGTH } from './constants.js'
import { signObject, verifyObject } from './signing.js'

/**
 * `/shepherd/vote/1.0.0`: leader elections per swarm group. One stream per exchange: the
 * requester sends one frame (`vote`: "vote for me at this term", or `cert`: "show me the proof of
 * the leadership you announce"), the responder answers one frame and closes.
 *
 * A vote is a signed statement by its voter; a leader's certificate is the votes of a majority
 * of its group's members for it at one term. Anyone can check a certificate offline: the voters'
 * keys are in their peer ids.
 */
export const VOTE_PROTOCOL = '/shepherd/vote/1.0.0'
export const VOTE_VERSION = 1
/** Signature domain of a vote: a vote can never pass for a command or a result, and back. */
export const VOTE_SIGNING_DOMAIN = 'shepherd/vote/1'
/**
 * Highest term a node takes part in. Terms grow by one election at a time, so 2^31 is never
 * reached honestly; above 2^53 `term + 1 === term`, which once left nodes disagreeing for good.
 */
export const MAX_TERM = 2 ** 31
/** Votes a certificate may carry: more members than this in one group is not a LAN. */
export const MAX_CERT_VOTES = 256
export const MAX_VOTE_REQUEST_BYTES = 4 * 1024
/** A certificate of MAX_CERT_VOTES votes (~200 bytes each) fits. */
export const MAX_VOTE_RESPONSE_BYTES = 96 * 1024
export const VOTE_READ_TIMEOUT_MS = 5_000
export const MAX_VOTE_STREAMS = 32

/** What a voter signs. */
export interface VoteStatement {
  group: string
  term: number
  candidate: string
  voter: string
}

export interface SignedVote extends VoteStatement {
  sig: string
}

/** Proof of leadership: votes of a majority of `group`'s members for `leader` at `term`. */
export interface LeaderCertificate {
  v: 1
  group: string
  term: number
  leader: string
  /** One per voter; each signs `{ group, term, candidate: leader, voter }`. */
  votes: Array<{ voter: string, sig: string }>
}

export type VoteRequestFrame =
  | { v: 1, t: 'vote', group: string, term: number }
  | { v: 1, t: 'cert', group: string }

export type VoteResponseFrame =
  | { t: 'vote', vote: SignedVote }
  | { t: 'refused', code: string, message: string }
  | { t: 'cert', cert: LeaderCertificate | null }

const peerId = { type: 'string', pattern: '^[1-9A-HJ-NP-Za-km-z]{32,128}$' }
const group = { type: 'string', minLength: 1, maxLength: MAX_NAME_LENGTH }
const term = { type: 'integer', minimum: 0, maximum: MAX_TERM }
/** The exact form is checked when verified. */
const sig = { type: 'string', minLength: 1, maxLength: 256 }

const certSchema = {
  type: 'object',
  required: ['v', 'group', 'term', 'leader', 'votes'],
  additionalProperties: false,
  properties: {
    v: { const: VOTE_VERSION },
    group,
    term,
    leader: peerId,
    votes: {
      type: 'array',
      minItems: 1,
      maxItems: MAX_CERT_VOTES,
      items: { type: 'object', required: ['voter', 'sig'], additionalProperties: false, properties: { voter: peerId, sig } }
    }
  }
}

const requestSchema = {
  oneOf: [
    { type: 'object', required: ['v', 't', 'group', 'term'], additionalProperties: false, properties: { v: { const: VOTE_VERSION }, t: { const: 'vote' }, group, term } },
    { type: 'object', required: ['v', 't', 'group'], additionalProperties: false, properties: { v: { const: VOTE_VERSION }, t: { const: 'cert' }, group } }
  ]
}

const responseSchema = {
  oneOf: [
    {
      type: 'object',
      required: ['t', 'vote'],
      additionalProperties: false,
      properties: {
        t: { const: 'vote' },
        vote: { type: 'object', required: ['group', 'term', 'candidate', 'voter', 'sig'], additionalProperties: false, properties: { group, term, candidate: peerId, voter: peerId, sig } }
      }
    },
    { type: 'object', required: ['t', 'code', 'message'], additionalProperties: false, properties: { t: { const: 'refused' }, code: { type: 'string', pattern: '^[a-z][a-z0-9_]{0,63}$' }, message: { type: 'string', maxLength: 1024 } } },
    { type: 'object', required: ['t', 'cert'], additionalProperties: false, properties: { t: { const: 'cert' }, cert: { oneOf: [{ type: 'null' }, certSchema] } } }
  ]
}

let validators: { req: ValidateFunction<VoteRequestFrame>, res: ValidateFunction<VoteResponseFrame>, cert: ValidateFunction<LeaderCertificate> } | undefined
function v (): NonNullable<typeof validators> {
  if (validators == null) {
    validators = { req: compileSchema<VoteRequestFrame>(requestSchema), res: compileSchema<VoteResponseFrame>(responseSchema), cert: compileSchema<LeaderCertificate>(certSchema) }
  }
  return validators
}

/** Bounded, validated decoders (the frame size is bounded by the framer). Never throw. */
export function isVoteRequest (x: unknown): x is VoteRequestFrame { return v().req(x) }
export function isVoteResponse (x: unknown): x is VoteResponseFrame { return v().res(x) }
export function isLeaderCertificate (x: unknown): x is LeaderCertificate { return v().cert(x) }

/** Signs this node's vote for `candidate` at `term` of `group`. */
export async function signVote (key: PrivateKey, voter: string, s: Omit<VoteStatement, 'voter'>): Promise<SignedVote> {
  return await signObject(key, VOTE_SIGNING_DOMAIN, { group: s.group, term: s.term, candidate: s.candidate, voter })
}

/** True when `vote.sig` is `vote.voter`'s signature of exactly this statement. Never throws. */
export async function verifyVote (vote: SignedVote): Promise<boolean> {
  const statement = { group: vote.group, term: vote.term, candidate: vote.candidate, voter: vote.voter, sig: vote.sig }
  return await verifyObject(vote.voter, VOTE_SIGNING_DOMAIN, statement)
}
