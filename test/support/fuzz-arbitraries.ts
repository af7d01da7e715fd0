/**
 * Hostile inputs for the fuzz tests: values, JSON texts and byte strings that a peer or an HTTP
 * client can send, and mutations of valid messages (a field removed, retyped, grown huge,
 * nested deep, or joined by a `__proto__` / `constructor` key).
 */
import fc from 'fast-check'

const enc = new TextEncoder()

/** One long string, shared: longer than every string bound and than a command frame (64 KiB), cheap to reuse. */
export const HUGE_STRING = 'x'.repeat(70_000)

/** Keys that pollute prototypes or shadow Object methods when code handles them carelessly. */
export const POISON_KEYS = ['__proto__', 'constructor', 'prototype', 'toString', 'hasOwnProperty', 'valueOf', '__defineGetter__'] as const

/** An object holding `entries` as own data properties, `__proto__` included, with the normal prototype. */
export function objectOf (entries: Array<[string, unknown]>): Record<string, unknown> {
  const o: Record<string, unknown> = {}
  for (const [k, v] of entries) Object.defineProperty(o, k, { value: v, enumerable: true, writable: true, configurable: true })
  return o
}

/**
 * Deepest nesting put into values. `JSON.stringify` and `structuredClone` recurse, so values
 * much deeper would overflow the test's own stack; deeper documents are fuzzed as text
 * (`hostileJsonText`), which is what arrives on a wire anyway.
 */
export const MAX_VALUE_DEPTH = 2000

/** `depth` nested arrays (or objects), built without recursion. */
export function deepNest (depth: number, kind: 'array' | 'object' = 'array'): unknown {
  let v: unknown = 1
  for (let i = 0; i < depth; i++) v = kind === 'array' ? [v] : { a: v }
  return v
}

export function deepJsonText (depth: number, kind: 'array' | 'object' = 'array'): string {
  return kind === 'array' ? '['.repeat(depth) + ']'.repeat(depth) : '{"a":'.repeat(depth) + '1' + '}'.repeat(depth)
}

export const hostileKey: fc.Arbitrary<string> = fc.oneof(
  fc.constantFrom(...POISON_KEYS, '', ' ', '\u0000', 'a.b', '$ref', '0'),
  fc.string({ unit: 'binary', maxLength: 16 })
)

const hostileLeaf: fc.Arbitrary<unknown> = fc.oneof(
  fc.constantFrom(null, true, false, 0, -0, -1, 1.5, 2 ** 53, 2 ** 53 + 2, 1e308, -1e308, Number.NaN, Number.POSITIVE_INFINITY, Number.NEGATIVE_INFINITY, '', HUGE_STRING, undefined),
  fc.integer(),
  fc.double(),
  fc.string({ unit: 'binary', maxLength: 64 }),
  fc.string({ maxLength: 8 })
)

/** Any value a validator might be handed: JSON shapes plus NaN, Infinity, -0 and undefined, poison keys, some deep. */
export const hostileValue: fc.Arbitrary<unknown> = fc.letrec<{ value: unknown }>(tie => ({
  value: fc.oneof(
    { depthSize: 'small', withCrossShrink: true },
    hostileLeaf,
    fc.array(tie('value'), { maxLength: 6 }),
    fc.array(fc.tuple(hostileKey, tie('value')), { maxLength: 6 }).map(objectOf),
    fc.integer({ min: 64, max: MAX_VALUE_DEPTH }).chain(d => fc.constantFrom(deepNest(d, 'array'), deepNest(d, 'object'))),
    fc.integer({ min: 1000, max: 5000 }).map(n => Array.from({ length: n }, (_, i) => i))
  )
})).value

/** Same as `hostileValue`, restricted to what `JSON.parse` can produce (what really arrives). */
export const hostileJsonValue: fc.Arbitrary<unknown> = hostileValue.map(v => {
  try {
    const text = JSON.stringify(v)
    return text === undefined ? null : JSON.parse(text)
  } catch {
    return null
  }
})

/** Texts a parser must survive: near-JSON, non-JSON numbers, poison keys, deep nesting, cut-off documents. */
export const hostileJsonText: fc.Arbitrary<string> = fc.oneof(
  fc.string({ unit: 'binary', maxLength: 256 }),
  fc.json({ maxDepth: 4 }),
  fc.constantFrom(
    'NaN', 'Infinity', '-Infinity', '1e400', '-1e400', '-0', '0x10', '01', '.5', '{"a":NaN}', '{"a":Infinity}', '[1,]', '{"a":1,}',
    "{'a':1}", '"\\ud800"', '"\\udfff\\ud800"', '\ufeff{}', '{"__proto__":{"polluted":1}}', '{"constructor":{"prototype":{"polluted":1}}}',
    '{"a":1}{"b":2}', '', ' ', 'null', 'true', '[]', '{}', '"', '{"a":"\\u0000"}', '{"a":1,"a":2}', '[[[[[[', '{"a":',
    '{"v":1,"__proto__":{"v":2}}', '\u0000', '{"a":"\u0001"}'
  ),
  fc.integer({ min: 1, max: 200_000 }).map(d => deepJsonText(d, 'array')),
  fc.integer({ min: 1, max: 50_000 }).map(d => deepJsonText(d, 'object')),
  fc.json({ maxDepth: 3 }).chain(s => fc.nat({ max: s.length }).map(n => s.slice(0, n)))
)

