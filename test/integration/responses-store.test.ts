/**
 * Stored responses in the Responses API (issue 13): `store` (OpenAI's default), `previous_response_id`,
 * `item_reference`, `GET`/`DELETE /v1/responses/:id` and `/input_items`, through a 2-node mesh with
 * the official `openai` client. Entry node A has no model and keeps at most 3 responses
 * (`--responses-store-max 3`); host B serves the tiny model. Responses are stored on the node that
 * answered the client (A), never on the host, and the oldest go first.
 */
import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import path from 'node:path'
import OpenAI from 'openai'
import { createTinyModel } from '../support/tiny-model.js'
import { startNode, stopNode, tempDir, waitFor, type NodeProcess } from '../support/cluster.js'

const MODEL = 'tiny-store'

/** The 404 in OpenAI's error shape, naming the parameter. */
async function notFound (p: Promise<unknown>, param: string, message: RegExp): Promise<void> {
  await assert.rejects(p, (err: any) => {
    assert.ok(err instanceof OpenAI.NotFoundError, String(err))
    assert.equal(err.param, param)
    assert.equal((err as any).error.type, 'invalid_request_error')
    assert.match(err.message, message)
    return true
  })
}

describe('stored responses across the mesh', () => {
  const nodes: NodeProcess[] = []
  let a: NodeProcess, b: NodeProcess
  let client: OpenAI
  const ask = { model: MODEL, temperature: 0, max_output_tokens: 8 }

  before(async () => {
    const dir = await tempDir('shepherd-models-store-')
    await createTinyModel(path.join(dir, `${MODEL}.gguf`))
    a = await startNode({ name: 'store-a', timeoutMs: 60_000, args: ['--responses-store-max', '3'] })
    nodes.push(a)
    b = await startNode({ name: 'store-b', timeoutMs: 60_000, args: ['--bootstrap', `/ip4/127.0.0.1/tcp/${a.p2pPort}`, '--engine', 'embedded', '--threads', '1', '--models-dir', dir] })
    nodes.push(b)
    client = new OpenAI({ baseURL: `${a.api}/v1`, apiKey: 'unused', maxRetries: 0 })
    await waitFor('A to see B\'s model', async () => (await client.models.list()).data.some(m => m.id === MODEL), 30_000)
  })

  after(async () => { await Promise.all(nodes.map(async n => await stopNode(n, 'SIGKILL'))) })

  it('keeps a response: retrieve gives it back, input_items lists its input, a follow-up continues it', async () => {
    const first = await client.responses.create({ ...ask, input: 'Hello there' })
    assert.equal((first as any).store, true)
    assert.equal(first.previous_response_id, null)
    const got = await client.responses.retrieve(first.id)
    assert.deepEqual({ ...got, output_text: undefined }, { ...first, output_text: undefined })
    const items = await client.responses.inputItems.list(first.id)
    assert.equal(items.data.length, 1)
    assert.equal((items.data[0] as any).role, 'user')

    const second = await client.responses.create({ ...ask, previous_response_id: first.id, input: 'And then?' })
    assert.equal(second.previous_response_id, first.id)
    // The follow-up's prompt holds the first turn (its input and output) before the new input.
    const alone = await client.responses.create({ ...ask, input: 'And then?', store: false })
    assert.ok((second.usage?.input_tokens ?? 0) >= (alone.usage?.input_tokens ?? 0) + (first.usage?.output_tokens ?? 0),
      `${second.usage?.input_tokens} vs ${alone.usage?.input_tokens} + ${first.usage?.output_tokens}`)
    // A chain: the third turn holds both earlier ones.
    const third = await client.responses.create({ ...ask, previous_response_id: second.id, input: 'Go on.' })
    assert.ok((third.usage?.input_tokens ?? 0) > (second.usage?.input_tokens ?? 0))
  })

  it('a streamed response is stored as its final event has it', async () => {
    let final: any
    for await (const ev of await client.responses.create({ ...ask, input: 'Stream me', stream: true })) {
      if (ev.type === 'response.completed' || ev.type === 'response.incomplete') final = ev.response
    }
    assert.ok(final !== undefined)
    const got = await client.responses.retrieve(final.id)
    assert.deepEqual({ ...got, output_text: undefined }, { ...final, output_text: undefined })
  })

  it('item_reference names a stored output item; an unknown one is a 404', async () => {
    const first = await client.responses.create({ ...ask, input: 'Hello there' })
    const msg = first.output[0]
    assert.ok(msg.id !== undefined)
    const withRef = await client.responses.create({ ...ask, input: [{ role: 'user', content: 'Hello there' }, { type: 'item_reference', id: msg.id }, { role: 'user', content: 'More' }] })
    const withItem = await client.responses.create({ ...ask, input: [{ role: 'user', content: 'Hello there' }, msg as any, { role: 'user', content: 'More' }] })
    assert.equal(withRef.usage?.input_tokens, withItem.usage?.input_tokens, 'the reference stands for the item itself')
    await notFound(client.responses.create({ ...ask, input: [{ type: 'item_reference', id: 'msg_nope' }] }), 'input[0].id', /Item with id 'msg_nope' not found/)
  })

  it('store: false keeps nothing; unknown ids are 404s in OpenAI\'s shape; DELETE removes one', async () => {
    const unstored = await client.responses.create({ ...ask, input: 'Hello there', store: false })
    assert.equal((unstored as any).store, false)
    await notFound(client.responses.retrieve(unstored.id), 'response_id', /No response found/)
    await notFound(client.responses.create({ ...ask, input: 'x', previous_response_id: unstored.id }), 'previous_response_id', /Previous response with id .* not found/)
    await notFound(client.responses.create({ ...ask, input: 'x', previous_response_id: 'resp_' + 'f'.repeat(100_000) }), 'previous_response_id', /not found/)

    const kept = await client.responses.create({ ...ask, input: 'Hello there' })
    const del = async (id: string): Promise<Response> => await fetch(`${a.api}/v1/responses/${id}`, { method: 'DELETE', headers: { 'content-type': 'application/json' }, body: '{}' })
    const res = await del(kept.id)
    assert.equal(res.status, 200)
    assert.deepEqual(await res.json(), { id: kept.id, object: 'response', deleted: true })
    await notFound(client.responses.retrieve(kept.id), 'response_id', /No response found/)
    assert.equal((await del(kept.id)).status, 404)
    // A hostile previous_response_id type is a 400 naming it; the node keeps serving.
    await assert.rejects(client.responses.create({ ...ask, input: 'x', previous_response_id: 42 as any }), (err: any) => err.status === 400 && err.param === 'previous_response_id')
    assert.ok((await client.responses.create({ ...ask, input: 'still here' })).output.length > 0)
  })

  it('keeps at most --responses-store-max, oldest out first, on the entry node only', async () => {
    const ids: string[] = []
    for (let i = 0; i < 4; i++) ids.push((await client.responses.create({ ...ask, input: `turn ${i}` })).id)
    await notFound(client.responses.retrieve(ids[0]), 'response_id', /No response found/)
    for (const id of ids.slice(1)) assert.equal((await client.responses.retrieve(id)).id, id)
    // The host that generated them stores nothing: responses stay with the node the client talks to.
    const onHost = new OpenAI({ baseURL: `${b.api}/v1`, apiKey: 'unused', maxRetries: 0 })
    await notFound(onHost.responses.retrieve(ids[3]), 'response_id', /No response found/)
  })
})

