/**
 * `/shepherd/rpc-tunnel/1.0.0`: llama.cpp's RPC traffic between a split replica's head and its
 * workers, over the mesh's noise-encrypted, member-only libp2p connections (issue 16 item 2).
 *
 * llama.cpp's `rpc-server` has no authentication at all, so it is never reachable from the LAN:
 * a worker binds it to 127.0.0.1 only, and the head's `llama-server --rpc` connects to loopback
 * listeners of its own node ({@link RpcTunnelService.listen}). Each TCP connection accepted there
 * opens one libp2p stream to the worker, which the worker pipes into a TCP connection to its
 * local `rpc-server`. The stream starts with a short header naming the model, and the worker
 * accepts it only for a split it agreed to serve for exactly that head (`authorize`): a member
 * that merely asks gets nothing. Non-members never reach the handler (the host's guard resets
 * their streams, see host.ts).
 *
 * Wire: `u8 length` + UTF-8 model name (1..255 bytes), then raw bytes both ways. Bounded: the
 * header must arrive within {@link RPC_TUNNEL_DEFAULTS.headerTimeoutMs}, streams per connection
 * and tunnels per node are capped, and each direction keeps back-pressure (a paused socket or
 * stream while the other side drains), so neither end buffers much more than one yamux window.
 */
import net from 'node:net'
import { peerIdFromString } from '@libp2p/peer-id'
import type { Connection, Stream } from '@libp2p/interface'
import type { Host } from './host.js'
import { createLogger } from '../logger.js'

export const RPC_TUNNEL_PROTOCOL = '/shepherd/rpc-tunnel/1.0.0'

export const RPC_TUNNEL_DEFAULTS = Object.freeze({
  /** llama.cpp opens one connection per RPC server and a few more while loading; 16 is ample. */
  maxStreamsPerConnection: 16,
  /** Tunnels open at once on one node, both directions together. */
  maxTunnels: 64,
  /** The header is a few bytes sent at once; a stream silent this long is dropped. */
  headerTimeoutMs: 5_000,
  /**
   * Bytes a paused stream may hold before libp2p resets it. Pausing stops yamux's window
   * updates, but the remote may still send what the window already allows, and yamux grows a
   * busy stream's window up to 16 MiB: a limit below that reset tunnels whenever rpc-server
   * read a large tensor slower than it arrived. 16 MiB of window plus margin.
   */
  maxReadBufferBytes: 24 * 1024 * 1024,
  /** Opening the stream to a worker (dial + negotiation). */
  openTimeoutMs: 10_000
})

/** The worker's answer for one tunnel request: the loopback port of its rpc-server, or why not. */
export type TunnelVerdict = { port: number } | { refused: string }

export interface RpcTunnelServeOptions {
  /** Whether `peer` may reach this node's rpc-server for `model` (a split this node agreed to serve for it). */
  authorize: (peer: string, model: string) => TunnelVerdict
  /** A member's request refused (not a split it heads); for the audit log. */
  onRefused?: (peer: string, model: string, reason: string) => void
}

export interface TunnelListener {
  /** The loopback port llama-server's `--rpc 127.0.0.1:<port>` points at. */
  port: number
  /** Stops listening and ends every connection through it. */
  close: () => Promise<void>
}

export interface RpcTunnelStats {
  /** Tunnels open now, both directions. */
  open: number
  /** Tunnels opened since start. */
  opened: number
  /** Requests refused by `authorize` (or the limits). */
  refused: number
  /** Bytes carried each way since start. */
  bytesToWorker: number
  bytesFromWorker: number
}

const encoder = new TextEncoder()
const decoder = new TextDecoder('utf-8', { fatal: true })

/** The tunnel header for `model`; pure. */
export function encodeTunnelHeader (model: string): Uint8Array {
  const name = encoder.encode(model)
  if (name.byteLength < 1 || name.byteLength > 255) throw new RangeError('model name must be 1..255 bytes')
  const out = new Uint8Array(1 + name.byteLength)
  out[0] = name.byteLength
  out.set(name, 1)
  return out
}

/**
 * Reads a header off the front of `buf`: `null` when more bytes are needed, else the model and
 * how many bytes the header took. Throws on a zero length or a name that is not UTF-8. Pure.
 */
export function decodeTunnelHeader (buf: Uint8Array): { model: string, used: number } | null {
  if (buf.byteLength === 0) return null
  const n = buf[0]
  if (n === 0) throw new Error('empty model name')
  if (buf.byteLength < 1 + n) return null
  return { model: decoder.decode(buf.subarray(1, 1 + n)), used: 1 + n }
}

/**
 * Pipes a TCP socket and a libp2p stream into each other, with back-pressure both ways, until
 * either side ends; then the other is ended too (an error on one aborts the other, so neither
 * llama.cpp nor the remote hangs on a half-dead pipe).
 */