/** Byte sequences UTF-8 forbids: a stray continuation, overlong forms, surrogates, cut-off sequences, too-large code points. */
export const INVALID_UTF8: readonly number[][] = [[0xff], [0x80], [0xc0, 0x80], [0xc1, 0xbf], [0xed, 0xa0, 0x80], [0xe2, 0x82], [0xf8, 0x88, 0x80, 0x80, 0x80], [0xf4, 0x90, 0x80, 0x80], [0xf0, 0x9f, 0x98]]

/** Inserts one invalid UTF-8 sequence into `bytes` at a position chosen by the arbitrary. */
export function withInvalidUtf8 (bytes: fc.Arbitrary<Uint8Array>): fc.Arbitrary<Uint8Array> {
  return fc.tuple(bytes, fc.constantFrom(...INVALID_UTF8), fc.nat()).map(([b, bad, at]) => {
    const i = b.byteLength === 0 ? 0 : at % (b.byteLength + 1)
    return Uint8Array.from([...b.subarray(0, i), ...bad, ...b.subarray(i)])
  })
}

/** Random edits of a byte string: bit flips, overwrites, cuts, insertions, repeats. */
export function mutateBytes (bytes: fc.Arbitrary<Uint8Array>): fc.Arbitrary<Uint8Array> {
  const edit = fc.record({ op: fc.constantFrom('flip', 'set', 'truncate', 'insert', 'repeat', 'append', 'drop'), at: fc.nat(), bit: fc.nat({ max: 7 }), junk: fc.uint8Array({ minLength: 1, maxLength: 16 }), n: fc.nat({ max: 64 }) })
  return fc.tuple(bytes, fc.array(edit, { minLength: 1, maxLength: 4 })).map(([b, edits]) => {
    let out = Uint8Array.from(b)
    for (const e of edits) {
      const i = out.byteLength === 0 ? 0 : e.at % out.byteLength
      switch (e.op) {
        case 'flip': if (out.byteLength > 0) out[i] ^= 1 << e.bit; break
        case 'set': if (out.byteLength > 0) out[i] = e.junk[0]; break
        case 'truncate': out = out.subarray(0, i); break
        case 'insert': out = Uint8Array.from([...out.subarray(0, i), ...e.junk, ...out.subarray(i)]); break
        case 'repeat': out = Uint8Array.from([...out, ...out.subarray(i, i + e.n)]); break
        case 'append': out = Uint8Array.from([...out, ...e.junk]); break
        case 'drop': out = Uint8Array.from([...out.subarray(0, i), ...out.subarray(i + 1 + e.n)]); break
      }
    }
    return out
  })
}

/** Arbitrary bytes, hostile texts as UTF-8, invalid UTF-8, and edits of all of them. */
export const hostileBytes: fc.Arbitrary<Uint8Array> = fc.oneof(
  fc.uint8Array({ maxLength: 512 }),
  hostileJsonText.map(t => enc.encode(t)),
  withInvalidUtf8(fc.json({ maxDepth: 2 }).map(t => enc.encode(t))),
  mutateBytes(fc.json({ maxDepth: 2 }).map(t => enc.encode(t)))
)

type Path = Array<string | number>

function pathsOf (v: unknown, prefix: Path = [], out: Path[] = [], depth = 0): Path[] {
  out.push(prefix)
  if (depth < 8 && v !== null && typeof v === 'object') {
    for (const k of Object.keys(v)) pathsOf((v as Record<string, unknown>)[k], [...prefix, Array.isArray(v) ? Number(k) : k], out, depth + 1)
  }
  return out
}

function parentOf (root: { v: unknown }, path: Path): { holder: any, key: string | number } {
  let holder: any = root
  let key: string | number = 'v'
  for (const k of path) { holder = holder[key]; key = k }
  return { holder, key }
}

/** A JSON value of another type than `v`. */
export function otherTypeThan (v: unknown, pick: number): unknown {
  const all: unknown[] = [null, true, 0, 1.5, -1, 'x', '', [], {}, [v], { v }]
  const kind = (x: unknown): string => x === null ? 'null' : Array.isArray(x) ? 'array' : typeof x
  const others = all.filter(x => kind(x) !== kind(v) && !(typeof x === 'number' && typeof v === 'number'))
  return others[pick % others.length]
}

export type MutationOp = 'replace' | 'delete' | 'add' | 'retype' | 'grow' | 'nest'

export interface Mutation { op: MutationOp, pick: number, key: string, value: unknown, n: number }

export const mutation: fc.Arbitrary<Mutation> = fc.record({
  op: fc.constantFrom<MutationOp>('replace', 'delete', 'add', 'retype', 'grow', 'nest'),
  pick: fc.nat(),
  key: hostileKey,
  value: hostileValue,
  n: fc.nat({ max: 1_000_000 })
})

