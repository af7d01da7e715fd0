import { randomUUID } from 'node:crypto'
import type { ValidateFunction } from 'ajv'
import { compileSchema } from './schemas.js'
import type { PrivateKey } from '@libp2p/interface'
import { peerIdFromPrivateKey } from '@libp2p/peer-id'
import { MAX_NAME_LENGTH } from './constants.js'
import { signObject, verifyObject } from './signing.js'

/** Signed commands, one stream per command: an envelope in; `output` frames then a `result`, or an `error`, out. */
export const COMMAND_PROTOCOL = '/shepherd/cmd/1.0.0'
export const COMMAND_VERSION = 1
/** Largest envelope frame accepted; commands are small, anything bigger is an attack or a bug. */
export const MAX_COMMAND_ENVELOPE_BYTES = 64 * 1024
/** Largest response frame: a batch of output lines, or the result. */
export const MAX_COMMAND_RESPONSE_BYTES = 1024 * 1024
/** A peer that opens a command stream must send its envelope within this time. */
export const COMMAND_REQUEST_READ_TIMEOUT_MS = 10_000
export const MAX_COMMAND_STREAMS = 64

/** Signature domains: a signature made for a command can never pass as a result's, and back. */
export const COMMAND_SIGNING_DOMAIN = 'shepherd/cmd/1'
export const RESULT_SIGNING_DOMAIN = 'shepherd/cmd-result/1'

// `serve_rpc`: the leader asks a worker to serve its part of a split replica for a head (issue 16).
export const COMMAND_TYPES = ['load_model', 'unload_model', 'run_llamacpp', 'stop_process', 'scan_models', 'collect_logs', 'update_config', 'serve_rpc'] as const
export type CommandType = typeof COMMAND_TYPES[number]

export function isCommandType (x: unknown): x is CommandType {
  return typeof x === 'string' && (COMMAND_TYPES as readonly string[]).includes(x)
}

/**
 * Why an executor refused a command. Stable: they are written to the audit log and shown by the
 * API. `replay` is not a refusal from the caller's point of view: it gets the stored result.
 */
export type RejectCode =
  | 'malformed' | 'unsupported_version' | 'wrong_target' | 'bad_signature' | 'expired' | 'stale_term'
  | 'not_authorized' | 'type_not_allowed' | 'invalid_payload' | 'replay' | 'overloaded'

/** A command before it is signed. */
export interface UnsignedCommand<P extends object = Record<string, unknown>> {
  v: 1
  /** UUID; a command id runs at most once on its target. */
  id: string
  type: string
  payload: P
  /** Swarm group whose leader issued it; fencing terms are per group. */
  group: string
  /** Leadership term of the issuer when it issued the command. */
  term: number
  /** Peer id of the signer. */
  issuer: string
  /** Peer id of the node that must run it; any other node refuses it. */
  target: string
  /** Issuer's clock, ms since the epoch. */
  issuedAt: number
  expiresAt: number
}

/** A command signed by its issuer (`sig`: base64 Ed25519 over the canonical JSON of the rest). */
export interface CommandEnvelope<P extends object = Record<string, unknown>> extends UnsignedCommand<P> {
  sig: string
}

export type CommandStatus = 'ok' | 'error' | 'rejected'

export interface CommandErrorInfo {
  code: string
  message: string
}

export interface UnsignedResult {
  id: string
  status: CommandStatus
  result?: unknown
  error?: CommandErrorInfo
  startedAt: number
  finishedAt: number
  /** Peer id of the executor: the signer of the result. */
  executor: string
}

/** What an executor answers, signed with its key, so the issuer can prove what happened. */
export interface SignedResult extends UnsignedResult {
  sig: string
}

export type CommandResponseFrame =
  | { t: 'output', seq: number, lines: string[] }
  | { t: 'result', result: SignedResult }
  | { t: 'error', code: string, message: string }

const uuid = { type: 'string', pattern: '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$' }
/** base58btc, the textual form of every libp2p peer id this mesh uses. */
const peerId = { type: 'string', pattern: '^[1-9A-HJ-NP-Za-km-z]{32,128}$' }
const time = { type: 'integer', minimum: 0, maximum: Number.MAX_SAFE_INTEGER }
/** The signature's exact form is checked when it is verified, so a bad one reads `bad_signature`. */
const sig = { type: 'string', minLength: 1, maxLength: 256 }
const code = { type: 'string', pattern: '^[a-z][a-z0-9_]{0,63}$' }

