import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import { canonicalFlag, mergeLlamaServerArgs } from '../../../src/node/engines/llama-args.js'

const NODE = ['--model', '/m/x.gguf', '--alias', 'x', '--host', '127.0.0.1', '--port', '4000', '--threads', '2', '--ctx-size', '4096', '--parallel', '2', '--n-gpu-layers', '999']

describe('mergeLlamaServerArgs (the node\'s flags win)', () => {
  it('drops every extra flag the node set, with its value, in any spelling', () => {
    const merged = mergeLlamaServerArgs(NODE, ['--ctx-size', '999999999', '-np', '512', '-t', '512', '-ngl', '0', '--gpu-layers', '3', '--host', '0.0.0.0', '--port=80', '-m', '/etc/passwd', '--temp', '0.5', '--jinja'])
    assert.deepEqual(merged, [...NODE, '--temp', '0.5', '--jinja'])
  })

  it('drops the flags the node always owns even when its own line lacks them', () => {
    assert.deepEqual(mergeLlamaServerArgs(['--model', 'a'], ['--api-key', 'k', '-c', '8', '--alias', 'y', '--jinja']), ['--model', 'a', '--jinja'])
  })

  it('keeps a flag the node did not set (no GPU layers on a CPU build)', () => {
    assert.deepEqual(mergeLlamaServerArgs(['--model', 'a'], ['-ngl', '5']), ['--model', 'a', '-ngl', '5'])
  })

  it('drops an extra --no-jinja (or a repeated --jinja) once the node starts llama-server with --jinja (tool calling needs it)', () => {
    assert.deepEqual(mergeLlamaServerArgs([...NODE, '--jinja'], ['--no-jinja', '--jinja', '--temp', '0.5']), [...NODE, '--jinja', '--temp', '0.5'])
  })

  it('keeps negative numbers as values', () => {
    assert.deepEqual(mergeLlamaServerArgs(['--model', 'a'], ['-n', '-1']), ['--model', 'a', '-n', '-1'])
  })

  it('reads aliases and --flag=value forms', () => {
    assert.equal(canonicalFlag('--ctx-size=5'), '-c')
    assert.equal(canonicalFlag('--gpu-layers'), '-ngl')
    assert.equal(canonicalFlag('--temp'), '--temp')
  })
})
