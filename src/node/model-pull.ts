/**
 * `load_model`'s pull: fetches the file the command named (by fingerprint) from the listed peers
 * into the pull dir, audits every source that offered other content or no valid GGUF, and
 * records where the installed file came from (shown with the model in snapshots and /api/models).
 */
import { stat } from 'node:fs/promises'
import { fetchModel, type FetchModelResult } from './model-transfer.js'
import type { Mesh } from '../p2p/index.js'
import type { ResourceMonitor } from './resources/index.js'
import type { Store } from './store.js'

export interface PullDeps {
  mesh: Mesh<any>
  store: Store
  monitor: ResourceMonitor
  /** Where pulled model files are written. */
  pullDir: string
}

/**
 * Pulls `name` with `fingerprint` from `sources`. Throws the transfer's typed error
 * (`model_fingerprint_mismatch`, `model_invalid_file`, ...) with nothing left in the models dir.
 */
export async function pullModel (d: PullDeps, name: string, fingerprint: string, sources: readonly string[], ctx: { signal: AbortSignal, issuer: string, output: (line: string) => void, onProgress?: (receivedBytes: number, totalBytes: number) => void }): Promise<FetchModelResult> {
  const got = await fetchModel(d.mesh.libp2p, sources, {
    name,
    fingerprint,
    destDir: d.pullDir,
    signal: ctx.signal,
    // Bytes on disk (a resumed pull starts from what it had), for the deployment's progress.
    ...(ctx.onProgress != null ? { onProgress: p => { ctx.onProgress!(p.receivedBytes, p.totalBytes) } } : {}),
    onSourceRejected: (peer, code, message) => {
      ctx.output(`refused ${peer}: ${code}`)
      void d.store.appendAudit({ kind: code, peer, detail: `load_model ${name} (fingerprint ${fingerprint}, issued by ${ctx.issuer}): ${message}`, verdict: 'rejected' }).catch(() => {})
    }
  })
  if (got.peer != null) {
    try {
      // The bytes were hashed while written: the scanner need not read them again.
      const st = await stat(got.path)
      await d.monitor.contentHashes.remember([{ path: got.path, size: st.size, mtimeMs: st.mtimeMs, ino: st.ino }], got.sha256, { peer: got.peer, at: new Date().toISOString(), fingerprint })
    } catch {} // the file is installed and verified; a lost record only costs a rehash
    void d.store.appendAudit({ kind: 'model_pulled', peer: got.peer, detail: `${name} (fingerprint ${fingerprint}, ${got.sizeBytes} bytes, issued by ${ctx.issuer})`, verdict: 'accepted' }).catch(() => {})
  }
  return got
}
