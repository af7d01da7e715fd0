/**
 * `update_config` bounds (issue 11 item 4). The payload schema bounds what any issuer may set;
 * a remote issuer (a group's leader) is held to tighter ones, so that no signed command can
 * disable the node: a hostile leader once set maxConcurrency=1 and maxQueue=0 (7 of 8 user
 * chats got 429) and logLevel=silent (the node logged nothing more). The node's own operator,
 * through its API or CLI, keeps the full schema range.
 */
import { CommandValueRefusedError } from '../../errors.js'
import type { HandlerContext } from './handlers.js'
import type { UpdateConfigPayload } from './payloads.js'

type Key = UpdateConfigPayload['key']

/** What a remote issuer may set, per key: a numeric range or a set of words. Every bound lives here. */
export const REMOTE_CONFIG_BOUNDS: Readonly<Record<Key, { min: number, max: number } | { oneOf: readonly string[] }>> = {
  // Fewer than 2 running and 8 waiting turns most users away (measured: 7 of 8 chats 429 at 1/0).
  maxConcurrency: { min: 2, max: 1024 },
  maxQueue: { min: 8, max: 100_000 },
  // Under 10 s a loaded model is unloaded between two turns of a chat; over a day it never is.
  keepAliveMs: { min: 10_000, max: 24 * 3600_000 },
  // Under 30 s most generations are cut off.
  requestTimeoutMs: { min: 30_000, max: 24 * 3600_000 },
  routing: { oneOf: ['least-loaded', 'round-robin', 'random', 'weighted', 'lowest-latency'] },
  // `error` and `silent` would hide what the node does (this very change included).
  logLevel: { oneOf: ['trace', 'debug', 'info', 'warn'] }
}

export type ConfigCheck = { ok: true } | { ok: false, message: string }

/** Whether `update` is allowed from this issuer. Pure: `remote` is "the issuer is not this node". */
export function checkConfigUpdate (update: UpdateConfigPayload, opts: { remote: boolean }): ConfigCheck {
  if (!opts.remote) return { ok: true }
  const bound = REMOTE_CONFIG_BOUNDS[update.key]
  if ('oneOf' in bound) {
    if (bound.oneOf.includes(String(update.value))) return { ok: true }
    return { ok: false, message: `${update.key}=${String(update.value)} is not allowed from a remote issuer (one of ${bound.oneOf.join(', ')})` }
  }
  const v = update.value as number
  if (v >= bound.min && v <= bound.max) return { ok: true }
  return { ok: false, message: `${update.key}=${v} is not allowed from a remote issuer (${bound.min} to ${bound.max})` }
}

export interface ConfigUpdateDeps {
  selfId: () => string
  /** The live options: the changed key is written here once applied. */
  options: Record<string, unknown>
  /** Applies a change to the parts that copied the value (admission limits, the log level). */
  apply: (update: UpdateConfigPayload) => void
  audit: (entry: { kind: string, peer: string, detail: string, verdict: 'accepted' | 'rejected' }) => Promise<void>
  log: { warn: (msg: string, fields?: Record<string, unknown>) => void }
}

/**
 * The `update_config` handler: refuses (typed, audited, logged) what a remote issuer may not
 * set; otherwise logs which key changed, from what to what and by whom (at warn, before the
 * change applies: a new log level could hide its own change), applies it and audits it.
 */
export function updateConfigHandler (d: ConfigUpdateDeps): (p: UpdateConfigPayload, ctx: HandlerContext) => Promise<Record<string, unknown>> {
  return async (p, ctx) => {
    const from = d.options[p.key]
    const check = checkConfigUpdate(p, { remote: ctx.issuer !== d.selfId() })
    if (!check.ok) {
      d.log.warn('config update refused', { setting: p.key, from, to: p.value, issuer: ctx.issuer })
      await d.audit({ kind: 'config_refused', peer: ctx.issuer, detail: check.message, verdict: 'rejected' }).catch(() => {})
      throw new CommandValueRefusedError(check.message, 'config_value_refused', p.key)
    }
    // `setting`, not `key`: the logger redacts fields named like secrets.
    d.log.warn('config updated', { setting: p.key, from, to: p.value, issuer: ctx.issuer })
    d.apply(p)
    d.options[p.key] = p.value
    await d.audit({ kind: 'config_updated', peer: ctx.issuer, detail: `${p.key}: ${JSON.stringify(from)} -> ${JSON.stringify(p.value)}`, verdict: 'accepted' }).catch(() => {})
    return { key: p.key, value: p.value, previous: from ?? null }
  }
}
