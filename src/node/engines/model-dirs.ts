import { readdirSync, statSync } from 'node:fs'
import path from 'node:path'
import type { ModelEntry } from './embedded.js'

/** The `*.gguf` files directly in `dirs` (multimodal projectors left out), for engines given dirs, not a list. */
export function scanModelsDirs (dirs: readonly string[]): ModelEntry[] {
  const out: ModelEntry[] = []
  for (const dir of dirs) {
    let names: string[]
    try {
      names = readdirSync(dir)
    } catch {
      continue
    }
    for (const file of names) {
      // Multimodal projectors are not models one can chat with.
      if (!file.toLowerCase().endsWith('.gguf') || file.toLowerCase().startsWith('mmproj')) continue
      const full = path.join(dir, file)
      try {
        const st = statSync(full)
        if (st.isFile()) out.push({ name: file.slice(0, -'.gguf'.length), path: full, sizeBytes: st.size })
      } catch {}
    }
  }
  return out
}
