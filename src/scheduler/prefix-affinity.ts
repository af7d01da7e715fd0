/**
 * Prefix-aware routing, pure: which replica served a conversation's earlier turns, so its next
 * turn goes there and the host's KV cache (llama.cpp keeps a slot's prompt) skips the shared
 * prefix instead of processing the whole conversation again.
 *
 * A call's prefix is cut at message boundaries (chat) or in fixed blocks of characters (a raw
 * completion prompt); key `i` is a hash chained over blocks `0..i`, so two calls share key `i`
 * exactly when they share their first `i + 1` blocks. Serving a call records its deepest keys
 * against the host; a later call looks its keys up deepest first. The table is a bounded LRU
 * with a time to live (a host's cache forgets too). No I/O: the clock is given.
 */
import { createHash } from 'node:crypto'
import type { InferenceCall } from '../node/index.js'
import type { ModelHost } from './model-registry.js'

export interface PrefixAffinityOptions {
  /** Prefix keys remembered in all (least recently used forgotten first). */
  maxEntries: number
  /** A key not used for this long is forgotten (the host's cache has likely moved on). */
  ttlMs: number
  /** Block size of a raw completion prompt, in characters. */
  blockChars: number
  /** Deepest keys recorded per call: the next turn matches the deepest ones. */
  keysPerCall: number
}

export const DEFAULT_PREFIX_AFFINITY: PrefixAffinityOptions = { maxEntries: 10_000, ttlMs: 10 * 60_000, blockChars: 512, keysPerCall: 16 }

/** A model's prefix keys of a call, shortest prefix first; none for calls without a prompt. */
export function prefixKeys (call: InferenceCall, blockChars = DEFAULT_PREFIX_AFFINITY.blockChars): string[] {
  let blocks: string[]
  if (call.op === 'chat') {
    const messages: unknown = call.body.messages
    if (!Array.isArray(messages)) return []
    blocks = messages.map(m => JSON.stringify(m) ?? '')
  } else if (call.op === 'completion') {
    const prompt: unknown = call.body.prompt
    if (typeof prompt !== 'string') return []
    blocks = []
    // Whole blocks only: a later, longer prompt shares them; a partial last block it would not.
    for (let at = 0; at + blockChars <= prompt.length; at += blockChars) blocks.push(prompt.slice(at, at + blockChars))
  } else {
    return []
  }
  const keys: string[] = []
  let prev = `${call.op}\0${call.model}`
  for (const b of blocks) {
    prev = createHash('sha256').update(prev).update('\0').update(b).digest('base64url')
    keys.push(prev)
  }
  return keys
}

interface Entry { host: string, at: number }

/** The table: prefix key → the host that last served a call with that prefix. */
export class PrefixAffinity {
  private readonly entries = new Map<string, Entry>()
  readonly stats = { hits: 0, misses: 0, recorded: 0 }

  constructor (private readonly now: () => number, private readonly opts: PrefixAffinityOptions = DEFAULT_PREFIX_AFFINITY) {}

  /** The host of the longest remembered prefix of `keys`, and how many blocks it covers. */
  lookup (keys: readonly string[]): { host: string, depth: number } | undefined {
    const now = this.now()
    for (let i = keys.length - 1; i >= 0; i--) {
      const e = this.entries.get(keys[i])
      if (e == null) continue
      if (now - e.at > this.opts.ttlMs) {
        this.entries.delete(keys[i])
        continue
      }
      this.stats.hits++
      return { host: e.host, depth: i + 1 }
    }
    if (keys.length > 0) this.stats.misses++
    return undefined
  }

  /** `host` served a call with `keys`: its deepest keys now point there. */
  record (keys: readonly string[], host: string): void {
    const now = this.now()
    for (const k of keys.slice(-this.opts.keysPerCall)) {
      // Re-inserted at the end: the Map's order is the LRU order.
      this.entries.delete(k)
      this.entries.set(k, { host, at: now })
    }
    this.stats.recorded++
    while (this.entries.size > this.opts.maxEntries) {
      const oldest = this.entries.keys().next().value as string
      this.entries.delete(oldest)
    }
  }

  /** Forgets every prefix of `host` (it left, or restarted with an empty cache). */
  forget (host: string): void {
    for (const [k, e] of this.entries) if (e.host === host) this.entries.delete(k)
  }

  get size (): number {
    return this.entries.size
  }
}

/**
 * Puts the prefix's host first when it is a candidate (alive, breaker closed: the router's list
 * has only those), its copy is as ready as the best one's, and it is not overloaded: a remote
 * host carries at most `slack` requests more than the first candidate, this node has a free
 * slot. Otherwise the strategy's order stands (least-loaded by default).
 */
export function preferPrefixHost (hosts: ModelHost[], affine: string | undefined, ctx: { load: (h: ModelHost) => number, slack: number, localHasRoom: boolean, stateRank: (h: ModelHost) => number }): ModelHost[] {
  if (affine == null || hosts.length < 2) return hosts
  const i = hosts.findIndex(h => h.peerId === affine)
  if (i <= 0) return hosts
  const h = hosts[i]
  const best = hosts[0]
  if (ctx.stateRank(h) > ctx.stateRank(best)) return hosts
  if (h.local ? !ctx.localHasRoom : ctx.load(h) > ctx.load(best) + ctx.slack) return hosts
  return [h, ...hosts.slice(0, i), ...hosts.slice(i + 1)]
}
