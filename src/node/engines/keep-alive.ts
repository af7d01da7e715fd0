/**
 * Parses `keep_alive` as Ollama accepts it: a Go duration string (`'5m'`, `'30s'`, `'1h30m'`,
 * `'250ms'`), a number of seconds, `0` to unload right after the request, or anything negative
 * to keep the model loaded until it is unloaded explicitly.
 */
import { BadRequestError } from '../../errors.js'

const UNIT_MS: Record<string, number> = {
  ns: 1e-6,
  us: 1e-3,
  µs: 1e-3,
  μs: 1e-3,
  ms: 1,
  s: 1000,
  m: 60_000,
  h: 3_600_000
}

const DURATION = /^([+-]?)((?:\d+(?:\.\d*)?|\.\d+)(?:ns|us|µs|μs|ms|s|m|h))+$/
const PART = /(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)/g
const NUMBER = /^[+-]?(?:\d+(?:\.\d*)?|\.\d+)$/

/**
 * Returns milliseconds: `Infinity` for "keep loaded", `0` for "unload now". Throws
 * `BadRequestError` (param `keep_alive`) for anything else.
 */
export function parseKeepAlive (value: unknown): number {
  if (typeof value === 'number') {
    if (!Number.isFinite(value)) throw invalid(value)
    return value < 0 ? Infinity : Math.round(value * 1000)
  }
  if (typeof value !== 'string') throw invalid(value)
  const text = value.trim()
  if (NUMBER.test(text)) return parseKeepAlive(Number(text))
  const match = DURATION.exec(text)
  if (match === null) throw invalid(value)
  if (match[1] === '-') return Infinity
  let ms = 0
  for (const [, amount, unit] of text.matchAll(PART)) ms += Number(amount) * UNIT_MS[unit]
  return Math.round(ms)
}

function invalid (value: unknown): BadRequestError {
  return new BadRequestError(`keep_alive must be a duration like '5m' or a number of seconds, got ${JSON.stringify(value)}`, 'keep_alive')
}
