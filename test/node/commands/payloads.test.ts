import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { checkPayload, LLAMACPP_ARG_RULES } from '../../../src/node/commands/index.js'
import { checkLlamacppArgs } from '../../../src/node/commands/payloads.js'
import { COMMAND_TYPES, type CommandType } from '../../../src/p2p/command-messages.js'

const valid: Array<[CommandType, unknown]> = [
  ['load_model', { model: 'tiny-chat' }],
  ['load_model', { model: 'Qwen/Qwen2.5-0.5B-Instruct-GGUF/q4_k_m' }],
  ['load_model', { model: 'Qwen2.5 7B Instruct Q4_K_M', keepAliveMs: 0 }],
  ['unload_model', { model: 'tiny-chat' }],
  ['run_llamacpp', { model: 'tiny-chat' }],
  ['run_llamacpp', { model: 'tiny-chat', args: ['-ngl', '99', '--mlock', '-b', '512', '-fa', 'on', '--temp', '0.7', '-ctk', 'q8_0'], port: 18080 }],
  ['stop_process', { pid: 4242 }],
  ['stop_process', { processId: 'llama-server:tiny-chat' }],
  ['scan_models', {}],
  ['collect_logs', {}],
  ['collect_logs', { lines: 10_000, since: 1_700_000_000_000 }],
  ['update_config', { key: 'keepAliveMs', value: 60_000 }],
  ['update_config', { key: 'maxConcurrency', value: 8 }],
  ['update_config', { key: 'routing', value: 'round-robin' }],
  ['update_config', { key: 'logLevel', value: 'debug' }]
]

const invalid: Array<[CommandType, unknown, RegExp]> = [
  ['load_model', {}, /model/],
  ['load_model', { model: '' }, /pattern/],
  ['load_model', { model: '../secrets' }, /pattern/],
  ['load_model', { model: 'a/../b' }, /pattern/],
  ['load_model', { model: '/etc/passwd' }, /pattern/],
  ['load_model', { model: 'a//b' }, /pattern/],
  ['load_model', { model: 'a/.b' }, /pattern/],
  ['load_model', { model: 'a/b/c/d/e' }, /pattern/],
  ['load_model', { model: 'x'.repeat(257) }, /pattern/],
  ['load_model', { model: 'm', keepAliveMs: -2 }, /keepAliveMs/],
  ['load_model', { model: 'm', extra: 1 }, /additional/],
  ['unload_model', { model: 7 }, /string/],
  ['run_llamacpp', { model: 'm', args: ['--model', 'other.gguf'] }, /chosen by the node/],
  ['run_llamacpp', { model: 'm', args: ['--ctx-size', '/etc/passwd'] }, /pattern/],
  ['run_llamacpp', { model: 'm', args: ['--host', '0.0.0.0'] }, /chosen by the node/],
  ['run_llamacpp', { model: 'm', args: ['--api-key', 'k'] }, /not allowed/],
  ['run_llamacpp', { model: 'm', args: ['--temp'] }, /needs a value/],
  ['run_llamacpp', { model: 'm', args: ['-b', 'lots'] }, /not a valid value/],
  // The node sizes these itself: a command cannot override them (issue 11 item 4).
  ['run_llamacpp', { model: 'm', args: ['--ctx-size', '999999999'] }, /chosen by the node/],
  ['run_llamacpp', { model: 'm', args: ['-c', '512'] }, /chosen by the node/],
  ['run_llamacpp', { model: 'm', args: ['--parallel', '512'] }, /chosen by the node/],
  ['run_llamacpp', { model: 'm', args: ['--threads', '512'] }, /chosen by the node/],
  ['run_llamacpp', { model: 'm', args: ['-tb', '512'] }, /1 to 64/],
  ['run_llamacpp', { model: 'm', args: ['-ngl', '1000'] }, /0 to 999/],
  ['run_llamacpp', { model: 'm', args: ['--temp', '99'] }, /0 to 10/],
  ['run_llamacpp', { model: 'm', args: ['-ngl', '1', '--gpu-layers', '2'] }, /more than once/],
  ['run_llamacpp', { model: 'm', args: ['--jinja', '--jinja'] }, /more than once/],
  ['run_llamacpp', { model: 'm', args: ['-fa', 'maybe'] }, /not a valid value/],
  ['run_llamacpp', { model: 'm', args: ['--ctx-size', '4096 --host'] }, /pattern/],
  ['run_llamacpp', { model: 'm', args: ['toString'] }, /not allowed/],
  ['run_llamacpp', { model: 'm', args: new Array(65).fill('--jinja') }, /more than 64/],
  ['run_llamacpp', { model: 'm', port: 80 }, /port/],
  ['stop_process', {}, /fewer than 1/],
  ['stop_process', { pid: 1 }, /pid must be >= 2/],
  ['stop_process', { pid: 5, processId: 'x' }, /more than 1/],
  ['stop_process', { processId: '../../x' }, /pattern/],
  ['stop_process', { signal: 9 }, /additional/],
  ['scan_models', { dir: '/' }, /additional/],
  ['collect_logs', { lines: 0 }, /lines/],
  ['collect_logs', { lines: 10_001 }, /lines/],
  ['collect_logs', { lines: 1.5 }, /integer/],
  ['update_config', { key: 'apiKeys', value: [] }, /tag "key"/],
  ['update_config', { key: 'dataDir', value: '/tmp' }, /tag "key"/],
  ['update_config', { value: 3 }, /required property 'key'/],
  ['update_config', { key: 'maxConcurrency', value: 0 }, /value must be >= 1/],
  ['update_config', { key: 'maxConcurrency', value: 2, also: 1 }, /additional/],
  ['update_config', { key: 'routing', value: 'fastest' }, /value must be equal to one of/],
  ['update_config', { key: 'logLevel', value: 'verbose' }, /value must be equal to one of/]
]

describe('command payload schemas', () => {
  it('has a schema for every command type', () => {
    for (const type of COMMAND_TYPES) assert.equal(typeof checkPayload(type, {}).ok, 'boolean')
  })

  for (const [type, payload] of valid) {
    it(`accepts ${type} ${JSON.stringify(payload)}`, () => {
      assert.deepEqual(checkPayload(type, payload), { ok: true })
    })
  }

  for (const [type, payload, why] of invalid) {
    it(`refuses ${type} ${JSON.stringify(payload).slice(0, 80)}`, () => {
      const res = checkPayload(type, payload)
      assert.equal(res.ok, false)
      assert.match((res as { message: string }).message, why)
    })
  }

  it('allows no llama-server flag that names a file, a host, a port or a key', () => {
    for (const flag of Object.keys(LLAMACPP_ARG_RULES)) {
      assert.doesNotMatch(flag, /model|host|port|key|file|path|lora|mmproj|slot|ssl|url|log|alias|chat-template/, flag)
    }
  })

  it('refuses --mlock from a remote issuer and allows it to the local operator', () => {
    assert.deepEqual(checkLlamacppArgs(['--mlock'], { remote: false }), { ok: true })
    const remote = checkLlamacppArgs(['-ngl', '10', '--mlock'], { remote: true })
    assert.equal(remote.ok, false)
    assert.match((remote as { message: string }).message, /only to this node's own operator/)
  })
})
