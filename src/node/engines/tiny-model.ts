/**
 * A tiny but real llama-architecture GGUF model for tests: 64-dim, 2 layers, 4 heads, a
 * ~600-token SentencePiece-style vocabulary and a ChatML chat template. The weights are random
 * (from a seeded PRNG, so the file is byte-identical for a given seed); the text it writes is
 * nonsense, but llama.cpp loads it, tokenizes with it, samples from it and embeds with it
 * exactly as it does with a real model, in milliseconds and a few hundred KB.
 */
import { writeGguf, type GgufTensorSpec } from '../resources/gguf-writer.js'

export interface TinyModelOptions {
  /** PRNG seed for the weights. Defaults to 1. */
  seed?: number
  /** Embedding width. Defaults to 64; must be a multiple of the head count (4). */
  nEmbd?: number
  /**
   * `false` writes `tokenizer.ggml.add_space_prefix = false`: no space is put before text that
   * follows a special token. llama-server's chat grammars (structured output) start with the
   * generation prompt `<|im_start|>assistant\n` and fail when it tokenizes as `" as"...`.
   * Unset leaves the key out (and the file's bytes as they always were).
   */
  addSpacePrefix?: boolean
  /**
   * Trained context length written to the file. Defaults to 512; tool-calling tests need more,
   * since a chat template that documents functions takes several hundred tokens.
   */
  contextLength?: number
  /**
   * Shape overrides for benches (realistic compute and memory with random weights, e.g. the
   * Qwen2.5-0.5B shape: nEmbd 896, nLayer 24, nHead 14, nHeadKv 2, nFf 4864, vocabSize 151936,
   * tiedEmbeddings). Unset, the tiny shape is written, byte for byte as before.
   */
  nLayer?: number
  nHead?: number
  /** Key/value heads (grouped-query attention); defaults to `nHead`. */
  nHeadKv?: number
  /** Feed-forward width; defaults to 2 × nEmbd. */
  nFf?: number
  /** Pads the vocabulary to this many tokens with plain pieces (`<padN>`), never below the tiny one's. */
  vocabSize?: number
  /** No `output.weight`: the output projection reuses `token_embd` (as Qwen2.5-0.5B does). */
  tiedEmbeddings?: boolean
}

/** Shape of the model `createTinyModel` writes, for tests that check dimensions. */
export const TINY_MODEL = {
  nLayer: 2,
  nHead: 4,
  nFfMultiplier: 2,
  contextLength: 512,
  defaultNEmbd: 64
} as const

/** SentencePiece token types (llama.cpp `llama_token_type`). */
const TOKEN_TYPE = { normal: 1, unknown: 2, control: 3, byte: 6 } as const

const CHATML_TEMPLATE =
  "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}" +
  "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"

// Words whose `▁`-prefixed prefixes make up the word pieces. SentencePiece merges adjacent
// pieces only into pieces that are themselves in the vocabulary, so every prefix of a word
// is included: `▁t` + `h` → `▁th` + `e` → `▁the`.
const WORDS = [
  'the', 'of', 'and', 'to', 'in', 'is', 'it', 'you', 'that', 'he', 'was', 'for', 'on', 'are',
  'with', 'as', 'his', 'they', 'be', 'at', 'one', 'have', 'this', 'from', 'or', 'had', 'by',
  'hello', 'world', 'word', 'but', 'what', 'some', 'we', 'can', 'out', 'other', 'were', 'all',
  'there', 'when', 'up', 'use', 'your', 'how', 'said', 'an', 'each', 'she', 'which', 'do',
  'their', 'time', 'if', 'will', 'way', 'about', 'many', 'then', 'them', 'write', 'would',
  'like', 'so', 'these', 'her', 'long', 'make', 'thing', 'see', 'him', 'two', 'has', 'look',
  'more', 'day', 'could', 'go', 'come', 'did', 'number', 'sound', 'no', 'most', 'people',
  'my', 'over', 'know', 'water', 'than', 'call', 'first', 'who', 'may', 'down', 'side', 'been',
  'now', 'find', 'any', 'new', 'work', 'part', 'take', 'get', 'place', 'made', 'live', 'where',
  'after', 'back', 'little', 'only', 'round', 'man', 'year', 'came', 'show', 'every', 'good',
  'me', 'give', 'our', 'under', 'name', 'very', 'through', 'just', 'form', 'sentence', 'great',
  'think', 'say', 'help', 'low', 'line', 'differ', 'turn', 'cause', 'much', 'mean', 'before',
  'move', 'right', 'boy', 'old', 'too', 'same', 'tell', 'does', 'set', 'three', 'want', 'air',
  'well', 'also', 'play', 'small', 'end', 'put', 'home', 'read', 'hand', 'port', 'large',
  'spell', 'add', 'even', 'land', 'here', 'must', 'big', 'high', 'such', 'follow', 'act', 'why',
  'ask', 'men', 'change', 'went', 'light', 'kind', 'off', 'need', 'house', 'picture', 'try',
  'us', 'again', 'animal', 'point', 'mother', 'near', 'build', 'self', 'earth', 'father',
  'head', 'stand', 'own', 'page', 'should', 'country', 'found', 'answer', 'school', 'grow',
  'study', 'still', 'learn', 'plant', 'cover', 'food', 'sun', 'four', 'between', 'state', 'keep',
  'eye', 'never', 'last', 'let', 'thought', 'city', 'tree', 'cross', 'farm', 'hard', 'start'
]

