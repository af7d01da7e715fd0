import { readFileSync } from 'node:fs'
import { fileURLToPath } from 'node:url'

/** Reads a recorded tool output from test/fixtures/gpu (see SOURCES.md there). */
export function gpuFixture (name: string): string {
  return readFileSync(fileURLToPath(new URL(`../../fixtures/gpu/${name}`, import.meta.url)), 'utf8')
}
