import net from 'node:net'
import os from 'node:os'
import type { FastifyInstance, FastifyRequest } from 'fastify'
import { BadRequestError, ForbiddenError, UnsupportedMediaTypeError } from '../errors.js'

/**
 * Guards against the two ways a web page reaches an API on loopback or the LAN (issue 11,
 * item 6). A browser enforces the same-origin policy by *name*, so:
 * - DNS rebinding: a page at `attacker.example` re-points its own name at 127.0.0.1 and is then
 *   "same origin" with the node. Its requests carry `Host: attacker.example`, so the API answers
 *   only to names that cannot be rebound: the bind address, loopback names, IP literals (a
 *   rebinding needs a DNS name), this machine's hostname and the names the operator lists.
 * - Cross-site requests: any page may send a "simple" request (a form's
 *   `application/x-www-form-urlencoded`, `multipart/form-data`, `text/plain`, or no body) with no
 *   preflight. Mutating routes therefore take only `application/json`, which a page can send
 *   cross-site only after a CORS preflight that this API refuses unless the origin is listed;
 *   and a browser's `Origin` that is neither listed nor this server's own is refused outright.
 */

/** The stable codes of the refusals (also documented in the README). */
export const HOST_NOT_ALLOWED = 'host_not_allowed'
export const MISSING_HOST = 'missing_host'
export const ORIGIN_NOT_ALLOWED = 'origin_not_allowed'

export interface HostPolicy {
  /** Exact names (lower case, no trailing dot). */
  names: Set<string>
  /** Suffixes from `*.example.lan` entries, kept as `.example.lan`. */
  suffixes: string[]
  /** `*` was listed: every name passes (for a proxy that rewrites Host; unsafe otherwise). */
  any: boolean
}

const normalize = (name: string): string => name.toLowerCase().replace(/\.$/, '')

/**
 * The names a node answers to: its bind address, `localhost`, this machine's hostname (and its
 * `.local` mDNS name), and the configured extras. IP literals and `*.localhost` are always
 * accepted by {@link isHostAllowed} and need no entry.
 */
export function hostPolicy (opts: { apiHost: string, allowedHosts: string[] }, hostname = os.hostname()): HostPolicy {
  const names = new Set<string>(['localhost'])
  const add = (n: string): void => { if (n !== '') names.add(normalize(n.replace(/^\[(.*)\]$/, '$1'))) }
  add(opts.apiHost)
  const host = normalize(hostname)
  const short = host.split('.')[0]
  for (const n of [host, `${host}.local`, short, `${short}.local`]) add(n)
  const suffixes: string[] = []
  let any = false
  for (const raw of opts.allowedHosts) {
    const entry = normalize(raw.trim())
    if (entry === '*') any = true
    else if (entry.startsWith('*.')) suffixes.push(entry.slice(1))
    else add(entry)
  }
  return { names, suffixes, any }
}

/**
 * The name part of a `Host` (or `:authority`) value: lower case, without port, brackets or a
 * trailing dot; `null` when the value is not a host[:port] at all.
 */
