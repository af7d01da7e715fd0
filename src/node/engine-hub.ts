import { EventEmitter } from 'node:events'
import { BadRequestError, ModelNotFoundError, ShepherdError } from '../errors.js'
import { createLogger } from '../logger.js'
import { Admission, LOCAL_SOURCE } from './admission.js'
import type { Engine, EngineModel } from './engines/index.js'
import { JsonPayload, type InferenceCall, type InferenceReply } from './inference-call.js'

/** A model this node can serve, with the engine that serves it. */
export interface LocalModel extends EngineModel {
  engine: string
  engineKind: Engine['kind']
}

export interface EngineHubOptions {
  engines: Engine[]
  /** Requests this node runs at once (local and from peers together). */
  maxConcurrency: number
  /** Requests that may wait for a turn before new ones are refused with 429. */
  maxQueue: number
}

export interface EngineHubEvents {
  change: []
}

/**
 * The engines of this node behind one door: which models it serves, and the one place where a
 * request (from the local API or from a peer) is admitted and dispatched to an engine.
 */
export class EngineHub extends EventEmitter<EngineHubEvents> {
  readonly admission: Admission
  private readonly log = createLogger('node:engines')
  readonly engines: Engine[] = []

  constructor (opts: EngineHubOptions) {
    super()
    this.admission = new Admission(opts.maxConcurrency, opts.maxQueue)
    for (const e of opts.engines) this.add(e)
  }

  /** Removes (and closes) an engine, e.g. a llama-server process started by a command. */
  async remove (engine: Engine): Promise<void> {
    const i = this.engines.indexOf(engine)
    if (i < 0) return
    this.engines.splice(i, 1)
    await engine.close()
    this.emit('change')
  }

  /** The default keep-alive of every engine that unloads idle models (`update_config keepAliveMs`). */
  setKeepAlive (ms: number): void {
    for (const e of this.engines) e.setKeepAlive?.(ms)
  }

  /** Adds an engine (engines that need the resource scan, such as llama-server, come later). */
  add (engine: Engine): void {
    this.engines.push(engine)
    engine.on('change', () => { this.emit('change') })
    this.emit('change')
  }

  /** Every model served here; when two engines offer one name, the first engine wins. */
  models (): LocalModel[] {
    const seen = new Map<string, LocalModel>()
    for (const engine of this.engines) {
      let list: EngineModel[]
      try {
        list = engine.listModels()
      } catch (err) {
        this.log.warn('engine could not list its models', { engine: engine.id, err })
        continue
      }
      for (const m of list) {
        if (!seen.has(m.id)) seen.set(m.id, { ...m, engine: engine.id, engineKind: engine.kind })
      }
    }
    return [...seen.values()]
  }

  engineFor (model: string): Engine | undefined {
    for (const engine of this.engines) {
      if (engine.listModels().some(m => m.id === model)) return engine
    }
    return undefined
  }

  has (model: string): boolean {
    return this.engineFor(model) != null
  }

  /** In-flight and waiting requests, for the gossiped load figure. */
  load (): { active: number, queued: number } {
    return { active: this.admission.active, queued: this.admission.queued }
  }

  /**
   * Runs one request on the local engine that serves its model. The admission slot is held until
   * a stream is fully consumed or abandoned. `source` (a peer id, or this node's own clients) is
   * who gets a fair share of the slots.
   */
  async run (call: InferenceCall, signal: AbortSignal, source: string = LOCAL_SOURCE): Promise<InferenceReply> {
    const engine = this.engineFor(call.model)
    if (engine == null) throw new ModelNotFoundError(call.model)
    const release = await this.admission.acquire(signal, source)
    try {
      const reply = await this.dispatch(engine, call, signal)
      if (reply.kind === 'result') {
        release()
        return reply
      }
      if (reply.kind === 'stream') return { kind: 'stream', chunks: holdUntilDone(reply.chunks, release) }
      return { ...reply, body: holdUntilDone(reply.body, release) }
    } catch (err) {
      release()
      throw err
    }
  }

  private async dispatch (engine: Engine, call: InferenceCall, signal: AbortSignal): Promise<InferenceReply> {
    switch (call.op) {
      case 'chat':
        if (call.stream) return { kind: 'stream', chunks: payloads(await primed(engine.chatStream(call.body, { signal }))) }
        return { kind: 'result', data: JsonPayload.of(await engine.chat(call.body, { signal })) }
      case 'completion':
        if (call.stream) return { kind: 'stream', chunks: payloads(await primed(engine.completionStream(call.body, { signal }))) }
        return { kind: 'result', data: JsonPayload.of(await engine.completion(call.body, { signal })) }
      case 'embeddings':
        return { kind: 'result', data: JsonPayload.of(await engine.embeddings(call.body, { signal })) }
      case 'passthrough': {
        const pass = engine.passthrough
        if (pass == null || engine.supportsPassthrough?.(call.path) !== true) {
          throw new ShepherdError(`The host of '${call.model}' does not serve ${call.path}`, { code: 'unsupported_endpoint', status: 404 })
        }
        const res = await pass.call(engine, { method: call.method, path: call.path, headers: call.headers, body: call.bytes, signal })
        return { kind: 'passthrough', status: res.status, headers: res.headers, body: res.body }
      }
      default:
        throw new BadRequestError(`unknown operation '${String((call as { op: unknown }).op)}'`)
    }
  }

  async close (): Promise<void> {
    await Promise.allSettled(this.engines.map(async e => { await e.close() }))
  }
}

/**
 * Pulls the first item before returning, so errors that happen before generation starts
 * (unknown model, bad parameter, load failure) surface as a rejected call, not a broken stream.
 */
async function primed<T> (iterable: AsyncIterable<T>): Promise<AsyncIterable<T>> {
  const it = iterable[Symbol.asyncIterator]()
  const first = await it.next()
  return {
    [Symbol.asyncIterator] () {
      let usedFirst = false
      return {
        async next () {
          if (!usedFirst) { usedFirst = true; return first }
          return await it.next()
        },
        async return (value?: unknown) {
          await it.return?.(value)
          return { done: true, value: undefined }
        }
      }
    }
  }
}

/** Engine chunks as payloads: serialized once, where they leave this node (relay or HTTP). */
async function * payloads (chunks: AsyncIterable<object>): AsyncGenerator<JsonPayload> {
  for await (const c of chunks) yield JsonPayload.of(c)
}

async function * holdUntilDone<T> (source: AsyncIterable<T>, release: () => void): AsyncGenerator<T> {
  try {
    yield * source
  } finally {
    release()
  }
}
