/**
 * Finds stop sequences in streamed text, across chunk boundaries.
 *
 * - The Anthropic API reports *which* stop sequence ended a message (`stop_reason:
 *   "stop_sequence"`, `stop_sequence`), which OpenAI-shaped engine output cannot tell, so the
 *   Messages API matches stops itself, whichever engine generates.
 * - The embedded engine's `/v1/completions` matches stops with it too: node-llama-cpp's
 *   `LlamaCompletion` matches its `customStopTriggers` on tokens detokenized one at a time, which
 *   drops the leading space of SentencePiece tokens, so a stop holding a space never matched and
 *   a stop inside a token cut the text before it without its spaces ("l^ his", stop "is" → "l^h").
 */
export interface StopScan {
  /** Text that is safe to send: it holds no stop sequence nor the start of one. */
  emit: string
  /** The stop sequence that matched; generation should end here. */
  stop?: string
}

/**
 * Holds back the shortest tail that could still become a stop sequence, so a client never sees
 * part of one; the matched sequence itself is never emitted (as Anthropic and OpenAI both do).
 */
export class StopScanner {
  private buf = ''
  private readonly stops: string[]

  constructor (stops: readonly string[]) {
    this.stops = stops.filter(s => s.length > 0)
  }

  /** Adds generated text; once `stop` is set, later calls are not expected. */
  push (text: string): StopScan {
    if (this.stops.length === 0) return { emit: text }
    this.buf += text
    let at = -1
    let which: string | undefined
    for (const s of this.stops) {
      const i = this.buf.indexOf(s)
      if (i !== -1 && (at === -1 || i < at)) { at = i; which = s }
    }
    if (which !== undefined) {
      const emit = this.buf.slice(0, at)
      this.buf = ''
      return { emit, stop: which }
    }
    const keep = this.heldTail()
    const emit = this.buf.slice(0, this.buf.length - keep)
    this.buf = this.buf.slice(this.buf.length - keep)
    return { emit }
  }

  /** The text held back at the end of generation (no stop matched). */
  flush (): string {
    const rest = this.buf
    this.buf = ''
    return rest
  }

  /** Length of the longest tail of the buffer that is a proper prefix of a stop sequence. */
  private heldTail (): number {
    let best = 0
    for (const s of this.stops) {
      for (let k = Math.min(s.length - 1, this.buf.length); k > best; k--) {
        if (this.buf.endsWith(s.slice(0, k))) { best = k; break }
      }
    }
    return best
  }
}