export function hostName (value: string): string | null {
  const v = value.trim()
  let name: string
  if (v.startsWith('[')) {
    const m = /^\[([0-9A-Fa-f:.]+(?:%[^\]]*)?)\](?::\d{1,5})?$/.exec(v)
    if (m == null) return null
    name = m[1]
  } else {
    const m = /^([^:/?#@\s]+)(?::\d{1,5})?$/.exec(v)
    if (m == null) return null
    name = m[1]
  }
  return normalize(name)
}

/** True when the API should answer a request that names `value` in its Host header. */
export function isHostAllowed (value: string, policy: HostPolicy): boolean {
  if (policy.any) return true
  const name = hostName(value)
  if (name == null || name === '') return false
  // An IP literal cannot be rebound: a page on it is a page served by that address.
  if (net.isIP(name.replace(/%.*$/, '')) !== 0) return true
  if (name === 'localhost' || name.endsWith('.localhost')) return true
  if (policy.names.has(name)) return true
  return policy.suffixes.some(s => name.endsWith(s) && name.length > s.length)
}

/** The media type of a Content-Type value (lower case, no parameters), or '' when absent. */
export function mediaType (contentType: string | undefined): string {
  return (contentType ?? '').split(';')[0].trim().toLowerCase()
}

/**
 * The OpenAI upload routes: the official clients send multipart/form-data (or raw audio) there.
 * A page may send multipart cross-site without a preflight, so these stay guarded by the Origin
 * check below (browsers send Origin on every cross-site POST) and by API keys when configured;
 * what a page could do there is spend compute on a request whose answer it cannot read.
 */
const UPLOAD_ROUTES = new Set(['/v1/audio/transcriptions', '/v1/audio/translations', '/v1/audio/speech', '/v1/images/generations'])
const UPLOAD_TYPES = /^(?:application\/json|multipart\/form-data|application\/octet-stream|audio\/[a-z0-9.+-]+)$/

const MUTATING = new Set(['POST', 'PUT', 'PATCH', 'DELETE'])

/** True when `origin` (a browser's Origin header) may mutate state on a server named `host`. */
export function isOriginAllowed (origin: string, host: string | undefined, corsOrigins: readonly string[]): boolean {
  if (corsOrigins.includes('*') || corsOrigins.includes(origin)) return true
  // Same origin: a page served by this very name (there is none today, but a reverse proxy may
  // put one there). `null` (sandboxed frames, file://) is never same-origin.
  if (origin === 'null' || host == null) return false
  try {
    return new URL(origin).host.toLowerCase() === host.trim().toLowerCase()
  } catch {
    return false
  }
}

/** Whether the request declares a body (a non-zero length or a chunked transfer). */
function hasBody (request: FastifyRequest): boolean {
  const length = request.headers['content-length']
  if (request.headers['transfer-encoding'] != null) return true
  return length != null && length !== '0'
}

function hostHeader (request: FastifyRequest): string | undefined {
  const h = request.headers.host ?? request.headers[':authority']
  return typeof h === 'string' ? h : undefined
}

/**
 * Installs the Host check (every route, first of all hooks) and, on mutating routes, the Origin
 * and Content-Type checks. Refusals use the OpenAI error shape with the codes above.
 */
export function installBrowserGuards (app: FastifyInstance, opts: { apiHost: string, allowedHosts: string[], corsOrigins: string[] }): void {
  const policy = hostPolicy(opts)
  app.addHook('onRequest', async (request) => {
    const authority = request.headers[':authority']
    const host = request.headers.host
    if (host == null && authority == null) {
      // HTTP/1.1 requires Host (RFC 9112 §3.2); HTTP/1.0 clients are not browsers.
      if (request.raw.httpVersion !== '1.0') throw new BadRequestError('Missing Host header', 'host', MISSING_HOST)
    } else {
      for (const value of [host, authority]) {
        if (typeof value === 'string' && !isHostAllowed(value, policy)) {
          throw new ForbiddenError(`This API does not answer to the host name ${JSON.stringify(value.slice(0, 255))}; add it with --allowed-host (api.allowed_hosts) if it is yours`, HOST_NOT_ALLOWED, 'host')
        }
      }
    }
    if (!MUTATING.has(request.method)) return
    const route = request.routeOptions.url
    // Unknown routes answer 404 as before; nothing runs there.
    if (route == null) return
    const origin = request.headers.origin
    if (typeof origin === 'string' && !isOriginAllowed(origin, hostHeader(request), opts.corsOrigins)) {
      throw new ForbiddenError(`Cross-origin requests from ${JSON.stringify(origin.slice(0, 255))} may not change this node; list the origin with --cors-origin to allow it`, ORIGIN_NOT_ALLOWED, 'origin')
    }
    const type = mediaType(request.headers['content-type'])
    // A DELETE without a body (what the official SDKs send) is let through: DELETE is never a
    // "simple" method, so a page cannot send it cross-site without a CORS preflight, and the
    // Origin check above has already run. A DELETE that carries a body is held to JSON.
    if (request.method === 'DELETE' && type === '' && !hasBody(request)) return
    const ok = UPLOAD_ROUTES.has(route) ? UPLOAD_TYPES.test(type) : type === 'application/json'
    if (!ok) {
      throw new UnsupportedMediaTypeError(type === ''
        ? `${request.method} needs a JSON body: send Content-Type: application/json (and {} when there is nothing to say)`
        : `Unsupported Content-Type '${type.slice(0, 100)}'; send application/json`)
    }
  })
}
