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
