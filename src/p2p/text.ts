/**
 * Text that peers choose (node names, GPU names, label keys and values, model and group names)
 * reaches terminals through the CLI and browsers through the API. A name holding terminal
 * control sequences can clear the screen, draw a fake table row or plant an OSC 8 link; bidi
 * overrides can make one name read as another. These functions remove every such character.
 * They are pure: the API applies them where it serializes peer data, the CLI again before it
 * prints (it may talk to an older node), and the node may apply them where snapshots enter.
 */

/**
 * C0 controls (U+0000-U+001F, tab and newline included: a newline in a name is a fake row),
 * DEL and C1 controls (U+007F-U+009F: U+009B is a one-byte CSI), the line and paragraph separators
 * (U+2028-U+2029: line breaks to some terminals) and the bidi embeddings,
 * overrides and isolates (U+202A-U+202E, U+2066-U+2069).
 */
const CONTROL = /[\u0000-\u001f\u007f-\u009f\u2028-\u202e\u2066-\u2069]/g
const HAS_CONTROL = /[\u0000-\u001f\u007f-\u009f\u2028-\u202e\u2066-\u2069]/

/** True when `s` holds a character that {@link stripControl} removes. */
export function hasControl (s: string): boolean {
  return HAS_CONTROL.test(s)
}

/** `s` without control characters and bidi overrides (the printable rest is kept as is). */
export function stripControl (s: string): string {
  return HAS_CONTROL.test(s) ? s.replace(CONTROL, '') : s
}

/**
 * A copy of a JSON-like value with {@link stripControl} applied to every string and every
 * object key; values without control characters are returned as they are (no copy). Keys that
 * collide once cleaned keep the last value. Depth is bounded by the value itself (JSON data).
 */
export function stripControlDeep<T> (value: T): T {
  return clean(value) as T
}

function clean (value: unknown): unknown {
  if (typeof value === 'string') return stripControl(value)
  if (value === null || typeof value !== 'object') return value
  if (Array.isArray(value)) {
    let out: unknown[] | undefined
    for (let i = 0; i < value.length; i++) {
      const c = clean(value[i])
      if (c !== value[i]) (out ??= value.slice())[i] = c
    }
    return out ?? value
  }
  // Only plain data is rewritten; Dates, Buffers and the like serialize on their own terms.
  const proto = Object.getPrototypeOf(value)
  if (proto !== Object.prototype && proto !== null) return value
  let changed = false
  const entries: Array<[string, unknown]> = []
  for (const [k, v] of Object.entries(value)) {
    const ck = stripControl(k)
    const cv = clean(v)
    if (ck !== k || cv !== v) changed = true
    entries.push([ck, cv])
  }
  if (!changed) return value
  const out: Record<string, unknown> = {}
  // defineProperty: a cleaned key of `__proto__` stays a plain own key, never a prototype.
  for (const [k, v] of entries) Object.defineProperty(out, k, { value: v, enumerable: true, writable: true, configurable: true })
  return out
}