const SINGLE_CHARS = [
  '▁', ...'abcdefghijklmnopqrstuvwxyz', ...'ABCDEFGHIJKLMNOPQRSTUVWXYZ', ...'0123456789',
  '.', ',', '!', '?', "'", '-', ':', '(', ')'
]

/** How many normal (non-special, non-byte) pieces the vocabulary gets. */
const NORMAL_PIECES = 340

interface Vocab {
  tokens: string[]
  scores: number[]
  types: number[]
  ids: { unk: number, bos: number, eos: number, imStart: number, imEnd: number }
}

function buildVocab (size = 0): Vocab {
  const tokens: string[] = []
  const scores: number[] = []
  const types: number[] = []
  const add = (text: string, type: number, score: number): number => {
    tokens.push(text)
    types.push(type)
    scores.push(score)
    return tokens.length - 1
  }

  const unk = add('<unk>', TOKEN_TYPE.unknown, 0)
  const bos = add('<s>', TOKEN_TYPE.control, 0)
  add('</s>', TOKEN_TYPE.control, 0)
  for (let b = 0; b < 256; b++) add(`<0x${b.toString(16).toUpperCase().padStart(2, '0')}>`, TOKEN_TYPE.byte, 0)
  const imStart = add('<|im_start|>', TOKEN_TYPE.control, 0)
  const imEnd = add('<|im_end|>', TOKEN_TYPE.control, 0)

  const pieces = new Set<string>(SINGLE_CHARS)
  outer: for (const word of WORDS) {
    const full = '▁' + word
    for (let len = 2; len <= full.length; len++) {
      if (pieces.size >= NORMAL_PIECES) break outer
      pieces.add(full.slice(0, len))
    }
  }
  // Longer pieces score higher, so the merge order prefers whole words, as real SentencePiece
  // models do.
  let i = 0
  for (const piece of pieces) add(piece, TOKEN_TYPE.normal, -1000 + [...piece].length * 10 - (i++) / 1000)
  // Padding for a realistic vocabulary size: plain ASCII pieces, so sampled ones stay valid text.
  for (let n = 0; tokens.length < size; n++) add(`<pad${n}>`, TOKEN_TYPE.normal, -10_000)

  return { tokens, scores, types, ids: { unk, bos, eos: imEnd, imStart, imEnd } }
}

/** mulberry32: tiny, fast, good enough to make weights that are not degenerate. */
function prng (seed: number): () => number {
  let a = seed >>> 0
  return () => {
    a = (a + 0x6d2b79f5) >>> 0
    let t = a
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }
}

/**
 * Writes the tiny model to `path` and returns `path`. The same options always produce the
 * same bytes.
 */
