/**
 * Typed errors with stable codes. Every error that crosses a boundary (HTTP, wire, CLI)
 * is one of these, so callers switch on `code`, never on message text.
 */
export class ShepherdError extends Error {
  /** Stable machine-readable code, e.g. `model_not_found`. */
  readonly code: string
  /** HTTP status this error maps to when it reaches the API. */
  readonly status: number
  /** OpenAI error `type` field. */
  readonly type: string
  /** The request parameter at fault, when there is one. */
  readonly param: string | null

  constructor (message: string, opts: { code: string, status?: number, type?: string, param?: string | null, cause?: unknown }) {
    super(message, opts.cause !== undefined ? { cause: opts.cause } : undefined)
    this.name = new.target.name
    this.code = opts.code
    this.status = opts.status ?? 500
    this.type = opts.type ?? (this.status >= 500 ? 'server_error' : 'invalid_request_error')
    this.param = opts.param ?? null
  }

  /** Same error with a cause attached (for logs; never shown to API clients). */
  withCause (cause: unknown): this {
    Object.defineProperty(this, 'cause', { value: cause, enumerable: false, configurable: true })
    return this
  }

  withMessage (message: string): this {
    this.message = message
    return this
  }
}

export class ConfigError extends ShepherdError {
  constructor (message: string, param: string | null = null) {
    super(message, { code: 'invalid_config', status: 400, param })
  }
}

export class BadRequestError extends ShepherdError {
  constructor (message: string, param: string | null = null, code = 'invalid_request') {
    super(message, { code, status: 400, param })
  }
}

export class UnauthorizedError extends ShepherdError {
  constructor (message = 'Invalid or missing API key') {
    super(message, { code: 'invalid_api_key', status: 401, type: 'authentication_error' })
  }
}

/** A request the API refuses on principle (a Host it does not answer to, a cross-site Origin). */
export class ForbiddenError extends ShepherdError {
  constructor (message: string, code: string, param: string | null = null) {
    super(message, { code, status: 403, param })
  }
}

/** A mutating request whose body is not `application/json` (what a cross-site form can send). */
export class UnsupportedMediaTypeError extends ShepherdError {
  constructor (message = 'Unsupported Content-Type; send application/json') {
    super(message, { code: 'unsupported_media_type', status: 415, param: 'content-type' })
  }
}

export class NotFoundError extends ShepherdError {
  constructor (message: string, code = 'not_found') {
    super(message, { code, status: 404 })
  }
}

export class ModelNotFoundError extends ShepherdError {
  constructor (model: string) {
    super(`The model '${model}' does not exist on any reachable node`, { code: 'model_not_found', status: 404, param: 'model' })
  }
}

export class PeerNotFoundError extends ShepherdError {
  constructor (id: string) {
    super(`No peer with id '${id}'`, { code: 'peer_not_found', status: 404 })
  }
}

export class PayloadTooLargeError extends ShepherdError {
  constructor (message = 'Request body too large') {
    super(message, { code: 'payload_too_large', status: 413 })
  }
}

export class OverloadedError extends ShepherdError {
  constructor (message = 'The node is saturated; retry later') {
    super(message, { code: 'overloaded', status: 429, type: 'rate_limit_error' })
  }
}

export class NoHealthyHostError extends ShepherdError {
  constructor (model: string) {
    super(`No healthy host can serve '${model}' right now`, { code: 'no_healthy_host', status: 503 })
  }
}

/** A model does not fit in memory, even with every idle model unloaded; another node may serve it. */
export class InsufficientMemoryError extends ShepherdError {
  constructor (message = 'Not enough memory to load the model') {
    super(message, { code: 'insufficient_memory', status: 503 })
  }
}

export class TimeoutError extends ShepherdError {
  constructor (message = 'The request timed out') {
    super(message, { code: 'timeout', status: 504 })
  }
}

export class WireError extends ShepherdError {
  constructor (message: string, code = 'invalid_frame') {
    super(message, { code, status: 400 })
  }
}

/**
 * Model content codes (issue 11 item 3). A pulled file whose sha256 is not the fingerprint the
 * command named, or that is not a valid GGUF, is never installed; the transfer fails with one
 * of these codes (see `ModelTransferError` in src/node/model-transfer.ts).
 */
export const MODEL_FINGERPRINT_MISMATCH = 'model_fingerprint_mismatch'
export const MODEL_INVALID_FILE = 'model_invalid_file'
/** A `load_model` named only sources that are not members of this node's mesh: nothing is dialed. */
export const SOURCE_NOT_MEMBER = 'source_not_member'

