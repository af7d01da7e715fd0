/**
 * Yamux window updates (src/p2p/yamux-window.ts), over two real libp2p hosts: a stream that reads
 * many small frames sends no window update until half its window is used (the library sent one
 * per frame: half of an idle node's writes), and a transfer many windows long still completes,
 * its window refilled as it goes.
 */
import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { StreamState, YamuxStream } from '@chainsafe/libp2p-yamux/stream'
import type { Stream } from '@libp2p/interface'
import { newHost } from '../support/fuzz-hosts.js'
import type { Host } from '../../src/p2p/host.js'
import { batchYamuxWindowUpdates, windowUpdateCanWait } from '../../src/p2p/yamux-window.js'

const PROTOCOL = '/shepherd-test/window/1.0.0'
/** yamux's frame type of a window update (frame.ts: Data 0, WindowUpdate 1). */
const WINDOW_UPDATE = 1
const INITIAL_WINDOW = 256 * 1024

interface Received { updates: number, bytes: number, done: Promise<void> }

describe('yamux window updates', () => {
  let a: Host
  let b: Host
  const received: Received[] = []

  before(async () => {
    a = await newHost()
    b = await newHost()
    await b.handle(PROTOCOL, (stream: Stream) => {
      assert.ok(stream instanceof YamuxStream, 'the handler gets the yamux stream itself')
      const r: Received = { updates: 0, bytes: 0, done: Promise.resolve() }
      const s = stream as unknown as { sendFrame: (header: { type: number }, body?: unknown) => boolean }
      const send = s.sendFrame
      s.sendFrame = (header, body) => {
        if (header.type === WINDOW_UPDATE) r.updates++
        return send(header, body)
      }
      r.done = new Promise<void>(resolve => {
        stream.addEventListener('message', evt => { r.bytes += evt.data.byteLength })
        stream.addEventListener('remoteCloseWrite', () => { resolve() })
      })
      received.push(r)
    })
    await a.dial(b.getMultiaddrs()[0])
  })

  after(async () => {
    await a?.stop()
    await b?.stop()
  })

  it('is applied, once', () => {
    assert.equal(batchYamuxWindowUpdates(), true)
    assert.equal(batchYamuxWindowUpdates(), true)
  })

  it('waits while less than half the window is used, and not while a stream opens or is paused', () => {
    const w = INITIAL_WINDOW
    assert.equal(windowUpdateCanWait({ state: StreamState.Established, recvWindow: w, recvWindowCapacity: w - 1000 }), true)
    assert.equal(windowUpdateCanWait({ state: StreamState.Established, recvWindow: w, recvWindowCapacity: w / 2 }), false)
    assert.equal(windowUpdateCanWait({ state: StreamState.SYNReceived, recvWindow: w, recvWindowCapacity: w - 1000 }), false)
    assert.equal(windowUpdateCanWait({ state: StreamState.Paused, recvWindow: w, recvWindowCapacity: w - 1000 }), false)
  })

  it('sends no window update for 200 small frames (one each, before)', async () => {
    const stream = await a.dialProtocol(b.peerId, PROTOCOL)
    const frame = new Uint8Array(200).fill(7)
    for (let i = 0; i < 200; i++) {
      if (!stream.send(frame)) await stream.onDrain()
      // One frame at a time, as SWIM sends them: each is read (and once answered) on its own.
      await new Promise(resolve => setImmediate(resolve))
    }
    await stream.close()
    const r = received.at(-1)!
    await r.done
    assert.equal(r.bytes, 200 * 200)
    // 40,000 bytes is less than half of the 256 KiB window: no update was due.
    assert.equal(r.updates, 0)
  })

  it('refills the window of a transfer eight windows long', async () => {
    const stream = await a.dialProtocol(b.peerId, PROTOCOL)
    const chunk = new Uint8Array(16 * 1024).fill(1)
    const total = 8 * INITIAL_WINDOW
    for (let sent = 0; sent < total; sent += chunk.byteLength) {
      if (!stream.send(chunk)) await stream.onDrain({ signal: AbortSignal.timeout(10_000) })
    }
    await stream.close()
    const r = received.at(-1)!
    await r.done
    assert.equal(r.bytes, total)
    // At least one update per half window consumed (the library's auto-tuning may grow the window).
    assert.ok(r.updates >= 2 && r.updates <= 2 * total / (INITIAL_WINDOW / 2), `updates: ${r.updates}`)
  })
})
