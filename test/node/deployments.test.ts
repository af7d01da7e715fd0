/**
 * Deployment records are signed by the member that wrote them: gossiped records are merged only
 * when the origin's signature verifies, the origin is a member and the stamp is not from the
 * future; refused ones are audited and never kept (so never gossiped on). Real LevelDB store.
 */
import { describe, it, before } from 'node:test'
import assert from 'node:assert/strict'
import fs from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import { generateKeyPair } from '@libp2p/crypto/keys'
import { peerIdFromPrivateKey } from '@libp2p/peer-id'
import type { PrivateKey } from '@libp2p/interface'
import { DeploymentStore, type Deployment } from '../../src/node/deployments.js'
import { DEPLOYMENT_SIGNING_DOMAIN, signDeployment } from '../../src/node/deployment-record.js'
import { Store } from '../../src/node/store.js'
import { signObject } from '../../src/p2p/index.js'

interface Key { id: string, key: PrivateKey }
async function newKey (): Promise<Key> {
  const key = await generateKeyPair('Ed25519')
  return { key, id: peerIdFromPrivateKey(key).toString() }
}

describe('signed deployments', () => {
  let self: Key, peer: Key, outsider: Key
  before(async () => { [self, peer, outsider] = await Promise.all([newKey(), newKey(), newKey()]) })

  async function openStore (dir?: string): Promise<{ store: Store, d: DeploymentStore, audits: Array<[string, string, string]>, dir: string }> {
    dir ??= await fs.mkdtemp(path.join(os.tmpdir(), 'shepherd-dep-'))
    const store = await Store.open(dir)
    const audits: Array<[string, string, string]> = []
    const d = await DeploymentStore.open(store, () => self.id, { key: self.key, isMember: p => p !== outsider.id, audit: (c, p, x) => { audits.push([c, p, x]) } })
    return { store, d, audits, dir }
  }

  it('signs what this node writes; a member\'s signed record merges; forged, non-member and future ones do not', async () => {
    const { store, d, audits } = await openStore()
    const mine = await d.put({ model: 'm', replicas: 1, group: 'default' })
    assert.equal(typeof mine.sig, 'string')
    assert.equal(mine.origin, self.id)
    const now = Date.now()
    const good = await signDeployment(peer.key, { model: 'p', replicas: 2, group: 'default', updatedAt: now, origin: peer.id, deleted: false })
    const impostor = await signObject(outsider.key, DEPLOYMENT_SIGNING_DOMAIN, { model: 'q', replicas: 1, group: 'default', updatedAt: now, origin: peer.id, deleted: false }) as Deployment
    const nonMember = await signDeployment(outsider.key, { model: 'r', replicas: 1, group: 'default', updatedAt: now, origin: outsider.id, deleted: false })
    const eternal = await signDeployment(peer.key, { model: 'm', replicas: 1, group: 'default', updatedAt: 1e308, origin: peer.id, deleted: true })
    const ahead = await signDeployment(peer.key, { model: 'n', replicas: 1, group: 'default', updatedAt: now + 60_000, origin: peer.id, deleted: true })
    const { sig: _s, ...unsignedRest } = good
    const unsigned = { ...unsignedRest, model: 's' } as Deployment
    const changed = await d.merge([good, impostor, nonMember, eternal, ahead, unsigned], 'gossiper')
    assert.equal(changed, 1)
    assert.deepEqual(d.list().map(x => x.model), ['m', 'p'])
    assert.equal(d.get('m')?.deleted, false, 'the deployment survives the tombstones from the future')
    const codes = audits.map(a => a[0])
    assert.equal(codes.filter(c => c === 'deployment_unsigned').length, 3)
    assert.equal(codes.filter(c => c === 'deployment_from_future').length, 2)
    assert.ok(audits.every(a => a[1] === 'gossiper'))
    // Nothing refused is gossiped on.
    const gossiped = d.gossip().map(x => x.model).sort()
    assert.deepEqual(gossiped, ['m', 'p'])
    // Within the skew a stamp slightly ahead is fine (the writer's clock may run ahead).
    const slightly = await signDeployment(peer.key, { model: 'm', replicas: 3, group: 'default', updatedAt: Date.now() + 5000, origin: peer.id, deleted: false })
    assert.equal(await d.merge([slightly], 'gossiper'), 1)
    assert.equal(d.get('m')?.replicas, 3)
    await store.close()
  })

  it('ENOSPC: put answers 507 insufficient_storage and memory is unchanged', async () => {
    const { store, d } = await openStore()
    const table = (d as any).table
    const put = table.put
    table.put = async () => { throw Object.assign(new Error('IO error: No space left on device'), { code: 'LEVEL_IO_ERROR' }) }
    await assert.rejects(d.put({ model: 'm', replicas: 1, group: 'default' }), (err: any) => err.code === 'insufficient_storage' && err.status === 507)
    assert.equal(d.get('m'), undefined)
    table.put = put
    await store.close()
  })

  it('a record stamped in the future that reached the disk earlier is dropped at start', async () => {
    const { store, dir } = await openStore()
    const rec = await signDeployment(peer.key, { model: 'm', replicas: 1, group: 'default', updatedAt: 1e308, origin: peer.id, deleted: true })
    await store.table<Deployment>('deployments').put('m', rec, { sync: true })
    await store.close()
    const again = await openStore(dir)
    assert.equal(again.d.gossip().length, 0)
    assert.equal(await again.store.table<Deployment>('deployments').get('m'), undefined)
    await again.store.close()
  })
})
