/**
 * A SWIM member in a process of its own, for tests that starve the test process's event loop:
 * it keeps answering while the test is blocked. Prints `<peer id> <multiaddr>` once it listens;
 * whoever connects to it becomes a member. Runs until killed.
 */
import { newHost } from './fuzz-hosts.js'
import { SWIM_LAN_DEFAULTS } from '../../src/p2p/swim.js'
import { SwimDriver } from '../../src/p2p/swim-driver.js'
import { SWIM_SUSPICION_MAX_MULT } from '../../src/p2p/swim-protocol.js'

const host = await newHost()
const swim = new SwimDriver(host, {
  config: { ...SWIM_LAN_DEFAULTS, probeIntervalMs: 500, probeTimeoutMs: 250, suspicionMaxMult: SWIM_SUSPICION_MAX_MULT },
  incarnation: Date.now(),
  boot: Date.now(),
  snapshotVersion: () => 0,
  verified: id => host.getConnections().some(c => c.remotePeer.toString() === id),
  onChange: () => {}
})
await swim.start()
host.addEventListener('connection:open', evt => { swim.add(evt.detail.remotePeer.toString()) })
process.stdout.write(`${host.peerId.toString()} ${host.getMultiaddrs()[0].toString()}\n`)
setInterval(() => {}, 60_000)
