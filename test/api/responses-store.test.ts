/**
 * The Responses API's stored responses (issue 13): the bounded LRU (count and bytes) and how
 * `previous_response_id` and `item_reference` resolve through it in the request mapping.
 */
import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import { ShepherdError } from '../../src/errors.js'
import { ResponseStore } from '../../src/api/responses-store.js'
import { parseResponsesRequest, type ResponsesLookup } from '../../src/api/responses-mapping.js'

const response = (id: string, text = 'hi'): Record<string, unknown> => ({
  id,
  object: 'response',
  output: [{ id: `msg_${id}`, type: 'message', status: 'completed', role: 'assistant', content: [{ type: 'output_text', text, annotations: [], logprobs: [] }] }]
})
const stored = (id: string, text = 'hi'): { response: Record<string, unknown>, conversation: Array<Record<string, unknown>> } =>
  ({ response: response(id, text), conversation: [{ type: 'message', role: 'user', content: 'q' }, ...(response(id, text).output as Array<Record<string, unknown>>)] })

describe('ResponseStore', () => {
  it("keeps each response for its owner: another owner's id, item or delete finds nothing", () => {
    const store = new ResponseStore({ maxResponses: 10, maxBytes: 1 << 20 })
    store.put('a', stored('a'), 'alice')
    store.put('m', stored('m'), 'mallory')
    store.put('n', stored('n'))
    assert.equal(store.get('a', 'mallory'), undefined)
    assert.equal(store.get('a'), undefined, 'a node without keys is another owner too')
    assert.equal(store.item('msg_a', 'mallory'), undefined)
    assert.equal(store.delete('a', 'mallory'), false)
    assert.ok(store.get('a', 'alice') !== undefined && store.item('msg_a', 'alice') !== undefined, 'still there for alice')
    assert.equal(store.get('m', 'alice'), undefined)
    assert.ok(store.get('n') !== undefined && store.get('n', 'alice') === undefined)
    assert.equal(store.delete('a', 'alice'), true)
    assert.equal(store.item('msg_a', 'alice'), undefined)
    assert.equal(store.size, 2)
  })

  it('keeps at most maxResponses, the least recently used out first', () => {
    const store = new ResponseStore({ maxResponses: 2, maxBytes: 1 << 20 })
    store.put('a', stored('a'))
    store.put('b', stored('b'))
    assert.ok(store.get('a') !== undefined, 'a touched: now b is the oldest')
    store.put('c', stored('c'))
    assert.equal(store.get('b'), undefined)
    assert.ok(store.get('a') !== undefined && store.get('c') !== undefined)
    assert.equal(store.size, 2)
    assert.equal(store.item('msg_b'), undefined, 'an evicted response takes its items along')
    assert.deepEqual(store.item('msg_a'), (response('a').output as unknown[])[0])
  })

  it('keeps at most maxBytes; one response alone over it is not kept', () => {
    const one = Buffer.byteLength(JSON.stringify(stored('a', 'x'.repeat(1000))))
    const store = new ResponseStore({ maxResponses: 100, maxBytes: one * 2 + 10 })
    for (const id of ['a', 'b', 'c']) assert.equal(store.put(id, stored(id, 'x'.repeat(1000))), true)
    assert.equal(store.size, 2)
    assert.equal(store.get('a'), undefined)
    assert.ok(store.totalBytes <= one * 2 + 10)
    assert.equal(store.put('huge', stored('huge', 'x'.repeat(10_000))), false)
    assert.equal(store.get('huge'), undefined)
    assert.equal(store.size, 2, 'a refused response evicts nothing')
  })

  it('delete removes a response and its items; a second delete says no', () => {
    const store = new ResponseStore({ maxResponses: 10, maxBytes: 1 << 20 })
    store.put('a', stored('a'))
    assert.equal(store.delete('a'), true)
    assert.equal(store.delete('a'), false)
    assert.equal(store.item('msg_a'), undefined)
    assert.equal(store.totalBytes, 0)
  })

  it('maxResponses 0 stores nothing; negative limits are refused', () => {
    assert.equal(new ResponseStore({ maxResponses: 0, maxBytes: 1 << 20 }).put('a', stored('a')), false)
    assert.throws(() => new ResponseStore({ maxResponses: -1, maxBytes: 1 }), RangeError)
  })
})

describe('previous_response_id and item_reference in the mapping', () => {
  const store = new ResponseStore({ maxResponses: 10, maxBytes: 1 << 20 })
  store.put('resp_1', stored('resp_1', 'first answer'))
  const lookup: ResponsesLookup = { conversation: id => store.get(id)?.conversation, item: id => store.item(id) }

  it('a previous response\'s conversation comes before the new input; its instructions do not', () => {
    const p = parseResponsesRequest({ model: 'm', previous_response_id: 'resp_1', input: 'next', instructions: 'be brief' }, { lookup })
    assert.deepEqual(p.body.messages, [
      { role: 'system', content: 'be brief' },
      { role: 'user', content: 'q' },
      { role: 'assistant', content: 'first answer' },
      { role: 'user', content: 'next' }
    ])
    assert.equal(p.echo.previousResponseId, 'resp_1')
    assert.equal(p.items.length, 3, 'stored with the next response: the whole chain')
  })

  it('item_reference stands for the stored item', () => {
    const p = parseResponsesRequest({ model: 'm', input: [{ type: 'item_reference', id: 'msg_resp_1' }, { role: 'user', content: 'more' }] }, { lookup })
    assert.deepEqual(p.body.messages, [{ role: 'assistant', content: 'first answer' }, { role: 'user', content: 'more' }])
  })

  it('unknown ids are 404s naming the parameter; a wrong type is a 400', () => {
    const is404 = (param: string, code: string) => (err: unknown) => err instanceof ShepherdError && err.status === 404 && err.param === param && err.code === code
    assert.throws(() => parseResponsesRequest({ model: 'm', previous_response_id: 'resp_nope', input: 'x' }, { lookup }), is404('previous_response_id', 'previous_response_not_found'))
    assert.throws(() => parseResponsesRequest({ model: 'm', input: [{ type: 'item_reference', id: 'msg_nope' }] }, { lookup }), is404('input[0].id', 'item_not_found'))
    assert.throws(() => parseResponsesRequest({ model: 'm', previous_response_id: 7, input: 'x' }, { lookup }), (err: unknown) => err instanceof ShepherdError && err.status === 400 && err.param === 'previous_response_id')
    // A hostile id is not echoed in full.
    assert.throws(() => parseResponsesRequest({ model: 'm', previous_response_id: 'r'.repeat(100_000), input: 'x' }, { lookup }), (err: unknown) => err instanceof ShepherdError && err.message.length < 400)
  })

  it('without a store (no lookup) both stay refused by name', () => {
    assert.throws(() => parseResponsesRequest({ model: 'm', previous_response_id: 'resp_1', input: 'x' }), (err: unknown) => err instanceof ShepherdError && err.param === 'previous_response_id' && err.code === 'unsupported_parameter')
  })
})
