/**
 * Grammars that make the embedded engine's output valid JSON (`json_object`) or JSON valid
 * against a schema (`json_schema`), built by node-llama-cpp and cached per Llama instance:
 * building one parses GBNF in native code, and agents send the same schema on every turn.
 */
import type { Llama, LlamaGrammar } from 'node-llama-cpp'
import { BadRequestError } from '../../errors.js'
import type { JsonSchema, ResponseFormat } from './response-format.js'

/**
 * node-llama-cpp's number rules let an exponent follow an integer (`95E-5` is no integer),
 * run exponents to 16 digits (`1e999` parses as Infinity, which no schema accepts) and write
 * 16-digit integers (past `Number.MAX_SAFE_INTEGER`). These are the rules with integers of at
 * most 15 digits and no exponent (`MAX_INTEGER`), and fractions with 2-digit exponents, so every
 * number the grammar allows is a finite JSON number of its type.
 */
const EXPONENT = ' ([eE] [-+]? ("0" | [1-9] [0-9]{0,15}))?'
const INTEGER = '"-"? ("0" | [1-9] [0-9]{0,15})'
const NUMBER_RULES: Array<[rule: string, replace: (body: string) => string]> = [
  ['integer-number-rule ::= ', body => body.replace(INTEGER, '"-"? ("0" | [1-9] [0-9]{0,14})')],
  ['fractional-number-rule ::= ', body => body + ' ([eE] [-+]? [0-9]{1,2})?']
]

/** The GBNF of node-llama-cpp's JSON schema grammar with its number rules fixed (see `NUMBER_RULES`). */
export function fixNumberRules (gbnf: string): string {
  return gbnf.split('\n').map(line => {
    const rule = NUMBER_RULES.find(([head]) => line.startsWith(head))
    if (rule === undefined) return line
    if (!line.endsWith(EXPONENT) || !line.startsWith(rule[0] + INTEGER)) throw new Error(`node-llama-cpp's number rule changed: ${line}`)
    return rule[1](line.slice(0, -EXPONENT.length))
  }).join('\n')
}

/** What node-llama-cpp's schema grammars end with: the stop trigger of a chat turn. */
const TRAILER = ' "\\n\\n\\n\\n" [\\n]*'

async function schemaGrammar (llama: Llama, schema: JsonSchema, chat: boolean): Promise<LlamaGrammar> {
  const generated = await llama.createGrammarForJsonSchema(schema as Parameters<Llama['createGrammarForJsonSchema']>[0])
  let gbnf = fixNumberRules(generated.grammar)
  // A chat keeps the stop trigger and whitespace trimming: the grammar ends the JSON with four
  // newlines, which end the turn whatever the chat template's end-of-turn text is. A text
  // completion has no triggers, so there the JSON's end is the grammar's end and only the
  // end-of-generation token may follow.
  if (!chat) gbnf = gbnf.split('\n').map(line => line.startsWith('root ::= ') && line.endsWith(TRAILER) ? line.slice(0, -TRAILER.length) : line).join('\n')
  return await llama.createGrammar({
    grammar: gbnf,
    stopGenerationTriggers: generated.stopGenerationTriggers,
    trimWhitespaceSuffix: generated.trimWhitespaceSuffix
  })
}

/** Distinct grammars kept per Llama instance; the least recently used one goes first. */
const CACHE_SIZE = 32

const caches = new WeakMap<Llama, Map<string, Promise<LlamaGrammar>>>()

/**
 * The grammar enforcing `format` (its schema already checked by `parseResponseFormat`).
 * `json_object` uses llama.cpp's JSON grammar, whose root is an object, as OpenAI's mode is.
 */
export async function grammarFor (llama: Llama, format: ResponseFormat, use: 'chat' | 'completion'): Promise<LlamaGrammar> {
  const key = format.type === 'json_object' ? 'json' : `${use} ${JSON.stringify(format.grammarSchema)}`
  let cache = caches.get(llama)
  if (cache === undefined) {
    cache = new Map()
    caches.set(llama, cache)
  }
  let grammar = cache.get(key)
  if (grammar !== undefined) {
    // Re-inserted: a Map iterates in insertion order, so the first key is the least recently used.
    cache.delete(key)
  } else {
    grammar = format.type === 'json_object' ? llama.getGrammarFor('json') : schemaGrammar(llama, format.grammarSchema, use === 'chat')
    // A schema the checks let through but node-llama-cpp cannot turn into a grammar is still the request's fault.
    grammar = grammar.catch((err: unknown) => {
      cache?.delete(key)
      throw new BadRequestError(`response_format: the schema cannot be turned into a grammar: ${(err as Error).message}`, 'response_format', 'unsupported_parameter')
    })
  }
  cache.set(key, grammar)
  if (cache.size > CACHE_SIZE) cache.delete(cache.keys().next().value as string)
  return await grammar
}
