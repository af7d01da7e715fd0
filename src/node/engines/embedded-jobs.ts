/**
 * How one request becomes a generation job on a model the embedded engine loaded: the chat
 * template, tools (offered or forced by grammar), structured output, stop sequences, token
 * budget and sampling, checked before a sequence is taken; the job then runs on a sequence and
 * pushes its pieces. The engine (src/node/engines/embedded.ts) keeps loading, slots and shapes.
 */
import { randomInt } from 'node:crypto'
import type { ChatHistoryItem, ChatWrapper, LlamaChat, LlamaChatResponseChunk, LlamaContext, LlamaContextSequence, LlamaEmbeddingContext, LlamaModel, Token } from 'node-llama-cpp'
import { BadRequestError } from '../../errors.js'
import type { ModelEntry } from './embedded.js'
import { grammarFor } from './json-grammar.js'
import { tokenBiasOption } from './logit-bias.js'
import { nlc } from './node-llama-lib.js'
import type { ParsedChatRequest, ParsedCompletionRequest, SamplingParams } from './openai-request.js'
import type { GenerationResult } from './openai-response.js'
import type { ChatCompletionChunkDelta, ChatCompletionChunkToolCall, FinishReason } from './openai-types.js'
import type { SlotPool } from './slot-pool.js'
import { StopScanner } from './stop-scanner.js'
import { chatHistory, chatModelFunctions, forcedCallInstructions, forcedCallSchema, forcedIsArray, ToolCallCollector, type ParamsChunk } from './tool-calls.js'

/** A model loaded by the embedded engine, with its context and request slots. */
export interface LoadedModel {
  name: string
  entry: ModelEntry
  model: LlamaModel
  context: LlamaContext
  /** Resolved on the first chat request: matching a Jinja template to a wrapper takes 0.3 s or more. */
  chatWrapper?: ChatWrapper
  pool: SlotPool<LlamaContextSequence>
  embedding?: Promise<{ context: LlamaEmbeddingContext, contextSize: number }>
  /** Weights plus context state. */
  sizeBytes: number
}

/**
 * A request checked against its model (prompt tokenized, token budget known) and ready to run
 * on a sequence; `push` receives the pieces of a streamed answer.
 */
export interface GenerationJob<Piece> {
  run: (seq: LlamaContextSequence, signal: AbortSignal, push?: (piece: Piece) => void) => Promise<GenerationResult>
}

/** OpenAI's finish reason for node-llama-cpp's stop reason. */
export function finishReasonOf (stopReason: string): FinishReason {
  return stopReason === 'maxTokens' ? 'length' : 'stop'
}

/** The token node-llama-cpp puts before an input, mirroring its tokenizer rules. */
export function beginningToken (model: LlamaModel): Token | null {
  const type = model.vocabularyType
  if (type === nlc().LlamaVocabularyType.rwkv || type === nlc().LlamaVocabularyType.ugm) return null
  if (type === nlc().LlamaVocabularyType.wpm) return model.tokens.bos
  return model.tokens.shouldPrependBosToken ? model.tokens.bos : null
}

/** Tokens the request may generate: what it asked for, capped by the context left. */
export function tokenBudget (lm: LoadedModel, promptTokens: number, requested: number | undefined, param: string): number {
  const contextSize = lm.context.contextSize
  const room = contextSize - promptTokens - 1
  if (room < 1) {
    throw new BadRequestError(`The prompt has ${promptTokens} tokens; this model's context holds ${contextSize}`, param, 'context_length_exceeded')
  }
  return Math.min(requested ?? room, room)
}

/** node-llama-cpp's sampling options for OpenAI's. */
export function samplingOptions (s: SamplingParams, maxTokens: number): {
  temperature: number
  topP: number
  topK: number
  minP: number
  seed: number
  maxTokens: number
  customStopTriggers?: string[]
  repeatPenalty: false | { penalty: number, frequencyPenalty: number, presencePenalty: number }
} {
  const penalize = s.frequencyPenalty !== 0 || s.presencePenalty !== 0 || s.repeatPenalty !== 1
  return {
    temperature: s.temperature,
    topP: s.topP,
    topK: s.topK,
    minP: s.minP,
    // Without a seed node-llama-cpp samples with a fixed one; the OpenAI API varies per request.
    seed: s.seed ?? randomInt(2 ** 32),
    maxTokens,
    ...(s.stop.length > 0 ? { customStopTriggers: s.stop } : {}),
    // node-llama-cpp penalizes repeats by default; the OpenAI API does not unless asked.
    repeatPenalty: penalize ? { penalty: s.repeatPenalty, frequencyPenalty: s.frequencyPenalty, presencePenalty: s.presencePenalty } : false
  }
}

