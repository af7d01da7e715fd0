/**
 * Layer ranges of a split replica (issue 16), shared by the head (its llama-server flags) and
 * the scheduler (what status shows). Pure.
 */

/**
 * Which layers each node holds, as llama.cpp assigns them: the head keeps `[0, h)` on its own
 * CPU (h from its fraction), the rest and the output layer are offloaded (`--n-gpu-layers
 * L - h + 1`) and spread over the workers by `--tensor-split`: layer `il` goes to the first
 * device whose cumulative split exceeds `(il - h) / (L - h + 1)` (llama-model.cpp). Ranges are
 * inclusive `[from, to]`; a node that gets no layer is left out. Pure.
 */
export function layerRanges (nLayers: number, fractions: number[]): { headLayers: number, gpuLayers: number, tensorSplit: number[], ranges: Array<[number, number] | null> } {
  const L = Math.max(1, Math.floor(nLayers))
  const sum = fractions.reduce((s, f) => s + Math.max(0, f), 0) || 1
  const norm = fractions.map(f => Math.max(0, f) / sum)
  // The head keeps at least one layer off the workers only when its share says so.
  const headLayers = Math.min(L, Math.max(0, Math.round(L * (norm[0] ?? 0))))
  const workerFr = norm.slice(1)
  const wsum = workerFr.reduce((s, f) => s + f, 0) || 1
  const tensorSplit = workerFr.map(f => Math.round(f / wsum * 1000) / 1000)
  const gpuLayers = L - headLayers + 1
  const cum: number[] = []
  let acc = 0
  const tsum = tensorSplit.reduce((s, f) => s + f, 0) || 1
  for (const f of tensorSplit) { acc += f; cum.push(acc / tsum) }
  const ranges: Array<[number, number] | null> = [headLayers > 0 ? [0, headLayers - 1] : null, ...workerFr.map(() => null as [number, number] | null)]
  for (let il = headLayers; il < L; il++) {
    const x = (il - headLayers) / gpuLayers
    let dev = cum.findIndex(c => c > x)
    if (dev < 0) dev = cum.length - 1
    const r = ranges[dev + 1]
    ranges[dev + 1] = r == null ? [il, il] : [r[0], il]
  }
  return { headLayers, gpuLayers, tensorSplit, ranges }
}