/** Applies `m` to a deep copy of the JSON value `valid`; `valid` itself is left as it was. */
export function applyMutation (valid: unknown, m: Mutation): unknown {
  const root = { v: valid === undefined ? undefined : JSON.parse(JSON.stringify(valid) ?? 'null') as unknown }
  const paths = pathsOf(root.v)
  const path = paths[m.pick % paths.length]
  const { holder, key } = parentOf(root, path)
  const current = holder[key]
  switch (m.op) {
    case 'replace':
      holder[key] = m.value
      break
    case 'delete':
      if (path.length === 0) root.v = undefined
      else if (Array.isArray(holder)) holder.splice(key as number, 1)
      else delete holder[key]
      break
    case 'add':
      if (Array.isArray(current)) current.push(m.value)
      else if (current !== null && typeof current === 'object') Object.defineProperty(current, m.key, { value: m.value, enumerable: true, writable: true, configurable: true })
      else holder[key] = objectOf([[m.key, m.value]])
      break
    case 'retype':
      holder[key] = otherTypeThan(current, m.n)
      break
    case 'grow':
      // Bounded whatever came before: a grown array holds small items, a grown string stops at HUGE_STRING's length.
      if (typeof current === 'string') {
        const length = Math.min(HUGE_STRING.length, current.length + 1 + m.n % HUGE_STRING.length)
        const unit = current.length === 0 ? 'x' : current
        holder[key] = unit.repeat(Math.ceil(length / unit.length)).slice(0, length)
      } else if (Array.isArray(current)) {
        const small = current.length > 0 && (typeof current[0] === 'number' || (typeof current[0] === 'string' && current[0].length <= 64)) ? current[0] : null
        holder[key] = Array.from({ length: 1 + m.n % 2000 }, (_, i) => small ?? i)
      }
      else if (typeof current === 'number') holder[key] = [1e308, -1, 0.5, 2 ** 53 + 2, -0, 1e21, Number.MAX_SAFE_INTEGER + 1][m.n % 7]
      else holder[key] = HUGE_STRING
      break
    case 'nest':
      holder[key] = deepNest(64 + m.n % (MAX_VALUE_DEPTH - 64), m.n % 2 === 0 ? 'array' : 'object')
      break
  }
  return root.v
}

/** Random mutations (1 to 3) of valid values: the result may still be valid, or not. */
export function mutated (valid: fc.Arbitrary<unknown>): fc.Arbitrary<unknown> {
  return fc.tuple(valid, fc.array(mutation, { minLength: 1, maxLength: 3 })).map(([v, ms]) => ms.reduce((acc, m) => applyMutation(acc, m), v))
}

/**
 * What makes a message of one kind invalid for sure: a required field removed, an unknown field
 * added (when the schema is closed), or a field set to a value its schema refuses.
 */
export interface BreakSpec {
  required: readonly string[]
  /** With `additionalProperties: false` at the top level: every key the schema allows; else `false`. */
  closed: false | readonly string[]
  invalid: Record<string, readonly unknown[]>
}

export interface Broken { value: unknown, why: string }

/** Valid values broken in one of the ways `spec` names; `why` says which. */
export function broken (valid: fc.Arbitrary<Record<string, unknown>>, spec: BreakSpec): fc.Arbitrary<Broken> {
  const ways: Array<fc.Arbitrary<(v: Record<string, unknown>) => Broken>> = []
  if (spec.required.length > 0) {
    ways.push(fc.constantFrom(...spec.required).map(k => (v: Record<string, unknown>) => {
      const c = { ...v }
      delete c[k]
      return { value: c, why: `without required '${k}'` }
    }))
  }
  const allowed = spec.closed
  if (allowed !== false) {
    ways.push(fc.tuple(hostileKey, hostileJsonValue).map(([k, x]) => (v: Record<string, unknown>) => {
      const key = allowed.includes(k) ? 'zz_unknown' : k
      return { value: objectOf([...Object.entries(v), [key, x]]), why: `with unknown key ${JSON.stringify(key)}` }
    }))
  }
  const fields = Object.entries(spec.invalid).filter(([, bad]) => bad.length > 0)
  if (fields.length > 0) {
    ways.push(fc.constantFrom(...fields).chain(([k, bad]) => fc.constantFrom(...bad).map(x => (v: Record<string, unknown>) => {
      return { value: objectOf([...Object.entries(v).filter(([key]) => key !== k), [k, x]]), why: `with ${k} = ${describe(x)}` }
    })))
  }
  if (ways.length === 0) throw new Error('this BreakSpec names no way to break a value')
  return fc.tuple(valid, fc.oneof(...ways)).map(([v, f]) => f(v))
}

function describe (x: unknown): string {
  if (typeof x === 'string' && x.length > 40) return `'${x.slice(0, 10)}…' (${x.length} chars)`
  if (Array.isArray(x) && x.length > 10) return `[… ${x.length} items]`
  try { return JSON.stringify(x) ?? String(x) } catch { return String(x) }
}

/** Strings of exactly `n` code points, ASCII. */
export function ascii (n: number, ch = 'x'): string {
  return ch.repeat(n)
}
