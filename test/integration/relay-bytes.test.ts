/**
 * Bytes as bytes across a hop (issue 12 item 3), real processes: node A (no engine) relays to
 * node B, which fronts an upstream stand-in (test/support/upstream-standin.ts).
 * - a 7.5 MiB audio body (multipart, as a client uploads it) reaches the upstream byte for byte
 *   (1.x carried it base64 in one JSON frame of at most 8 MiB: 400 frame_too_large);
 * - a request id crosses the hop: the client's `x-request-id` is in A's log and in B's.
 */
import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { createHash } from 'node:crypto'
import { UpstreamStandin } from '../support/upstream-standin.js'
import { getJson, startNode, stopNode, waitFor, type NodeProcess } from '../support/cluster.js'

describe('relay: bytes as bytes, request ids in both nodes\' logs', () => {
  let upstream: UpstreamStandin
  let a: NodeProcess, b: NodeProcess

  before(async () => {
    upstream = await UpstreamStandin.start({ models: ['voice-llm'] })
    a = await startNode({ name: 'rb-a', args: ['--engine', 'none', '--log-level', 'debug'] })
    b = await startNode({ name: 'rb-b', args: ['--bootstrap', `/ip4/127.0.0.1/tcp/${a.p2pPort}`, '--engine', 'none', '--upstream', upstream.url, '--log-level', 'debug'] })
    await waitFor('A sees the upstream model on B', async () => (await getJson(`${a.api}/v1/models`)).data.some((m: any) => m.id === 'voice-llm'), 15_000)
  })
  after(async () => {
    await Promise.all([a, b].filter(n => n != null).map(async n => await stopNode(n, 'SIGKILL')))
    await upstream?.close()
  })

  it('relays a 7.5 MiB audio upload through B to the upstream byte for byte', async () => {
    const audio = new Uint8Array(7.5 * 1024 * 1024)
    for (let i = 0; i < audio.length; i++) audio[i] = (i * 131 + (i >> 9)) & 0xff
    const form = new FormData()
    form.append('model', 'voice-llm')
    form.append('file', new Blob([audio], { type: 'audio/wav' }), 'speech.wav')
    const res = await fetch(`${a.api}/v1/audio/transcriptions`, { method: 'POST', body: form })
    const text = await res.text()
    assert.equal(res.status, 200, text)
    assert.equal(res.headers.get('x-shepherd-host'), b.id, 'served across the hop')
    // The upstream answers with the size and digest of the whole body it received.
    const received = upstream.received.filter(r => r.path === '/v1/audio/transcriptions').at(-1)!
    const sent = Buffer.from(await new Response(form).arrayBuffer())
    assert.ok(received.body.length > audio.length, 'the whole multipart body arrived')
    // Multipart boundaries differ per serialization of the form: compare the file part itself.
    const digest = createHash('sha256').update(audio).digest('hex')
    assert.ok(received.body.includes(Buffer.from(audio)), 'the file part is in the body the upstream received')
    assert.equal(createHash('sha256').update(received.body.subarray(received.body.indexOf(Buffer.from(audio)), received.body.indexOf(Buffer.from(audio)) + audio.length)).digest('hex'), digest)
    assert.ok(sent.length > 0)
    assert.match(text, /received \d+ bytes sha256 [0-9a-f]{64}/)
    assert.equal(JSON.parse(text).text, `received ${received.body.length} bytes sha256 ${createHash('sha256').update(received.body).digest('hex')}`)
  })

  it('a request id crosses the hop and appears in both nodes\' logs', async () => {
    const id = `it-${Date.now()}`
    const res = await fetch(`${a.api}/v1/chat/completions`, { method: 'POST', headers: { 'content-type': 'application/json', 'x-request-id': id }, body: JSON.stringify({ model: 'voice-llm', stream: true, messages: [{ role: 'user', content: 'one two three' }] }) })
    assert.equal(res.status, 200)
    assert.equal(res.headers.get('x-request-id'), id)
    assert.ok((await res.text()).endsWith('data: [DONE]\n\n'))
    const lines = (n: NodeProcess): any[] => n.stderr.join('').split('\n').filter(l => l.startsWith('{')).map(l => JSON.parse(l))
    await waitFor('the id in both logs', () => lines(a).some(l => l.requestId === id) && lines(b).some(l => l.requestId === id), 5000)
    const onA = lines(a).filter(l => l.requestId === id)
    const onB = lines(b).filter(l => l.requestId === id)
    assert.ok(onA.some(l => l.msg === 'relaying request' && l.peer === b.id), JSON.stringify(onA))
    assert.ok(onB.some(l => l.msg === 'serving relayed request' && l.peer === a.id), JSON.stringify(onB))
    // A plain id is made when the client sends none (or one that is not a plain token).
    const other = await fetch(`${a.api}/v1/chat/completions`, { method: 'POST', headers: { 'content-type': 'application/json', 'x-request-id': 'bad id\twith controls' }, body: JSON.stringify({ model: 'voice-llm', messages: [{ role: 'user', content: 'x' }] }) })
    assert.equal(other.status, 200)
    assert.match(other.headers.get('x-request-id') ?? '', /^[0-9a-f-]{36}$/)
  })
})