/** A chat request checked against its model (template, tools, grammar, budget) and ready to run on a sequence. */
export async function prepareChat (lm: LoadedModel, req: ParsedChatRequest): Promise<GenerationJob<ChatCompletionChunkDelta>> {
  // `tool_choice: "none"` offers no tools; "required" or a named function forces a call by grammar.
  const tools = req.toolChoice?.type === 'none' ? undefined : req.tools
  const choice = req.toolChoice
  const forced = tools !== undefined && choice !== undefined && (choice.type === 'required' || choice.type === 'function') ? choice : undefined
  const parallel = req.parallelToolCalls ?? true
  let history = chatHistory(req.messages)
  if (forced !== undefined && tools !== undefined) {
    const instructions = forcedCallInstructions(tools, forced, parallel)
    const first = history[0]
    history = first?.type === 'system'
      ? [{ type: 'system', text: `${first.text}\n\n${instructions}` }, ...history.slice(1)]
      : [{ type: 'system', text: instructions }, ...history]
  }
  // Offered through the model's own template (node-llama-cpp's function calling) when not forced.
  const functions = tools !== undefined && forced === undefined ? chatModelFunctions(tools) : undefined
  // node-llama-cpp takes functions or a grammar, never both: rather than drop the format silently, say so.
  if (functions !== undefined && req.responseFormat !== undefined) {
    throw new BadRequestError('response_format together with tools the model may call (tool_choice "auto") is not supported by the embedded engine; use tool_choice "none" for the structured answer, or "required" for a call', 'response_format', 'unsupported_parameter')
  }
  // A trailing assistant message (or tool results) is a prefix the model continues; otherwise a new turn opens.
  const rendered: ChatHistoryItem[] = history.at(-1)?.type === 'model' ? history : [...history, { type: 'model', response: [] }]
  lm.chatWrapper ??= nlc().resolveChatWrapper(lm.model)
  const chatWrapper = lm.chatWrapper
  const promptTokens = chatWrapper.generateContextState({ chatHistory: rendered, availableFunctions: functions, documentFunctionParams: true })
    .contextText.tokenize(lm.model.tokenizer).length
  const { customStopTriggers, ...baseSampling } = samplingOptions(req.sampling, tokenBudget(lm, promptTokens, req.sampling.maxTokens, 'messages'))
  const sampling = {
    ...baseSampling,
    // A stop sequence would cut a forced call's JSON short.
    ...(customStopTriggers !== undefined && forced === undefined ? { customStopTriggers } : {}),
    ...tokenBiasOption(nlc().TokenBias, lm.model, req.sampling.logitBias)
  }
  // Structured output or a forced call: the grammar only lets through text that parses (and fits the schema).
  const grammar = forced !== undefined && tools !== undefined
    ? await grammarFor(lm.model.llama, { type: 'json_schema', name: 'tool_calls', schema: {}, strict: true, grammarSchema: forcedCallSchema(tools, forced, parallel) }, 'chat')
      .catch((err: unknown) => { throw err instanceof BadRequestError ? new BadRequestError(err.message.replace(/^response_format/, 'tools'), 'tools', err.code) : err })
    : req.responseFormat === undefined ? undefined : await grammarFor(lm.model.llama, req.responseFormat, 'chat')
  return {
    run: async (seq, signal, push) => {
      const chat = new (nlc().LlamaChat)({ contextSequence: seq, chatWrapper, autoDisposeSequence: false })
      const before = seq.tokenMeter.getState()
      const collector = new ToolCallCollector(forced === undefined ? undefined : { array: forcedIsArray(forced, parallel) })
      const pushCalls = (deltas: ChatCompletionChunkToolCall[]): void => { if (deltas.length > 0) push?.({ tool_calls: deltas }) }
      // node-llama-cpp takes either a grammar or functions, never both.
      const constraint = functions !== undefined
        ? {
            functions,
            documentFunctionParams: true,
            ...(parallel ? {} : { maxParallelFunctionCalls: 1 }),
            onFunctionCallParamsChunk: (chunk: ParamsChunk) => { pushCalls(collector.params(chunk)) }
          }
        : grammar !== undefined ? { grammar } : {}
      try {
        const res = await chat.generateResponse(history, {
          ...sampling,
          ...constraint,
          signal,
          onResponseChunk: (chunk: LlamaChatResponseChunk) => {
            if (chunk.type === undefined) {
              if (collector.forced) pushCalls(collector.text(chunk.text))
              else push?.({ content: chunk.text })
            } else if (chunk.segmentType === 'thought') push?.({ reasoning_content: chunk.text })
          }
        } as Parameters<LlamaChat['generateResponse']>[1])
        const reasoning = res.fullResponse
          .map(item => typeof item !== 'string' && item.segmentType === 'thought' ? item.text : '')
          .join('')
        const { calls, deltas } = collector.finish(res.functionCalls as Array<{ functionName: string, params: unknown }> | undefined)
        pushCalls(deltas)
        const finishReason = finishReasonOf(res.metadata.stopReason)
        return {
          text: collector.forced ? '' : res.response,
          reasoning,
          finishReason: calls.length > 0 && finishReason !== 'length' ? 'tool_calls' : finishReason,
          promptTokens,
          completionTokens: seq.tokenMeter.diff(before).usedOutputTokens,
          ...(calls.length > 0 ? { toolCalls: calls } : {})
        }
      } finally {
        chat.dispose()
      }
    }
  }
}