const envelopeSchema = {
  type: 'object',
  required: ['v', 'id', 'type', 'payload', 'group', 'term', 'issuer', 'target', 'issuedAt', 'expiresAt', 'sig'],
  additionalProperties: false,
  properties: {
    // Any version parses; the executor refuses unknown ones with their own reason.
    v: { type: 'integer', minimum: 0, maximum: 1_000_000 },
    id: uuid,
    type: { type: 'string', pattern: '^[a-z][a-z0-9_]{0,31}$' },
    payload: { type: 'object', maxProperties: 32 },
    group: { type: 'string', minLength: 1, maxLength: MAX_NAME_LENGTH },
    term: { type: 'integer', minimum: 0, maximum: Number.MAX_SAFE_INTEGER },
    issuer: peerId,
    target: peerId,
    issuedAt: time,
    expiresAt: time,
    sig
  }
}

const errorInfo = {
  type: 'object',
  required: ['code', 'message'],
  additionalProperties: false,
  properties: { code, message: { type: 'string', maxLength: 8192 } }
}

const resultSchema = {
  type: 'object',
  required: ['id', 'status', 'startedAt', 'finishedAt', 'executor', 'sig'],
  additionalProperties: false,
  properties: {
    id: uuid,
    status: { enum: ['ok', 'error', 'rejected'] },
    result: {},
    error: errorInfo,
    startedAt: time,
    finishedAt: time,
    executor: peerId,
    sig
  }
}

const responseSchema = {
  oneOf: [
    {
      type: 'object',
      required: ['t', 'seq', 'lines'],
      additionalProperties: false,
      properties: { t: { const: 'output' }, seq: { type: 'integer', minimum: 0 }, lines: { type: 'array', items: { type: 'string' } } }
    },
    { type: 'object', required: ['t', 'result'], additionalProperties: false, properties: { t: { const: 'result' }, result: resultSchema } },
    { type: 'object', required: ['t', 'code', 'message'], additionalProperties: false, properties: { t: { const: 'error' }, code, message: { type: 'string', maxLength: 8192 } } }
  ]
}

let validators: { env: ValidateFunction<CommandEnvelope>, res: ValidateFunction<CommandResponseFrame>, result: ValidateFunction<SignedResult> } | undefined
function compiled (): NonNullable<typeof validators> {
  if (validators == null) {
    validators = {
      env: compileSchema<CommandEnvelope>(envelopeSchema),
      res: compileSchema<CommandResponseFrame>(responseSchema),
      result: compileSchema<SignedResult>(resultSchema)
    }
  }
  return validators
}

/** Shape of an envelope (any version); the payload is checked later against its type's schema. */
export function isCommandEnvelope (x: unknown): x is CommandEnvelope {
  return compiled().env(x)
}

export function isCommandResponse (x: unknown): x is CommandResponseFrame {
  return compiled().res(x)
}

export function isSignedResult (x: unknown): x is SignedResult {
  return compiled().result(x)
}

export interface NewCommand<P extends object = Record<string, unknown>> {
  type: string
  payload: P
  group: string
  term: number
  target: string
  /** How long the command may wait to be accepted; default 60 s. */
  ttlMs?: number
  /** Defaults to a fresh UUID; pass the same id to retry a command safely. */
  id?: string
  /** Issue time; defaults to now. */
  now?: number
}

/** Builds a command and signs it with `key`, whose peer id becomes the issuer. */
export async function createCommand<P extends object> (key: PrivateKey, cmd: NewCommand<P>): Promise<CommandEnvelope<P>> {
  const issuer = peerIdFromPrivateKey(key).toString()
  const issuedAt = cmd.now ?? Date.now()
  const unsigned: UnsignedCommand<P> = {
    v: COMMAND_VERSION,
    id: cmd.id ?? randomUUID(),
    type: cmd.type,
    payload: cmd.payload,
    group: cmd.group,
    term: cmd.term,
    issuer,
    target: cmd.target,
    issuedAt,
    expiresAt: issuedAt + (cmd.ttlMs ?? 60_000)
  }
  return await signObject(key, COMMAND_SIGNING_DOMAIN, unsigned)
}

/** True when the envelope was signed by the key of its `issuer` peer id. */
export async function verifyCommand (env: CommandEnvelope): Promise<boolean> {
  return await verifyObject(env.issuer, COMMAND_SIGNING_DOMAIN, env)
}

export async function signResult (key: PrivateKey, result: UnsignedResult): Promise<SignedResult> {
  return await signObject(key, RESULT_SIGNING_DOMAIN, result)
}

/** True when `result` was signed by `executor`, and says so. */
export async function verifyResult (result: SignedResult, executor: string): Promise<boolean> {
  if (result.executor !== executor) return false
  return await verifyObject(executor, RESULT_SIGNING_DOMAIN, result)
}