describe('stored responses belong to the API key that stored them', () => {
  let node: NodeProcess | undefined
  const ask = { model: MODEL, temperature: 0, max_output_tokens: 8 }

  before(async () => {
    const dir = await tempDir('shepherd-models-store-keys-')
    await createTinyModel(path.join(dir, `${MODEL}.gguf`))
    node = await startNode({ name: 'store-keys', timeoutMs: 60_000, args: ['--engine', 'embedded', '--threads', '1', '--models-dir', dir], env: { SHEPHERD_API_KEYS: 'key-alice,key-mallory' } })
  })

  after(async () => { if (node != null) await stopNode(node, 'SIGKILL') })

  it("another key's id is a 404 everywhere: retrieve, input_items, previous_response_id, item_reference, DELETE", async () => {
    const alice = new OpenAI({ baseURL: `${node!.api}/v1`, apiKey: 'key-alice', maxRetries: 0 })
    const mallory = new OpenAI({ baseURL: `${node!.api}/v1`, apiKey: 'key-mallory', maxRetries: 0 })
    const secret = await alice.responses.create({ ...ask, input: 'my private prompt' })
    const item = secret.output[0].id as string
    await notFound(mallory.responses.retrieve(secret.id), 'response_id', /No response found/)
    await notFound(mallory.responses.inputItems.list(secret.id), 'response_id', /No response found/)
    await notFound(mallory.responses.create({ ...ask, input: 'x', previous_response_id: secret.id }), 'previous_response_id', /not found/)
    await notFound(mallory.responses.create({ ...ask, input: [{ type: 'item_reference', id: item }] }), 'input[0].id', /not found/)
    const del = await fetch(`${node!.api}/v1/responses/${secret.id}`, { method: 'DELETE', headers: { authorization: 'Bearer key-mallory' } })
    assert.equal(del.status, 404)
    // Alice still has it, whole, and can continue it.
    assert.equal((await alice.responses.retrieve(secret.id)).id, secret.id)
    const next = await alice.responses.create({ ...ask, input: 'go on', previous_response_id: secret.id })
    assert.equal(next.previous_response_id, secret.id)
    // What Mallory stores is hers alone, the other way round too.
    const hers = await mallory.responses.create({ ...ask, input: 'mine' })
    await notFound(alice.responses.retrieve(hers.id), 'response_id', /No response found/)
    assert.equal((await mallory.responses.retrieve(hers.id)).id, hers.id)
  })
})