/**
 * Split replicas (issue 16). `rpc_tunnel_refused`: a member opened the RPC tunnel for a split
 * this node does not serve for it (audited); the others answer commands.
 */
export const RPC_TUNNEL_REFUSED = 'rpc_tunnel_refused'
export const SPLIT_CODES = {
  tunnelRefused: RPC_TUNNEL_REFUSED,
  /** A split spec that names no workers, the head itself, or a model without a layer count. */
  invalidSplit: 'invalid_split',
  /** The node cannot head or serve splits (engine without per-model flags, no file). */
  notSupported: 'split_not_supported',
  /** No rpc-server binary was found on a worker. */
  rpcServerMissing: 'rpc_server_missing',
  rpcServerFailed: 'rpc_server_failed'
} as const

/** A client pinned a file (`x-shepherd-model-fingerprint`) that no member serves under that name. */
export class ModelFingerprintNotFoundError extends ShepherdError {
  constructor (model: string, fingerprint: string) {
    super(`No reachable node serves '${model}' with fingerprint ${fingerprint}`, { code: 'model_fingerprint_not_found', status: 404, param: 'model' })
  }
}

/** A fingerprint pin that is not hex, shorter than 12 digits, or a prefix of several files. */
export class InvalidFingerprintPinError extends ShepherdError {
  constructor (message: string) {
    super(message, { code: 'invalid_model_fingerprint', status: 400, param: 'x-shepherd-model-fingerprint' })
  }
}

/** A durable write failed for lack of space (ENOSPC): nothing changed in memory, retry once space is freed. */
export class InsufficientStorageError extends ShepherdError {
  constructor (message = 'The node\'s disk is full; the change was not made', cause?: unknown) {
    super(message, { code: 'insufficient_storage', status: 507, cause })
  }
}

/** The 507 error for a failed write that must not change memory; any other failure stays a 503 `store_unavailable`. */
export function storageError (err: unknown, what: string): ShepherdError {
  if (err instanceof ShepherdError) return err
  // LevelDB wraps the system error (LEVEL_IO_ERROR, "IO error: …: No space left on device"): walk the causes.
  let full = false
  for (let e: any = err, depth = 0; e != null && depth < 5; e = e.cause, depth++) {
    if (e.code === 'ENOSPC' || e.code === 'EDQUOT' || /ENOSPC|No space left|quota exceeded/i.test(String(e.message ?? ''))) full = true
  }
  if (full) {
    return new InsufficientStorageError(`${what}: the node's disk is full; nothing was changed`, err)
  }
  return new ShepherdError(`${what}: the store is unavailable; nothing was changed`, { code: 'store_unavailable', status: 503 }).withCause(err)
}

/**
 * Stable codes of authority refusals (issue 11 item 2), written to the audit log (`kind`) and
 * used as command reject details: leadership, votes and deployments taken only with proof.
 */
export const AUTHORITY_CODES = {
  /** A term above MAX_TERM, or more than a small step above the newest certified term known. */
  termOutOfBounds: 'term_out_of_bounds',
  /** A certificate that does not prove leadership (bad signature, non-member voter, no quorum). */
  invalidCertificate: 'invalid_certificate',
  /** A vote request refused (not a member, not in the group, already voted, live leader). */
  voteRefused: 'vote_refused',
  /** A remote command whose issuer is not the proven leader of its group at that term. */
  notProvenLeader: 'not_proven_leader',
  /** A member-operator command (term 0) from a peer that is no member by proof, or in an open mesh. */
  notMemberOperator: 'not_member_operator',
  /** A gossiped deployment record not signed by a member (or not by the origin it names). */
  unsignedDeployment: 'deployment_unsigned',
  /** A gossiped deployment record stamped beyond now + the allowed clock skew. */
  futureDeployment: 'deployment_from_future'
} as const

/**
 * Command bounds (issue 11 item 4): `run_llamacpp` beyond the cap on processes started by
 * commands, a flag or value a remote issuer may not choose, a config value that would disable
 * the node. Each is refused with its own stable code.
 */
export class ProcessLimitError extends ShepherdError {
  constructor (limit: number) {
    super(`This node already runs ${limit} process(es) started by commands (maxCommandProcesses); stop one first`, { code: 'process_limit', status: 429, type: 'rate_limit_error' })
  }
}

export class CommandValueRefusedError extends ShepherdError {
  constructor (message: string, code: 'llamacpp_flag_refused' | 'config_value_refused', param: string | null = null) {
    super(message, { code, status: 403, type: 'permission_error', param })
  }
}
