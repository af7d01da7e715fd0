/**
 * The seeded pseudo-random numbers behind the `random` and `weighted` placement strategies, so
 * that a decision replays exactly from its seed.
 */

/** mulberry32: a tiny, fast 32-bit PRNG; uniform enough for picking nodes, not for secrets. */
export function seededRandom (seed: number): () => number {
  let s = seed >>> 0
  return () => {
    s = (s + 0x6d2b79f5) >>> 0
    let t = s
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }
}

/** A fresh seed for a caller that gave none (the decision reports it, so it can be replayed). */
export function newSeed (): number {
  return Math.floor(Math.random() * 4294967296)
}

/**
 * A uniform number in [0, 1) fixed by (seed, key): FNV-1a over the key, mixed with the seed by
 * murmur3's finaliser. Drawing per node id, rather than from one stream, makes the picks
 * independent of the order nodes are listed in and of which other nodes are present.
 */
export function keyedRandom (seed: number, key: string): number {
  let h = 0x811c9dc5 ^ (seed >>> 0)
  for (let i = 0; i < key.length; i++) h = Math.imul(h ^ key.charCodeAt(i), 0x01000193)
  h = Math.imul(h ^ (seed >>> 0), 0x9e3779b1)
  h ^= h >>> 16
  h = Math.imul(h, 0x85ebca6b)
  h ^= h >>> 13
  h = Math.imul(h, 0xc2b2ae35)
  h ^= h >>> 16
  return (h >>> 0) / 4294967296
}
