/**
 * OpenAI's `logit_bias` for the embedded engine, as node-llama-cpp's `TokenBias`: each bias is
 * added to its token's logit, so -100 all but bans it, as OpenAI describes. (llama-server
 * takes the field itself.)
 */
import type { LlamaModel, TokenBias } from 'node-llama-cpp'
import { BadRequestError } from '../../errors.js'

/** Tokens in the model's vocabulary, from its GGUF metadata. */
function vocabularySize (model: LlamaModel): number | undefined {
  const tokens = (model.fileInfo.metadata as { tokenizer?: { ggml?: { tokens?: unknown } } }).tokenizer?.ggml?.tokens
  return Array.isArray(tokens) ? tokens.length : undefined
}

/**
 * The `tokenBias` option for a generation, or nothing when the request has no bias. A token id
 * outside the vocabulary is refused: llama.cpp would index past its logits with it.
 * node-llama-cpp never biases end-of-generation tokens, so a bias cannot keep a reply from ending.
 */
export function tokenBiasOption (TokenBiasClass: typeof TokenBias, model: LlamaModel, logitBias: Array<[number, number]> | undefined): { tokenBias?: TokenBias } {
  if (logitBias === undefined) return {}
  const size = vocabularySize(model)
  if (size === undefined) throw new BadRequestError('logit_bias is not supported for this model: its vocabulary size is unknown', 'logit_bias', 'unsupported_parameter')
  const bias = new TokenBiasClass(model.tokenizer)
  for (const [token, value] of logitBias) {
    if (token >= size) throw new BadRequestError(`logit_bias names token ${token}; this model's vocabulary has ${size} tokens`, 'logit_bias')
    // Added to the logit even at -100, as llama-server does: a token the grammar forces (a
    // tiny vocabulary's only "{") stays possible; 'never' would leave nothing to sample.
    bias.set(token as never, { logit: value })
  }
  return { tokenBias: bias }
}
