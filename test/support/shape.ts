import assert from 'node:assert/strict'

export type Kind = 'string' | 'number' | 'integer' | 'boolean' | 'object' | 'array' | 'null'

/** Asserts that `obj` has exactly these keys, each of this type (an array lists allowed types). */
export function assertShape (obj: any, shape: Record<string, Kind | readonly Kind[]>, what: string): void {
  assert.ok(obj != null && typeof obj === 'object' && !Array.isArray(obj), `${what}: not an object: ${JSON.stringify(obj)}`)
  assert.deepEqual(Object.keys(obj).sort(), Object.keys(shape).sort(), `${what}: keys of ${JSON.stringify(obj)}`)
  for (const [k, t] of Object.entries(shape)) {
    const v = obj[k]
    const kinds: readonly Kind[] = typeof t === 'string' ? [t] : t
    const actual: Kind = v === null ? 'null' : Array.isArray(v) ? 'array' : Number.isInteger(v) ? 'integer' : typeof v as Kind
    assert.ok(kinds.includes(actual) || (actual === 'integer' && kinds.includes('number')), `${what}.${k}: ${actual}, expected ${kinds.join('|')}`)
  }
}
