/** A malformed --bootstrap or --listen is a one-line usage error before libp2p starts (issue 11, finding 9). */
import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import fs from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import { resolveOptions } from '../../src/config/index.js'
import { multiaddrProblem } from '../../src/config/load.js'
import { ConfigError } from '../../src/errors.js'
import { runCli, tempDir } from '../support/cluster.js'

const PEER = '12D3KooWQYhTNQdmr3ArTeUHRYzFg94BKyTkoWBDWez9kSCVe2Xo'

describe('multiaddr options', () => {
  it('accepts TCP multiaddrs with or without a peer id, and DNS names', () => {
    for (const a of ['/ip4/127.0.0.1/tcp/9191', `/ip4/10.0.0.2/tcp/9191/p2p/${PEER}`, '/ip6/::1/tcp/0', '/dns4/node-a.lan/tcp/9191', `/dns/x.example/tcp/1/p2p/${PEER}`]) {
      assert.equal(multiaddrProblem(a), null, a)
    }
  })

  it('names what is wrong', () => {
    assert.match(String(multiaddrProblem('/ip4/127.0.0.1/tcp/9191/p2p')), /p2p was missing value/)
    assert.match(String(multiaddrProblem('127.0.0.1:9191')), /must start with/)
    assert.match(String(multiaddrProblem('/ip4/999.0.0.1/tcp/1')), /IPv4/)
    assert.match(String(multiaddrProblem('/ip4/127.0.0.1/tcp/70000')), /65535/)
    assert.match(String(multiaddrProblem('/ip4/127.0.0.1/udp/9191')), /tcp/)
    assert.match(String(multiaddrProblem('/ip4/127.0.0.1/tcp/1/p2p/notapeerid')), /not a peer id/)
  })

  it('refuses them from flags, environment and file, naming the source and the value', async () => {
    await assert.rejects(resolveOptions({ env: {}, flags: { bootstrap: ['/ip4/127.0.0.1/tcp/9191/p2p'] } }), (err: any) => {
      assert.ok(err instanceof ConfigError)
      assert.equal(err.message, "--bootstrap: '/ip4/127.0.0.1/tcp/9191/p2p' is not a valid multiaddr: Component p2p was missing value")
      assert.equal(err.param, 'p2p.bootstrap')
      return true
    })
    await assert.rejects(resolveOptions({ env: { SHEPHERD_LISTEN: 'tcp://0.0.0.0:9191' } }), /^ConfigError: environment SHEPHERD_LISTEN: 'tcp:\/\/0.0.0.0:9191' is not a valid multiaddr/)
    const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'shepherd-cfg-'))
    const file = path.join(dir, 'node.yaml')
    await fs.writeFile(file, 'p2p:\n  bootstrap: [/ip4/1.2.3.4/tcp/1/p2p/bad]\n')
    await assert.rejects(resolveOptions({ env: {}, configFile: file }), /'p2p.bootstrap': '\/ip4\/1.2.3.4\/tcp\/1\/p2p\/bad' is not a valid multiaddr/)
    await assert.rejects(resolveOptions({ env: {}, overrides: { bootstrap: ['nonsense'] } }), /^ConfigError: --bootstrap: 'nonsense'/)
  })

  it('shepherd-mesh start exits 2 with one line naming the flag and the value, before anything starts', async () => {
    const dataDir = await tempDir()
    for (const [flag, value] of [['--bootstrap', '/ip4/127.0.0.1/tcp/9191/p2p'], ['--listen', '/ip4/127.0.0.1/tcpx/1']]) {
      const r = await runCli(['start', '--no-mdns', '--data-dir', dataDir, '--api-port', '0', flag, value])
      assert.equal(r.code, 2, r.err)
      const lines = r.err.trim().split('\n')
      assert.equal(lines.length, 1, r.err)
      assert.ok(lines[0].startsWith(`shepherd-mesh: ${flag}: '${value}' is not a valid multiaddr`), lines[0])
      assert.equal(r.out, '')
    }
    // Nothing was created in the data dir: the node never opened its store.
    assert.deepEqual(await fs.readdir(dataDir), [])
  })
})