export async function createTinyModel (path: string, opts: TinyModelOptions = {}): Promise<string> {
  const seed = opts.seed ?? 1
  const nEmbd = opts.nEmbd ?? TINY_MODEL.defaultNEmbd
  const nLayer = opts.nLayer ?? TINY_MODEL.nLayer
  const nHead = opts.nHead ?? TINY_MODEL.nHead
  const nHeadKv = opts.nHeadKv ?? nHead
  const contextLength = opts.contextLength ?? TINY_MODEL.contextLength
  if (!Number.isInteger(nEmbd) || nEmbd < nHead || nEmbd % nHead !== 0) {
    throw new RangeError(`nEmbd must be a positive multiple of ${nHead}, got ${nEmbd}`)
  }
  if (!Number.isInteger(nHeadKv) || nHeadKv < 1 || nHead % nHeadKv !== 0) throw new RangeError(`nHeadKv must divide nHead (${nHead}), got ${nHeadKv}`)
  const nFf = opts.nFf ?? nEmbd * TINY_MODEL.nFfMultiplier
  const headDim = nEmbd / nHead
  const kvDim = headDim * nHeadKv
  const vocab = buildVocab(opts.vocabSize)
  const nVocab = vocab.tokens.length
  const rand = prng(seed)

  // Uniform weights scaled like a fan-in initialisation keep activations in range through
  // both layers, so the logits are varied and the sampled text is not one token repeated.
  const random = (n: number, fanIn: number): Float32Array => {
    const out = new Float32Array(n)
    const scale = Math.sqrt(3 / fanIn)
    for (let i = 0; i < n; i++) out[i] = (rand() * 2 - 1) * scale
    return out
  }
  const ones = (n: number): Float32Array => new Float32Array(n).fill(1)

  const tensors: GgufTensorSpec[] = [
    { name: 'token_embd.weight', dims: [nEmbd, nVocab], type: 'F16', data: random(nEmbd * nVocab, 1) },
    { name: 'output_norm.weight', dims: [nEmbd], type: 'F32', data: ones(nEmbd) },
    ...(opts.tiedEmbeddings === true ? [] : [{ name: 'output.weight', dims: [nEmbd, nVocab], type: 'F16' as const, data: random(nEmbd * nVocab, nEmbd / 4) }])
  ]
  for (let l = 0; l < nLayer; l++) {
    const p = `blk.${l}`
    tensors.push(
      { name: `${p}.attn_norm.weight`, dims: [nEmbd], type: 'F32', data: ones(nEmbd) },
      { name: `${p}.attn_q.weight`, dims: [nEmbd, nEmbd], type: 'F16', data: random(nEmbd * nEmbd, nEmbd) },
      { name: `${p}.attn_k.weight`, dims: [nEmbd, kvDim], type: 'F16', data: random(nEmbd * kvDim, nEmbd) },
      { name: `${p}.attn_v.weight`, dims: [nEmbd, kvDim], type: 'F16', data: random(nEmbd * kvDim, nEmbd) },
      { name: `${p}.attn_output.weight`, dims: [nEmbd, nEmbd], type: 'F16', data: random(nEmbd * nEmbd, nEmbd) },
      { name: `${p}.ffn_norm.weight`, dims: [nEmbd], type: 'F32', data: ones(nEmbd) },
      { name: `${p}.ffn_gate.weight`, dims: [nEmbd, nFf], type: 'F16', data: random(nEmbd * nFf, nEmbd) },
      { name: `${p}.ffn_up.weight`, dims: [nEmbd, nFf], type: 'F16', data: random(nEmbd * nFf, nEmbd) },
      { name: `${p}.ffn_down.weight`, dims: [nFf, nEmbd], type: 'F16', data: random(nFf * nEmbd, nFf) }
    )
  }

  await writeGguf(path, {
    metadata: [
      ['general.architecture', 'llama'],
      ['general.name', 'shepherd-tiny'],
      // 1 = LLAMA_FTYPE_MOSTLY_F16: the matrices are F16, the norms F32 as ggml requires.
      ['general.file_type', { type: 'uint32', value: 1 }],
      ['llama.context_length', { type: 'uint32', value: contextLength }],
      ['llama.embedding_length', { type: 'uint32', value: nEmbd }],
      ['llama.block_count', { type: 'uint32', value: nLayer }],
      ['llama.feed_forward_length', { type: 'uint32', value: nFf }],
      ['llama.attention.head_count', { type: 'uint32', value: nHead }],
      ['llama.attention.head_count_kv', { type: 'uint32', value: nHeadKv }],
      ['llama.rope.dimension_count', { type: 'uint32', value: headDim }],
      ['llama.rope.freq_base', { type: 'float32', value: 10000 }],
      ['llama.attention.layer_norm_rms_epsilon', { type: 'float32', value: 1e-5 }],
      ['llama.vocab_size', { type: 'uint32', value: nVocab }],
      ['tokenizer.ggml.model', 'llama'],
      ['tokenizer.ggml.tokens', { type: 'array', itemType: 'string', value: vocab.tokens }],
      ['tokenizer.ggml.scores', { type: 'array', itemType: 'float32', value: vocab.scores }],
      ['tokenizer.ggml.token_type', { type: 'array', itemType: 'int32', value: vocab.types }],
      ['tokenizer.ggml.unknown_token_id', { type: 'uint32', value: vocab.ids.unk }],
      ['tokenizer.ggml.bos_token_id', { type: 'uint32', value: vocab.ids.bos }],
      // `<|im_end|>` ends a ChatML turn, so making it EOS is what stops a chat reply.
      ['tokenizer.ggml.eos_token_id', { type: 'uint32', value: vocab.ids.eos }],
      ['tokenizer.ggml.add_bos_token', true],
      ['tokenizer.ggml.add_eos_token', false],
      ...(opts.addSpacePrefix === false ? [['tokenizer.ggml.add_space_prefix', false] as [string, boolean]] : []),
      ['tokenizer.chat_template', CHATML_TEMPLATE]
    ],
    tensors
  })
  return path
}
