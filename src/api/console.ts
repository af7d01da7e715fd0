/**
 * The console: a static page (HTML, CSS and one small script module) that every node serves at
 * `/` to a browser, on the API's own port. It holds no data and no secret: everything it shows it
 * fetches from the API with the key the operator types in, so the page and its two assets are the
 * only things an API key does not guard (see `isConsoleRequest`).
 *
 * The files live in `console/` at the package root (shipped by package.json `files`): the same
 * path from `src/api` and from `dist/api`, so a source run, the build and `npm pack` serve them.
 */
import fs from 'node:fs/promises'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import type { FastifyInstance, FastifyPluginAsync, FastifyReply, FastifyRequest } from 'fastify'
import { NotFoundError, ShepherdError } from '../errors.js'

/** Where the console's files are: `<package>/console`. */
export const CONSOLE_DIR = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..', 'console')

/** The assets served under `/console/` (nothing else in the folder is reachable). */
const ASSETS: Readonly<Record<string, string>> = {
  'console.js': 'text/javascript; charset=utf-8',
  'console.css': 'text/css; charset=utf-8'
}

/**
 * The page may run only its own script and style and talk only to this origin; no frame may hold
 * it (the admit and deploy buttons cannot be clickjacked); no referrer leaks the node's address.
 */
const PAGE_HEADERS: Readonly<Record<string, string>> = {
  'content-security-policy': "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
  'x-frame-options': 'DENY',
  'x-content-type-options': 'nosniff',
  'referrer-policy': 'no-referrer',
  // Small files, and a node upgrade must show its own page at once.
  'cache-control': 'no-cache'
}

/** The console's files, read once when the API is built. */
export interface ConsoleAssets {
  page: Buffer
  files: Map<string, Buffer>
}

/**
 * Reads the console's files; `null` when they are missing (a build or package without the
 * folder): the API still serves, and a browser asking for the page gets a clear 404.
 */
export async function loadConsole (dir = CONSOLE_DIR): Promise<ConsoleAssets | null> {
  try {
    const page = await fs.readFile(path.join(dir, 'index.html'))
    const files = new Map<string, Buffer>()
    for (const name of Object.keys(ASSETS)) files.set(name, await fs.readFile(path.join(dir, name)))
    return { page, files }
  } catch {
    return null
  }
}

/**
 * True when an `Accept` header asks for HTML (every browser's navigation does; curl's `*∕*`, the
 * Ollama clients and the SDKs do not), so `GET /` keeps answering `Ollama is running` to them.
 */
export function wantsHtml (accept: string | undefined): boolean {
  if (accept == null) return false
  return accept.split(',').some(part => {
    const [type, ...params] = part.trim().toLowerCase().split(';')
    // `text/html;q=0` is a refusal of HTML.
    const q = params.map(p => p.trim()).find(p => p.startsWith('q='))
    return type.trim() === 'text/html' && (q == null || Number(q.slice(2)) > 0)
  })
}

/**
 * True for the requests that fetch the console itself: `GET|HEAD /` asking for HTML and the
 * assets under `/console/`. They carry no data, and a browser cannot add a key to a navigation,
 * so the API-key hook lets exactly these through; every API call the page makes needs the key.
 */
export function isConsoleRequest (request: FastifyRequest): boolean {
  if (request.method !== 'GET' && request.method !== 'HEAD') return false
  const url = request.url.split('?')[0]
  if (url === '/') return wantsHtml(request.headers.accept)
  return url.startsWith('/console/') && Object.hasOwn(ASSETS, url.slice('/console/'.length))
}

/** Sends the page (for the `/` route, when {@link wantsHtml}). */
export async function sendConsolePage (reply: FastifyReply, assets: ConsoleAssets | null): Promise<FastifyReply> {
  if (assets == null) throw new ShepherdError(`The console's files are missing (${CONSOLE_DIR}); the API works without them`, { code: 'console_unavailable', status: 404 })
  return await reply.headers(PAGE_HEADERS).type('text/html; charset=utf-8').send(assets.page)
}

/** `GET /console/:file`: the page's script and style sheet. */
export function consoleRoutes (assets: ConsoleAssets | null): FastifyPluginAsync {
  return async (app: FastifyInstance) => {
    app.get('/console/:file', {
      schema: { params: { type: 'object', required: ['file'], properties: { file: { type: 'string', maxLength: 64 } } } }
    }, async (req, reply) => {
      const { file } = req.params as { file: string }
      const body = Object.hasOwn(ASSETS, file) ? assets?.files.get(file) : undefined
      if (body == null) throw new NotFoundError(`No console file '${file}'`, 'not_found')
      return await reply.headers(PAGE_HEADERS).type(ASSETS[file]).send(body)
    })
  }
}
