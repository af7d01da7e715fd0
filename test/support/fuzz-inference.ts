/**
 * Arbitraries and a reference model for `/shepherd/openai/2.0.0` (src/p2p/inference-messages.ts):
 * call heads valid and broken, request sequences (call, body blocks, end) valid and broken, response
 * frames, and what a reader of length-prefixed binary frames must see for a byte string.
 */
import fc from 'fast-check'
import { FRAME_TYPE, PASSTHROUGH_PATHS, type CallHead } from '../../src/p2p/inference-messages.js'
import { ascii, objectOf, type BreakSpec } from './fuzz-arbitraries.js'
import { concat, varint } from './fuzz-harness.js'

const enc = new TextEncoder()
const text = (minLength: number, maxLength: number): fc.Arbitrary<string> => fc.string({ unit: 'binary', minLength, maxLength })
const headers = fc.dictionary(fc.string({ maxLength: 12 }), text(0, 64), { maxKeys: 6 }).map(o => JSON.parse(JSON.stringify(o)) as Record<string, string>)

/** One frame: varint length, type byte, body. */
export function frame (type: number, body: Uint8Array = new Uint8Array(0)): Uint8Array {
  return concat(varint(body.byteLength + 1), Uint8Array.of(type), body)
}

export const jsonFrame = (type: number, value: unknown): Uint8Array => frame(type, enc.encode(JSON.stringify(value)))

const plainHead = fc.record({
  v: fc.constant(2 as const),
  id: fc.stringMatching(/^[A-Za-z0-9._:-]{1,40}$/),
  op: fc.constantFrom('chat' as const, 'completion' as const, 'embeddings' as const),
  model: text(1, 64),
  stream: fc.boolean(),
  size: fc.integer({ min: 0, max: 600 })
})
const passHead = fc.tuple(plainHead, fc.record({ method: fc.constantFrom('GET' as const, 'POST' as const), path: fc.constantFrom(...PASSTHROUGH_PATHS), headers }))
  .map(([h, pass]): CallHead => ({ ...h, op: 'passthrough', pass }))

export const callHead: fc.Arbitrary<CallHead> = fc.oneof(plainHead.map((h): CallHead => h), passHead)

export const callHeadBreaks: BreakSpec = {
  required: ['v', 'id', 'op', 'model', 'stream', 'size'],
  closed: ['v', 'id', 'op', 'model', 'stream', 'size', 'pass'],
  invalid: {
    v: [1, '2', 0, null],
    id: ['', 'a b', 'x\n', ascii(129), 5, null],
    op: ['chat2', '', 5, null, 'CHAT'],
    stream: ['true', 1, null],
    model: ['', ascii(257), 5, null],
    size: [-1, 1.5, 64 * 1024 * 1024 + 1, '5', null],
    pass: [
      {},
      { method: 'PUT', path: '/audio/speech', headers: {} },
      { method: 'GET', path: '/../etc/passwd', headers: {} },
      { method: 'POST', path: '/audio/speech', headers: { a: 5 } },
      { method: 'POST', path: '/audio/speech', headers: {}, extra: 1 },
      { method: 'POST', path: '/audio/speech', headers: objectOf(Array.from({ length: 65 }, (_, i) => [`h${i}`, 'v'])) }
    ]
  }
}

/** A whole valid request: its call head, then its body in blocks, then `end`. */
export const validRequest: fc.Arbitrary<{ head: CallHead, bytes: Uint8Array }> = callHead.chain(head =>
  fc.tuple(fc.uint8Array({ minLength: head.size, maxLength: head.size }), fc.array(fc.nat(), { maxLength: 3 })).map(([body, cuts]) => {
    const points = [...new Set(cuts.map(c => head.size === 0 ? 0 : c % head.size))].filter(c => c > 0).sort((a, b) => a - b)
    const blocks: Uint8Array[] = []
    let at = 0
    for (const p of [...points, head.size]) { if (p > at) blocks.push(body.subarray(at, p)); at = p }
    return { head, bytes: concat(jsonFrame(FRAME_TYPE.call, head), ...blocks.map(b => frame(FRAME_TYPE.data, b)), frame(FRAME_TYPE.end)) }
  }))

/** A response frame a host may send, well-formed. */
export const responseFrame: fc.Arbitrary<Uint8Array> = fc.oneof(
  fc.dictionary(fc.string({ maxLength: 8 }), fc.oneof(fc.integer(), fc.string({ maxLength: 16 }))).map(o => jsonFrame(FRAME_TYPE.result, o)),
  fc.dictionary(fc.string({ maxLength: 8 }), fc.integer()).map(o => jsonFrame(FRAME_TYPE.chunk, o)),
  fc.uint8Array({ minLength: 1, maxLength: 64 }).map(b => frame(FRAME_TYPE.data, b)),
  fc.constant(frame(FRAME_TYPE.end)),
  fc.record({ status: fc.integer({ min: 400, max: 599 }), error: fc.record({ message: text(0, 100), type: text(0, 16), param: fc.option(text(0, 16), { nil: null }), code: fc.option(text(0, 16), { nil: null }) }) }).map(e => jsonFrame(FRAME_TYPE.error, e)),
  fc.record({ status: fc.integer({ min: 100, max: 599 }), headers }).map(h => jsonFrame(FRAME_TYPE.head, h))
)

/** A frame that breaks the response grammar: unknown type, empty, a result that is not one JSON object line, a bad error. */
export const badResponseFrame: fc.Arbitrary<Uint8Array> = fc.oneof(
  fc.integer({ min: 8, max: 255 }).map(t => frame(t)),
  fc.constant(concat(varint(0))),
  fc.constantFrom('[]', '{"a":1}\n', 'not json', '{"a":', '"s"').map(s => frame(FRAME_TYPE.chunk, enc.encode(s))),
  fc.constant(jsonFrame(FRAME_TYPE.error, { status: 200, error: {} })),
  fc.constant(frame(FRAME_TYPE.end, Uint8Array.of(1))),
  fc.constant(jsonFrame(FRAME_TYPE.call, { v: 2 }))
)

export { modelRawFramed, type RawOutcome } from './fuzz-frames.js'