/** A text completion checked against its model (tokens, stops, grammar, budget) and ready to run on a sequence. */
export async function prepareText (lm: LoadedModel, req: ParsedCompletionRequest): Promise<GenerationJob<string>> {
  const bos = beginningToken(lm.model)
  let tokens: Token[]
  if (typeof req.prompt === 'string') {
    tokens = lm.model.tokenize(req.prompt, false, bos !== null ? 'trimLeadingSpace' : undefined)
  } else {
    tokens = req.prompt as Token[]
    // node-llama-cpp adds the BOS itself; a client that already did would get two.
    if (bos !== null && tokens[0] === bos) tokens = tokens.slice(1)
  }
  const promptTokens = tokens.length + (bos !== null ? 1 : 0)
  // Stops are matched on the streamed text here, not by node-llama-cpp (see stop-scanner.ts).
  const { customStopTriggers: stops, ...baseSampling } = samplingOptions(req.sampling, tokenBudget(lm, promptTokens, req.sampling.maxTokens, 'prompt'))
  const sampling = { ...baseSampling, ...tokenBiasOption(nlc().TokenBias, lm.model, req.sampling.logitBias) }
  const echo = req.echo ? (typeof req.prompt === 'string' ? req.prompt : lm.model.detokenize(tokens)) : ''
  const grammar = req.responseFormat === undefined ? undefined : await grammarFor(lm.model.llama, req.responseFormat, 'completion')
  return {
    run: async (seq, signal, push) => {
      if (echo.length > 0) push?.(echo)
      const completion = new (nlc().LlamaCompletion)({ contextSequence: seq })
      const before = seq.tokenMeter.getState()
      const scanner = stops === undefined ? undefined : new StopScanner(stops)
      // Aborted when a stop sequence matched: node-llama-cpp then returns what it generated.
      const stopped = new AbortController()
      let kept = ''
      const emit = (text: string): void => {
        if (text.length === 0) return
        kept += text
        push?.(text)
      }
      try {
        const res = await completion.generateCompletionWithMeta(tokens, {
          ...sampling,
          ...(grammar !== undefined ? { grammar } : {}),
          signal: scanner === undefined ? signal : AbortSignal.any([signal, stopped.signal]),
          stopOnAbortSignal: scanner !== undefined,
          // The budget already keeps generation inside the context; no shifting, and the
          // whole prompt is kept (the default would cut one longer than 90% of the context).
          disableContextShift: true,
          contextShiftSize: 1,
          onTextChunk: text => {
            if (scanner === undefined) {
              push?.(text)
              return
            }
            if (stopped.signal.aborted) return
            const scan = scanner.push(text)
            emit(scan.emit)
            if (scan.stop !== undefined) stopped.abort()
          }
        })
        // With stopOnAbortSignal a caller's abort returns too; it must still fail the request.
        signal.throwIfAborted()
        if (scanner !== undefined && !stopped.signal.aborted) emit(scanner.flush())
        return {
          text: echo + (scanner === undefined ? res.response : kept),
          reasoning: '',
          finishReason: stopped.signal.aborted ? 'stop' : finishReasonOf(res.metadata.stopReason),
          promptTokens,
          completionTokens: seq.tokenMeter.diff(before).usedOutputTokens
        }
      } finally {
        completion.dispose()
      }
    }
  }
}
