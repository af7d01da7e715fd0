/**
 * The namespace LAN itself: unicast both ways through the bridge, multicast flooding (what
 * mDNS needs), silent link loss and recovery, and teardown that leaves nothing behind.
 */
import { execFileSync, spawnSync } from 'node:child_process'
import { createServer, connect } from 'node:net'
import type { AddressInfo } from 'node:net'
import { after, before, describe, test } from 'node:test'
import assert from 'node:assert/strict'
import { NetnsLan, sweepStaleLans } from '../support/netns.js'
import type { NsProcess } from '../support/netns.js'

/** A TCP server in a namespace that answers every connection with its own name, then closes. */
const TCP_NAME_SERVER = `
const net = require('node:net')
net.createServer(s => s.end(process.argv[1])).listen(7000, '0.0.0.0', () => console.log('ready'))
`

/** Connects to host:port, prints what it reads, exits 0; exits 1 on error or after 2 s. */
const TCP_CLIENT = `
const net = require('node:net')
const s = net.connect(Number(process.argv[2]), process.argv[1])
let data = ''
s.on('data', d => { data += d })
s.on('end', () => { process.stdout.write(data); process.exit(0) })
s.on('error', e => { console.error(e.message); process.exit(1) })
setTimeout(() => { console.error('timeout'); process.exit(1) }, 2000)
`

/** Joins 224.0.0.251 on eth0's address, prints the first datagram it gets. */
const MCAST_LISTENER = `
const dgram = require('node:dgram')
const s = dgram.createSocket({ type: 'udp4', reuseAddr: true })
s.on('message', m => { console.log('got ' + m.toString()); process.exit(0) })
s.bind(5399, () => { s.addMembership('224.0.0.251', process.argv[1]); console.log('ready') })
`

const MCAST_SENDER = `
const dgram = require('node:dgram')
const s = dgram.createSocket('udp4')
s.bind(() => {
  s.setMulticastInterface(process.argv[1])
  s.send(process.argv[2], 5399, '224.0.0.251', err => { if (err) { console.error(err.message); process.exit(1) } s.close() })
})
`

async function firstLine (proc: NsProcess, timeoutMs = 5000): Promise<string> {
  const { child } = proc
  return await new Promise((resolve, reject) => {
    let out = ''
    let err = ''
    const timer = setTimeout(() => { reject(new Error(`no output from ${proc.node.ns} in ${timeoutMs} ms; stderr: ${err}`)) }, timeoutMs)
    child.stderr?.on('data', d => { err += String(d) })
    child.stdout?.on('data', d => {
      out += String(d)
      const nl = out.indexOf('\n')
      if (nl >= 0) { clearTimeout(timer); resolve(out.slice(0, nl)) }
    })
    child.once('exit', code => { clearTimeout(timer); reject(new Error(`${proc.node.ns} exited ${code} before a line; stderr: ${err}`)) })
  })
}

async function tcpRead (host: string, port: number, timeoutMs = 1500): Promise<string> {
  return await new Promise((resolve, reject) => {
    const s = connect(port, host)
    let data = ''
    s.setTimeout(timeoutMs, () => { s.destroy(); reject(new Error(`timeout connecting to ${host}:${port}`)) })
    s.on('data', d => { data += String(d) })
    s.on('end', () => { resolve(data) })
    s.on('error', reject)
  })
}

function ourNames (pid: number): string[] {
  const ns = execFileSync('ip', ['netns', 'list'], { encoding: 'utf8' })
  const links = execFileSync('ip', ['-o', 'link', 'show'], { encoding: 'utf8' })
  return (ns + links).split(/\s+/).map(s => s.replace(/[:@].*$/, ''))
    .filter(n => n.startsWith(`shns-${pid}-`) || n === `shb${pid}` || n.startsWith(`shv${pid}x`) || n.startsWith(`shp${pid}x`))
}

