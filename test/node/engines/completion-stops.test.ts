/**
 * `/v1/completions` stop sequences on the embedded engine (issue 13). node-llama-cpp matched its
 * `customStopTriggers` on tokens detokenized one at a time, which drops a SentencePiece token's
 * leading space: a stop holding a space never matched, and a stop inside a token cut the text
 * before it without its spaces. The engine now matches stops on the streamed text itself.
 * The tiny model is SentencePiece-style (`▁` word starts), which is what showed the bug.
 */
import assert from 'node:assert/strict'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, it } from 'node:test'
import { EmbeddedEngine, type CompletionRequest } from '../../../src/node/engines/index.js'
import { StopScanner } from '../../../src/node/engines/stop-scanner.js'
import { createTinyModel } from '../../support/tiny-model.js'
import { NO_BYTE_TOKENS } from '../../support/tool-fixtures.js'

const BASE: CompletionRequest = { model: 'tiny', prompt: 'the cat sat on', temperature: 0, max_tokens: 40, logit_bias: NO_BYTE_TOKENS }

/** Stops picked from the unstopped text: each is a case the old matching got wrong. */
function stopCases (full: string): Array<{ why: string, stop: string }> {
  const space = full.indexOf(' ', 2)
  assert.ok(space > 0 && space < full.length - 3, `no inner space in ${JSON.stringify(full)}`)
  return [
    { why: 'a stop holding a space', stop: full.slice(space - 1, space + 2) },
    { why: 'a stop right after a space, inside a word token', stop: full.slice(space + 1, space + 3) },
    { why: 'a stop spanning several tokens', stop: full.slice(space - 1, space + 8) }
  ]
}

describe('completion stop sequences (embedded engine)', () => {
  let dir: string
  let engine: EmbeddedEngine
  let full: string

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'shepherd-stops-'))
    await createTinyModel(join(dir, 'tiny.gguf'))
    engine = new EmbeddedEngine({ modelsDirs: [dir], threads: 1, gpu: 'off' })
    const res = await engine.completion(BASE)
    full = res.choices[0].text
    assert.equal(res.choices[0].finish_reason, 'length', 'the unstopped text runs to max_tokens')
  })

  after(async () => {
    await engine.close()
    await rm(dir, { recursive: true, force: true })
  })

  it('ends the text right before the first stop, spaces kept', async () => {
    for (const { why, stop } of stopCases(full)) {
      const expected = full.slice(0, full.indexOf(stop))
      for (const stopParam of [stop, ['never-generated', stop]]) {
        const res = await engine.completion({ ...BASE, stop: stopParam })
        assert.equal(res.choices[0].text, expected, `${why}: ${JSON.stringify(stop)} in ${JSON.stringify(full)}`)
        assert.equal(res.choices[0].finish_reason, 'stop', why)
        assert.ok(res.usage.completion_tokens < 40, 'generation ended at the stop')
      }
    }
  })

  it('streamed: the same text, the stop never sent, even in part', async () => {
    for (const { why, stop } of stopCases(full)) {
      const expected = full.slice(0, full.indexOf(stop))
      let text = ''
      let finish: string | null = null
      for await (const chunk of engine.completionStream({ ...BASE, stop })) {
        text += chunk.choices[0]?.text ?? ''
        finish = chunk.choices[0]?.finish_reason ?? finish
        assert.ok(!text.includes(stop), `${why}: the stop was streamed`)
      }
      assert.equal(text, expected, why)
      assert.equal(finish, 'stop', why)
    }
  })

  it('a stop never generated leaves the text whole', async () => {
    const res = await engine.completion({ ...BASE, stop: ['never-generated'] })
    assert.equal(res.choices[0].text, full)
    assert.equal(res.choices[0].finish_reason, 'length')
  })

  it('echo keeps the prompt in front; a stop matches only the generated text', async () => {
    const prompt = BASE.prompt as string
    const { stop } = stopCases(full)[0]
    const res = await engine.completion({ ...BASE, echo: true, stop })
    assert.equal(res.choices[0].text, prompt + full.slice(0, full.indexOf(stop)))
  })

  it('an abort still fails the request (stop matching must not swallow it)', async () => {
    const controller = new AbortController()
    const pending = engine.completion({ ...BASE, max_tokens: 400, stop: ['never-generated'] }, { signal: controller.signal })
    setTimeout(() => { controller.abort(new Error('client gone')) }, 50)
    await assert.rejects(pending)
  })
})

describe('StopScanner', () => {
  it('matches across chunk boundaries at every split, holding back only a possible prefix', () => {
    const text = 'l^ his dog is here'
    for (const stop of ['is', ' his', 's d', 'here', 'zz']) {
      for (let cut = 0; cut <= text.length; cut++) {
        for (let cut2 = cut; cut2 <= text.length; cut2 += 3) {
          const scanner = new StopScanner([stop])
          let out = ''
          let matched: string | undefined
          for (const piece of [text.slice(0, cut), text.slice(cut, cut2), text.slice(cut2)]) {
            if (matched !== undefined) break
            const scan = scanner.push(piece)
            out += scan.emit
            matched = scan.stop
          }
          if (matched === undefined) out += scanner.flush()
          const at = text.indexOf(stop)
          assert.equal(out, at === -1 ? text : text.slice(0, at), `${stop} split at ${cut}/${cut2}`)
        }
      }
    }
  })
})
