/**
 * Yamux window updates as hashicorp/yamux and go-yamux send them: once at least half of a stream's
 * receive window has been consumed, not after every data frame.
 *
 * `@chainsafe/libp2p-yamux` 8 answers every data frame it reads with a window update of the
 * frame's length. Membership traffic is small frames on long-lived streams (a SWIM probe and its
 * ack, one frame each way per second), so half of every idle node's writes were 30-byte window
 * updates, and each write on loopback wakes the peer's process. A 16-node idle mesh on this
 * project's 2-core machine spent 2.8 % of a core per node with them and 2.3 % without
 * (`prof`-style runs, same machine, back to back).
 *
 * The sender still has at least half the window (128 KiB of the initial 256 KiB) when an update is
 * skipped, and the update goes out with the frame that crosses the half: a stream never stalls for
 * want of one. Streams opening (SYN/ACK flags ride on the update) and paused streams keep the
 * library's behaviour. Wire-compatible: the window semantics are yamux's own. Idempotent; applied
 * by host.ts before any connection exists.
 */
import { StreamState, YamuxStream } from '@chainsafe/libp2p-yamux/stream'

/** The fields of a yamux stream the policy reads (private in its typings). */
interface Window { state: StreamState, recvWindow: number, recvWindowCapacity: number }

type Proto = YamuxStream & { __shepherdWindow?: true }

/** Whether an established stream's window update may wait: less than half its window consumed. */
export function windowUpdateCanWait (s: Window): boolean {
  return s.state === StreamState.Established && s.recvWindow - s.recvWindowCapacity < s.recvWindow / 2
}

/** Applies the half-window policy to yamux streams; true once applied (now or before). */
export function batchYamuxWindowUpdates (): boolean {
  const proto = YamuxStream.prototype as Proto
  if (proto.__shepherdWindow === true) return true
  const send = proto.sendWindowUpdate
  proto.sendWindowUpdate = function (this: YamuxStream): void {
    if (windowUpdateCanWait(this as unknown as Window)) return
    send.call(this)
  }
  proto.__shepherdWindow = true
  return true
}

batchYamuxWindowUpdates()
