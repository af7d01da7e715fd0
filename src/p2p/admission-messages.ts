import { createHash } from 'node:crypto'
import type { ValidateFunction } from 'ajv'
import { compileSchema } from './schemas.js'
import type { PrivateKey } from '@libp2p/interface'
import { canonicalJson, signObject, verifyObject } from './signing.js'
import { stripControl } from './text.js'

/**
 * Wire types of membership (issue 11 item 1): signed ledger statements and the frames of the
 * `/shepherd/admission/1.0.0` protocol. Version 1, JSON, validated once here, at the boundary.
 */

export const ADMISSION_PROTOCOL = '/shepherd/admission/1.0.0'
export const ADMISSION_VERSION = 1
/** Signature domain of ledger statements: a command signature is never valid as one. */
export const STATEMENT_DOMAIN = 'shepherd-membership-statement-v1'
/** Signature domain of invite tokens. */
export const INVITE_DOMAIN = 'shepherd-invite-v1'
/** Most statements a ledger holds or a frame carries (an admit and a revoke per machine of a big LAN fit). */
export const MAX_LEDGER_STATEMENTS = 1024
/** Largest admission frame (a full ledger: ~400 bytes a statement). */
export const MAX_ADMISSION_FRAME_BYTES = 512 * 1024
/** A peer that opens an admission stream must send its request within this time. */
export const ADMISSION_READ_TIMEOUT_MS = 5_000
/** One random connected peer gets a hello this often (members whose digests differ then sync). */
export const ADMISSION_RESYNC_MS = 5_000
/** Most admission streams a peer may hold open at once. */
export const MAX_ADMISSION_STREAMS = 8
/** Statements dated further in the future than this are refused (clock skew allowance). */
export const MAX_STATEMENT_SKEW_MS = 5 * 60_000
export const MAX_MEMBER_NAME = 64

const PEER_ID = '^[1-9A-HJ-NP-Za-km-z]{32,128}$'
const MESH_ID = '^[0-9a-f]{32}$'

/** Founding of a mesh: the founder's self statement; its `mesh` is the mesh id. */
export interface FoundStatement { v: 1, t: 'found', mesh: string, subject: string, issuer: string, name: string, at: number, sig: string }
/** `issuer` (a member) admits `subject` under `name`. */
export interface AdmitStatement { v: 1, t: 'admit', mesh: string, subject: string, issuer: string, name: string, at: number, sig: string }
/** `issuer` (a member) revokes `subject`: it is no member from `at` on, unless a later admit. */
export interface RevokeStatement { v: 1, t: 'revoke', mesh: string, subject: string, issuer: string, at: number, sig: string }
export type Statement = FoundStatement | AdmitStatement | RevokeStatement
export type UnsignedStatement = Omit<FoundStatement, 'sig'> | Omit<AdmitStatement, 'sig'> | Omit<RevokeStatement, 'sig'>

/** What a node says about itself on connect. */
export interface HelloFrame { v: 1, t: 'hello', mesh: string, name: string, digest: string, count: number, /** In a reply: whether the asker is a member of the replier's mesh. */ member?: boolean }
/** Asks a member of the same mesh for its whole ledger. */
export interface PullFrame { v: 1, t: 'pull' }
/** Pushes a ledger (all statements) after a change; idempotent. */
export interface PushFrame { v: 1, t: 'push', statements: Statement[] }
/** Presents an invite token to its inviter. */
export interface JoinFrame { v: 1, t: 'join', token: string, name: string }
export type AdmissionRequest = HelloFrame | PullFrame | PushFrame | JoinFrame

export interface LedgerFrame { v: 1, t: 'ledger', statements: Statement[] }
export interface OkFrame { v: 1, t: 'ok' }
export interface ErrorFrame { v: 1, t: 'error', code: string, message: string }
export type AdmissionResponse = HelloFrame | LedgerFrame | OkFrame | ErrorFrame

