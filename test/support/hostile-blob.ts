/**
 * A hostile `/shepherd/blob` source built from the project's own wire code: it answers any
 * request with `file`, announcing whatever sha256 it likes (by default the one the client asked
 * for, so a client that trusts the announcement is fooled), and ignores the client's digest pin.
 */
import { createHash } from 'node:crypto'
import type { Stream } from '@libp2p/interface'
import { BlobFrameReader, encodeControlFrame, encodeDataFrame, isBlobRequest } from '../../src/p2p/blob-messages.js'

export interface HostileBlobOptions {
  /** What the header announces: `'asked'` (the fingerprint requested), `'true'` (the file's own sha256), or a fixed digest. */
  announce?: 'asked' | 'true' | string
}

/** Stream handler for `host.handle(BLOB_PROTOCOL, ...)`. Counts the requests it answered in `served`. */
export function hostileBlobSource (file: Uint8Array, opts: HostileBlobOptions = {}): ((stream: Stream) => void) & { served: number } {
  const trueSha = createHash('sha256').update(file).digest('hex')
  const handler = Object.assign((stream: Stream): void => {
    void (async () => {
      const reader = new BlobFrameReader(stream, { maxControlBytes: 4096, maxDataBytes: 0 })
      const frame = await reader.read()
      reader.dispose()
      if (frame?.kind !== 'control' || !isBlobRequest(frame.value)) throw new Error('bad request')
      handler.served++
      const { offset, fingerprint } = frame.value
      const announce = opts.announce ?? 'asked'
      const sha256 = announce === 'asked' ? fingerprint : announce === 'true' ? trueSha : announce
      stream.send(encodeControlFrame({ t: 'header', size: file.byteLength, sha256 }))
      for (let at = offset; at < file.byteLength; at += 64 * 1024) {
        if (!stream.send(encodeDataFrame(file.subarray(at, Math.min(at + 64 * 1024, file.byteLength))))) await stream.onDrain()
      }
      stream.send(encodeControlFrame({ t: 'end' }))
      await stream.close()
    })().catch(err => { stream.abort(err) })
  }, { served: 0 })
  return handler
}