describe('namespace LAN harness', () => {
  let lan: NetnsLan

  before(async () => {
    lan = await NetnsLan.create({ nodes: 3 })
    for (const node of lan.nodes) {
      const server = lan.spawn(node.index, process.execPath, ['-e', TCP_NAME_SERVER, node.ns])
      assert.equal(await firstLine(server), 'ready')
    }
  })

  after(async () => {
    await lan?.destroy()
  })

  test('builds distinct namespaces with addresses on one subnet', () => {
    assert.equal(lan.nodes.length, 3)
    assert.equal(new Set(lan.nodes.map(n => n.ns)).size, 3)
    for (const node of lan.nodes) {
      assert.ok(node.ip.startsWith(lan.subnet + '.'), node.ip)
      const routes = execFileSync('ip', ['-n', node.ns, 'route', 'show'], { encoding: 'utf8' })
      assert.match(routes, /^224\.0\.0\.0\/4 dev eth0/m)
      assert.doesNotMatch(routes, /^default/m, 'a namespace must have no way off the LAN')
    }
  })

  test('the test process reaches every node through the bridge', async () => {
    for (const node of lan.nodes) {
      assert.equal(await tcpRead(node.ip, 7000), node.ns)
    }
  })

  test('every node reaches every other node and the bridge address', async () => {
    const server = createServer(s => s.end('bridge'))
    await new Promise<void>(resolve => server.listen(0, lan.bridgeIp, resolve))
    const bridgePort = (server.address() as AddressInfo).port
    try {
      for (const from of lan.nodes) {
        const targets = lan.nodes.filter(n => n !== from).map(n => ({ host: n.ip, port: 7000, expect: n.ns }))
        targets.push({ host: lan.bridgeIp, port: bridgePort, expect: 'bridge' })
        for (const t of targets) {
          const out = await lan.exec(from.index, process.execPath, ['-e', TCP_CLIENT, t.host, String(t.port)])
          assert.equal(out, t.expect, `${from.ns} -> ${t.host}`)
        }
      }
    } finally {
      server.close()
    }
  })

  test('multicast from one namespace reaches the others', async () => {
    const listeners = [1, 2].map(i => lan.spawn(i, process.execPath, ['-e', MCAST_LISTENER, lan.nodes[i].ip]))
    for (const l of listeners) assert.equal(await firstLine(l), 'ready')
    const got = listeners.map(async l => await new Promise<string>((resolve, reject) => {
      let out = ''
      l.child.stdout?.on('data', d => { out += String(d) })
      l.child.once('exit', () => { resolve(out.trim()) })
      setTimeout(() => { reject(new Error(`${l.node.ns} got no multicast datagram`)) }, 3000).unref()
    }))
    await lan.exec(0, process.execPath, ['-e', MCAST_SENDER, lan.nodes[0].ip, 'hello'])
    assert.deepEqual(await Promise.all(got), ['got hello', 'got hello'])
  })

  test('linkDown silences a node and linkUp brings it back', async () => {
    await lan.linkDown(1)
    await assert.rejects(tcpRead(lan.nodes[1].ip, 7000, 800), /timeout|EHOSTUNREACH/)
    await assert.rejects(lan.exec(0, process.execPath, ['-e', TCP_CLIENT, lan.nodes[1].ip, '7000']))
    // Inside the namespace nothing changed but the carrier: the address and routes stay.
    const addr = execFileSync('ip', ['-n', lan.nodes[1].ns, '-4', 'addr', 'show', 'eth0'], { encoding: 'utf8' })
    assert.ok(addr.includes(lan.nodes[1].ip))
    await lan.linkUp(1)
    assert.equal(await tcpRead(lan.nodes[1].ip, 7000, 3000), lan.nodes[1].ns)
  })

  test('destroy kills the processes and removes every namespace, veth and the bridge', async () => {
    const other = await NetnsLan.create({ nodes: 1 }).catch((err: Error) => err)
    assert.ok(other instanceof Error && /destroy the previous/.test(other.message), 'one LAN per process at a time')
    const sleeper = lan.spawn(0, process.execPath, ['-e', 'setInterval(() => {}, 1000)'])
    assert.ok(ourNames(process.pid).length >= 7)
    await lan.destroy()
    assert.deepEqual(ourNames(process.pid), [])
    assert.ok(sleeper.child.exitCode != null || sleeper.child.signalCode != null, 'processes in the namespaces are killed')
    await lan.destroy() // idempotent
  })
})

describe('sweepStaleLans', () => {
  test('removes leftovers of a dead run and leaves live runs alone', () => {
    const dead = spawnSync(process.execPath, ['-e', '0']).pid
    assert.ok(dead != null)
    const staleNs = `shns-${dead}-0`
    const staleBr = `shb${dead}`
    const liveNs = `shns-${process.pid}-99`
    execFileSync('ip', ['netns', 'add', staleNs])
    execFileSync('ip', ['link', 'add', staleBr, 'type', 'bridge'])
    execFileSync('ip', ['netns', 'add', liveNs])
    try {
      const removed = sweepStaleLans()
      assert.ok(removed.includes(staleNs), `removed ${removed.join(',')}`)
      assert.ok(removed.includes(staleBr))
      assert.ok(!removed.includes(liveNs))
      const names = execFileSync('ip', ['netns', 'list'], { encoding: 'utf8' })
      assert.ok(!names.includes(staleNs))
      assert.ok(names.includes(liveNs))
    } finally {
      execFileSync('ip', ['netns', 'del', liveNs])
      spawnSync('ip', ['netns', 'del', staleNs])
      spawnSync('ip', ['link', 'del', staleBr])
    }
  })
})