function pipe (socket: net.Socket, stream: Stream, count: (toStream: number, toSocket: number) => void, onDone: () => void): void {
  let done = false
  const finish = (err?: Error): void => {
    if (done) return
    done = true
    if (err != null) {
      stream.abort(err)
      socket.destroy()
    } else {
      void stream.close().catch(() => { stream.abort(new Error('close failed')) })
      socket.end()
    }
    onDone()
  }
  stream.maxReadBufferLength = RPC_TUNNEL_DEFAULTS.maxReadBufferBytes
  // RPC connections sit idle between requests for as long as the model is loaded.
  stream.inactivityTimeout = 0
  socket.setNoDelay(true)
  socket.on('data', (data: Buffer) => {
    count(data.byteLength, 0)
    try {
      if (!stream.send(data)) {
        socket.pause()
        stream.onDrain().then(() => { socket.resume() }, (err: Error) => { finish(err) })
      }
    } catch (err) {
      finish(err as Error)
    }
  })
  // The stream is paused in a microtask, not inside the message handler: libp2p's resume()
  // dispatches the buffered data first and re-enables yamux's window updates after, so a
  // pause() from within that dispatch would be undone at once and the remote could send without
  // limit (until the read buffer limit resets the stream mid-tensor).
  let pausing = false
  const pauseStream = (): void => {
    pausing = false
    if (done || !socket.writableNeedDrain) return
    try { stream.pause() } catch { return }
    socket.once('drain', () => { try { stream.resume() } catch {} })
  }
  stream.addEventListener('message', evt => {
    const data = evt.data
    count(0, data.byteLength)
    const chunk = data instanceof Uint8Array ? data : data.subarray()
    if (!socket.write(chunk) && !pausing) {
      pausing = true
      queueMicrotask(pauseStream)
    }
  })
  // A clean end on one side ends the other; anything else tears both down.
  socket.on('end', () => { finish() })
  socket.on('error', err => { finish(err) })
  socket.on('close', hadError => { finish(hadError ? new Error('socket closed with an error') : undefined) })
  stream.addEventListener('remoteCloseWrite', () => { finish() })
  stream.addEventListener('close', evt => { finish((evt as any).error ?? undefined) })
}

/**
 * Both ends of the RPC tunnel: `serve` on a worker, `listen` on a head. One per host.
 */
export class RpcTunnelService {
  readonly stats: RpcTunnelStats = { open: 0, opened: 0, refused: 0, bytesToWorker: 0, bytesFromWorker: 0 }
  private readonly log = createLogger('p2p:rpc-tunnel')
  private serving = false
  private readonly listeners = new Set<TunnelListener>()
  /** Worker side: tunnels per (head, model), open now, and when one last opened or closed. */
  private readonly uses = new Map<string, { open: number, lastAt: number }>()

  constructor (private readonly host: Host) {}

  /** Starts answering tunnel requests (a worker). Idempotent. */
  async serve (opts: RpcTunnelServeOptions): Promise<void> {
    if (this.serving) return
    this.serving = true
    await this.host.handle(RPC_TUNNEL_PROTOCOL, (stream, conn) => { this.onStream(stream, conn, opts) }, {
      maxInboundStreams: RPC_TUNNEL_DEFAULTS.maxStreamsPerConnection,
      maxOutboundStreams: RPC_TUNNEL_DEFAULTS.maxStreamsPerConnection
    })
  }

  /**
   * Worker side: how many tunnels `peer` has open to this node's rpc-server for `model`, and
   * when one last opened or closed (ms; null when never). An idle rpc-server is one without.
   */
  usage (peer: string, model: string): { open: number, lastAt: number | null } {
    const u = this.uses.get(`${peer}\u0000${model}`)
    return { open: u?.open ?? 0, lastAt: u?.lastAt ?? null }
  }

  async stop (): Promise<void> {
    await Promise.allSettled([...this.listeners].map(async l => { await l.close() }))
    if (this.serving) await this.host.unhandle(RPC_TUNNEL_PROTOCOL).catch(() => {})
    this.serving = false
  }

  private refuse (stream: Stream, peer: string, model: string, reason: string, opts: RpcTunnelServeOptions): void {
    this.stats.refused++
    this.log.warn('rpc tunnel refused', { peer, model, reason })
    opts.onRefused?.(peer, model, reason)
    stream.abort(new Error(`rpc tunnel refused: ${reason}`))
  }

