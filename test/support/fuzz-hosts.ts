/**
 * Real libp2p hosts on loopback for the stream fuzz tests, and the raw-stream side of an
 * attacker: open a protocol stream, send chosen bytes in chosen chunks, close (or not), then
 * see what came back: frames, a clean end, or a reset.
 */
import '../../src/polyfill.js'
import type { PeerId, Stream } from '@libp2p/interface'
import { createHost, type Host } from '../../src/p2p/host.js'
import { createIdentity } from '../../src/p2p/identity.js'

export async function newHost (): Promise<Host> {
  return await createHost({ privateKey: await createIdentity(), listen: ['/ip4/127.0.0.1/tcp/0'], mdns: false, mdnsIntervalMs: 1000 })
}

/** What came back on a stream, collected raw (independent of the readers under test). */
export interface Exchange {
  stream: Stream
  /** Every byte received, in order. */
  bytes: Uint8Array
  /** `closed`: the remote ended its side cleanly; `reset`: it reset (or aborted) the stream; `timeout`: neither in time. */
  end: 'closed' | 'reset' | 'timeout'
  ms: number
}

function collect (stream: Stream, ms: number): Promise<Omit<Exchange, 'stream'>> {
  const parts: Uint8Array[] = []
  const t0 = performance.now()
  return new Promise(resolve => {
    let timer: NodeJS.Timeout | undefined
    const finish = (end: Exchange['end']): void => {
      clearTimeout(timer)
      stream.removeEventListener('message', onMessage)
      stream.removeEventListener('remoteCloseWrite', onRemoteClose)
      stream.removeEventListener('close', onClose)
      const bytes = new Uint8Array(parts.reduce((n, p) => n + p.byteLength, 0))
      let at = 0
      for (const p of parts) { bytes.set(p, at); at += p.byteLength }
      resolve({ bytes, end, ms: performance.now() - t0 })
    }
    const onMessage = (evt: { data: Uint8Array | { subarray: () => Uint8Array } }): void => {
      parts.push(evt.data instanceof Uint8Array ? evt.data : evt.data.subarray())
    }
    const onRemoteClose = (): void => { finish('closed') }
    const onClose = (evt: Event): void => { finish((evt as Event & { error?: unknown }).error != null ? 'reset' : 'closed') }
    stream.addEventListener('message', onMessage as any)
    stream.addEventListener('remoteCloseWrite', onRemoteClose)
    stream.addEventListener('close', onClose)
    timer = setTimeout(() => { finish('timeout') }, ms)
  })
}

/**
 * Opens `protocol` on `peer`, sends `chunks` one by one (with back-pressure), closes the write
 * side unless told not to, and collects the answer until the remote ends or resets its side.
 */
export async function exchange (from: Host, peer: PeerId, protocol: string, chunks: Uint8Array[], opts: { close?: boolean, ms?: number } = {}): Promise<Exchange> {
  const stream = await from.dialProtocol(peer, protocol, { signal: AbortSignal.timeout(5000) })
  const answer = collect(stream, opts.ms ?? 5000)
  try {
    for (const c of chunks) {
      if (c.byteLength === 0) continue
      if (!stream.send(c)) await stream.onDrain({ signal: AbortSignal.timeout(5000) })
    }
    if (opts.close !== false) void stream.close().catch(() => {})
  } catch {
    // The receiver may reset the stream while we still send: that is one of the outcomes.
  }
  const got = await answer
  stream.abort(new Error('exchange over'))
  return { stream, ...got }
}
