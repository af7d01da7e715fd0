/** `/shepherd/vote/1.0.0`: bounded, validated decoders (fuzzed) and the service over real libp2p hosts. */
import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import fc from 'fast-check'
import { generateKeyPair } from '@libp2p/crypto/keys'
import { peerIdFromPrivateKey } from '@libp2p/peer-id'
import { newHost, exchange } from '../support/fuzz-hosts.js'
import type { Host } from '../../src/p2p/host.js'
import {
  MAX_TERM, VOTE_PROTOCOL, VoteService, isLeaderCertificate, isVoteRequest, isVoteResponse, requestVote, signVote, verifyVote
} from '../../src/p2p/index.js'

describe('vote wire decoders', () => {
  it('never throw, and accept only well-formed frames', () => {
    fc.assert(fc.property(fc.anything(), x => {
      assert.equal(typeof isVoteRequest(x), 'boolean')
      assert.equal(typeof isVoteResponse(x), 'boolean')
      assert.equal(typeof isLeaderCertificate(x), 'boolean')
    }), { numRuns: 2000 })
    assert.equal(isVoteRequest({ v: 1, t: 'vote', group: 'g', term: 3 }), true)
    assert.equal(isVoteRequest({ v: 1, t: 'cert', group: 'g' }), true)
    for (const term of [-1, 1.5, MAX_TERM + 1, 1e12, 2 ** 53, 1e308]) assert.equal(isVoteRequest({ v: 1, t: 'vote', group: 'g', term }), false, `term ${term}`)
    assert.equal(isVoteRequest({ v: 2, t: 'vote', group: 'g', term: 1 }), false)
    assert.equal(isVoteRequest({ v: 1, t: 'vote', group: 'g'.repeat(65), term: 1 }), false)
    assert.equal(isVoteRequest({ v: 1, t: 'vote', group: 'g', term: 1, extra: 1 }), false)
  })

  it('signed votes verify only for exactly what was signed', async () => {
    const key = await generateKeyPair('Ed25519')
    const id = peerIdFromPrivateKey(key).toString()
    const vote = await signVote(key, id, { group: 'g', term: 4, candidate: id })
    assert.equal(await verifyVote(vote), true)
    assert.equal(await verifyVote({ ...vote, term: 5 }), false)
    assert.equal(await verifyVote({ ...vote, group: 'h' }), false)
    const other = await generateKeyPair('Ed25519')
    assert.equal(await verifyVote({ ...vote, voter: peerIdFromPrivateKey(other).toString() }), false)
    assert.equal(await verifyVote({ ...vote, sig: 'x' }), false)
  })
})

describe('vote service over real libp2p', () => {
  let a: Host, b: Host
  const violations: string[] = []
  before(async () => {
    [a, b] = await Promise.all([newHost(), newHost()])
    await a.dial(b.getMultiaddrs()[0])
    await new VoteService(b).serve(async (req, peer) => req.t === 'cert'
      ? { t: 'cert', cert: null }
      : { t: 'refused', code: 'leader_alive', message: `no vote for ${peer.slice(-4)} at ${req.term}` }, { onViolation: (_p, r) => { violations.push(r) } })
  })
  after(async () => { await Promise.all([a.stop(), b.stop()]) })

  it('answers a request, and names the authenticated requester', async () => {
    const r = await requestVote(a, b.peerId.toString(), { v: 1, t: 'vote', group: 'g', term: 2 })
    assert.deepEqual(r, { t: 'refused', code: 'leader_alive', message: `no vote for ${a.peerId.toString().slice(-4)} at 2` })
    assert.deepEqual(await requestVote(a, b.peerId.toString(), { v: 1, t: 'cert', group: 'g' }), { t: 'cert', cert: null })
  })

  it('resets a stream that carries no valid request, and reports it', async () => {
    const junk = new TextEncoder().encode(JSON.stringify({ v: 1, t: 'vote', group: 'g', term: 1e12 }))
    const framed = new Uint8Array([junk.byteLength, ...junk])
    const got = await exchange(a, b.peerId, VOTE_PROTOCOL, [framed])
    assert.equal(got.bytes.byteLength, 0, 'no answer')
    const huge = await exchange(a, b.peerId, VOTE_PROTOCOL, [new Uint8Array([0xff, 0xff, 0x7f]), new Uint8Array(1000)])
    assert.equal(huge.bytes.byteLength, 0)
    assert.ok(violations.length >= 2)
    await assert.rejects(requestVote(a, b.peerId.toString(), { v: 1, t: 'vote', group: 'g', term: 1e12 } as any))
  })
})

describe('a vote request hedged on a new connection', () => {
  let a: Host, b: Host
  let calls = 0
  before(async () => {
    [a, b] = await Promise.all([newHost(), newHost()])
    await a.dial(b.getMultiaddrs()[0])
    // The first request is never answered, as one stuck behind TCP's retransmission backoff on a
    // connection that queued frames during a partition would not be for seconds.
    await new VoteService(b).serve(async req => {
      calls++
      if (calls === 1) await new Promise(resolve => setTimeout(resolve, 10_000))
      return req.t === 'cert' ? { t: 'cert', cert: null } : { t: 'refused', code: 'stale_term', message: 'no' }
    })
  })
  after(async () => { await Promise.all([a.stop(), b.stop()]) })

  it('is answered through the second connection, well before the first attempt times out', async () => {
    const conns0 = a.getConnections(b.peerId).length
    const t0 = performance.now()
    const r = await requestVote(a, b.peerId.toString(), { v: 1, t: 'cert', group: 'g' }, { timeoutMs: 5000, hedgeMs: 200 })
    const ms = performance.now() - t0
    assert.deepEqual(r, { t: 'cert', cert: null })
    assert.equal(calls, 2)
    assert.ok(ms >= 200 && ms < 3000, `${ms} ms`)
    assert.equal(a.getConnections(b.peerId).length, conns0 + 1, 'the hedge went on a new connection')
    // Answered at once: no second request.
    assert.deepEqual(await requestVote(a, b.peerId.toString(), { v: 1, t: 'cert', group: 'g' }, { timeoutMs: 5000, hedgeMs: 200 }), { t: 'cert', cert: null })
    assert.equal(calls, 3)
  })
})