  private onStream (stream: Stream, conn: Connection, opts: RpcTunnelServeOptions): void {
    const peer = conn.remotePeer.toString()
    if (this.stats.open >= RPC_TUNNEL_DEFAULTS.maxTunnels) { this.refuse(stream, peer, '', 'too many tunnels', opts); return }
    let head = new Uint8Array(0)
    const timer = setTimeout(() => { this.refuse(stream, peer, '', 'no header in time', opts) }, RPC_TUNNEL_DEFAULTS.headerTimeoutMs)
    timer.unref()
    const onHeader = (evt: { data: Uint8Array | { subarray: () => Uint8Array } }): void => {
      const data = evt.data instanceof Uint8Array ? evt.data : evt.data.subarray()
      const joined = new Uint8Array(head.byteLength + data.byteLength)
      joined.set(head)
      joined.set(data, head.byteLength)
      head = joined
      let parsed: ReturnType<typeof decodeTunnelHeader>
      try {
        parsed = decodeTunnelHeader(head)
      } catch (err) {
        clearTimeout(timer)
        stream.removeEventListener('message', onHeader as any)
        this.refuse(stream, peer, '', `bad header: ${(err as Error).message}`, opts)
        return
      }
      if (parsed == null) return
      clearTimeout(timer)
      stream.removeEventListener('message', onHeader as any)
      const verdict = opts.authorize(peer, parsed.model)
      if ('refused' in verdict) { this.refuse(stream, peer, parsed.model, verdict.refused, opts); return }
      // Hold what came after the header until the socket is connected.
      stream.pause()
      const rest = head.subarray(parsed.used)
      const socket = net.connect({ host: '127.0.0.1', port: verdict.port })
      socket.once('error', err => { stream.abort(err) })
      socket.once('connect', () => {
        const key = `${peer}\u0000${parsed.model}`
        const use = this.uses.get(key) ?? { open: 0, lastAt: 0 }
        use.open++
        use.lastAt = Date.now()
        this.uses.set(key, use)
        this.track(socket, stream, 'worker', () => {
          use.open--
          use.lastAt = Date.now()
          // Bounded: past maxTunnels pairs a closed pair is forgotten (it then looks unused, which
          // only delays an idle rpc-server's stop to the longer unused grace).
          if (use.open <= 0 && this.uses.size > RPC_TUNNEL_DEFAULTS.maxTunnels) this.uses.delete(key)
        })
        if (rest.byteLength > 0) { this.stats.bytesToWorker += rest.byteLength; socket.write(rest) }
        stream.resume()
      })
    }
    stream.addEventListener('message', onHeader as any)
  }

  private track (socket: net.Socket, stream: Stream, side: 'worker' | 'head', onDone?: () => void): void {
    this.stats.open++
    this.stats.opened++
    pipe(socket, stream, (toStream, toSocket) => {
      // On a worker the socket is rpc-server: what it writes goes back to the head.
      const s = this.stats
      if (side === 'worker') {
        s.bytesFromWorker += toStream
        s.bytesToWorker += toSocket
      } else {
        s.bytesToWorker += toStream
        s.bytesFromWorker += toSocket
      }
    }, () => { this.stats.open--; onDone?.() })
  }

  /**
   * A loopback listener (127.0.0.1, ephemeral port) on this node (a head) whose every connection
   * is tunnelled to `worker`'s rpc-server for `model`. A connection the worker refuses, or that
   * cannot be opened, is closed at once: llama.cpp then fails to load instead of hanging.
   */
  async listen (worker: string, model: string): Promise<TunnelListener> {
    const header = encodeTunnelHeader(model)
    const sockets = new Set<net.Socket>()
    const server = net.createServer({ pauseOnConnect: true }, socket => {
      sockets.add(socket)
      socket.once('close', () => { sockets.delete(socket) })
      socket.on('error', () => {})
      void (async () => {
        try {
          if (this.stats.open >= RPC_TUNNEL_DEFAULTS.maxTunnels) throw new Error('too many tunnels')
          const stream = await this.host.dialProtocol(peerIdFromString(worker), RPC_TUNNEL_PROTOCOL, { signal: AbortSignal.timeout(RPC_TUNNEL_DEFAULTS.openTimeoutMs) })
          if (socket.destroyed) { stream.abort(new Error('client gone')); return }
          stream.send(header)
          this.track(socket, stream, 'head')
          socket.resume()
        } catch (err) {
          this.log.warn('rpc tunnel open failed', { worker, model, err })
          socket.destroy()
        }
      })()
    })
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject)
      server.listen(0, '127.0.0.1', () => { server.off('error', reject); resolve() })
    })
    const port = (server.address() as net.AddressInfo).port
    const listener: TunnelListener = {
      port,
      close: async () => {
        this.listeners.delete(listener)
        for (const s of sockets) s.destroy()
        await new Promise<void>(resolve => { server.close(() => { resolve() }) })
      }
    }
    this.listeners.add(listener)
    return listener
  }
}