const stmtCommon = {
  v: { const: ADMISSION_VERSION },
  mesh: { type: 'string', pattern: MESH_ID },
  subject: { type: 'string', pattern: PEER_ID },
  issuer: { type: 'string', pattern: PEER_ID },
  at: { type: 'integer', minimum: 0, maximum: 8.64e15 },
  sig: { type: 'string', minLength: 88, maxLength: 88 }
}
const statementSchema = {
  oneOf: [
    { type: 'object', additionalProperties: false, required: ['v', 't', 'mesh', 'subject', 'issuer', 'name', 'at', 'sig'], properties: { ...stmtCommon, t: { const: 'found' }, name: { type: 'string', maxLength: MAX_MEMBER_NAME } } },
    { type: 'object', additionalProperties: false, required: ['v', 't', 'mesh', 'subject', 'issuer', 'name', 'at', 'sig'], properties: { ...stmtCommon, t: { const: 'admit' }, name: { type: 'string', maxLength: MAX_MEMBER_NAME } } },
    { type: 'object', additionalProperties: false, required: ['v', 't', 'mesh', 'subject', 'issuer', 'at', 'sig'], properties: { ...stmtCommon, t: { const: 'revoke' } } }
  ]
}
const statements = { type: 'array', maxItems: MAX_LEDGER_STATEMENTS, items: { $ref: '#/definitions/statement' } }
const hello = {
  type: 'object', additionalProperties: false, required: ['v', 't', 'mesh', 'name', 'digest', 'count'],
  properties: { v: { const: 1 }, t: { const: 'hello' }, mesh: { type: 'string', pattern: MESH_ID }, name: { type: 'string', maxLength: MAX_MEMBER_NAME }, digest: { type: 'string', pattern: '^[0-9a-f]{64}$' }, count: { type: 'integer', minimum: 0, maximum: MAX_LEDGER_STATEMENTS }, member: { type: 'boolean' } }
}
const requestSchema = {
  definitions: { statement: statementSchema },
  oneOf: [
    hello,
    { type: 'object', additionalProperties: false, required: ['v', 't'], properties: { v: { const: 1 }, t: { const: 'pull' } } },
    { type: 'object', additionalProperties: false, required: ['v', 't', 'statements'], properties: { v: { const: 1 }, t: { const: 'push' }, statements } },
    { type: 'object', additionalProperties: false, required: ['v', 't', 'token', 'name'], properties: { v: { const: 1 }, t: { const: 'join' }, token: { type: 'string', minLength: 1, maxLength: 4096 }, name: { type: 'string', maxLength: MAX_MEMBER_NAME } } }
  ]
}
const responseSchema = {
  definitions: { statement: statementSchema },
  oneOf: [
    hello,
    { type: 'object', additionalProperties: false, required: ['v', 't', 'statements'], properties: { v: { const: 1 }, t: { const: 'ledger' }, statements } },
    { type: 'object', additionalProperties: false, required: ['v', 't'], properties: { v: { const: 1 }, t: { const: 'ok' } } },
    { type: 'object', additionalProperties: false, required: ['v', 't', 'code', 'message'], properties: { v: { const: 1 }, t: { const: 'error' }, code: { type: 'string', maxLength: 64 }, message: { type: 'string', maxLength: 512 } } }
  ]
}

const validStatement: ValidateFunction<Statement> = compileSchema(statementSchema, { strict: false })
const validRequest: ValidateFunction<AdmissionRequest> = compileSchema(requestSchema, { strict: false })
const validResponse: ValidateFunction<AdmissionResponse> = compileSchema(responseSchema, { strict: false })

export function isStatement (x: unknown): x is Statement {
  return validStatement(x) && (x.t !== 'found' || x.subject === x.issuer)
}
export function isAdmissionRequest (x: unknown): x is AdmissionRequest { return validRequest(x) }
export function isAdmissionResponse (x: unknown): x is AdmissionResponse { return validResponse(x) }

/** Content id of a statement: sha256 of its canonical JSON, signature included. */
export function statementId (s: Statement): string {
  return createHash('sha256').update(canonicalJson(s)).digest('hex')
}

/** Digest of a set of statements (order-free): two ledgers with one digest hold the same statements. */
export function ledgerDigest (ids: Iterable<string>): string {
  return createHash('sha256').update([...ids].sort().join('\n')).digest('hex')
}

export async function signStatement (key: PrivateKey, s: UnsignedStatement): Promise<Statement> {
  return await signObject(key, STATEMENT_DOMAIN, s) as Statement
}

/** True when the statement is signed by its issuer. Never throws. */
export async function verifyStatement (s: Statement): Promise<boolean> {
  return await verifyObject(s.issuer, STATEMENT_DOMAIN, s)
}

/** Strips control characters (terminal escapes) and bounds a peer-chosen name before it is shown. */
export function cleanName (name: string): string {
  return stripControl(name).slice(0, MAX_MEMBER_NAME)
}
