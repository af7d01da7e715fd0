import type { CommandType } from '../../p2p/index.js'
import type { CommandPayloads } from './payloads.js'

/** What a handler gets besides its payload. */
export interface HandlerContext {
  /** Aborted when the command's time is up; a handler must stop its work and return or throw. */
  signal: AbortSignal
  /** Streams one line of output to the issuer. */
  output: (line: string) => void
  /** The command id (for logs, and for naming what the command creates). */
  id: string
  /** Peer id of the issuer. */
  issuer: string
}

/**
 * Runs one command type. What it returns (plain JSON) becomes the signed result; a
 * `ShepherdError` it throws becomes the result's `error` with the same code.
 */
export type CommandHandler<P> = (payload: P, ctx: HandlerContext) => Promise<unknown>

/** The handlers registry: one handler per command type. A type with none answers `not_supported`. */
export type CommandHandlers = { [K in CommandType]: CommandHandler<CommandPayloads[K]> }
