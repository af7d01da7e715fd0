import type { FastifyInstance } from 'fastify'
import { BadRequestError } from '../errors.js'

/**
 * Deepest nesting a JSON body may have. V8 parses far deeper bodies, but re-serializing one to
 * relay it to a peer (`JSON.stringify`) overflows the stack: the entry node then saw a failed
 * *host*, answered 503 and counted it against the host's circuit breaker, so a client could open
 * the breakers of healthy hosts. 128 is far beyond any real request (JSON schemas in
 * `response_format` are bounded at depth 32 on their own).
 */
export const MAX_BODY_DEPTH = 128

/** The nesting depth of a parsed JSON value, walked without recursion (a deep body must not overflow here either). */
export function jsonDepth (value: unknown, limit = Infinity): number {
  let deepest = 0
  const stack: Array<[unknown, number]> = [[value, 1]]
  while (stack.length > 0) {
    const [v, d] = stack.pop()!
    if (v === null || typeof v !== 'object') continue
    if (d > deepest) deepest = d
    if (deepest > limit) return deepest
    for (const child of Array.isArray(v) ? v : Object.values(v)) {
      if (child !== null && typeof child === 'object') stack.push([child, d + 1])
    }
  }
  return deepest
}

/** Refuses, with a 400 in the route's error shape, any JSON body nested deeper than {@link MAX_BODY_DEPTH}. */
export function installBodyDepthLimit (app: FastifyInstance): void {
  app.addHook('preValidation', async request => {
    const body = request.body
    if (body === null || typeof body !== 'object' || Buffer.isBuffer(body)) return
    if (jsonDepth(body, MAX_BODY_DEPTH) > MAX_BODY_DEPTH) {
      throw new BadRequestError(`The JSON body is nested more than ${MAX_BODY_DEPTH} levels deep`)
    }
  })
}
