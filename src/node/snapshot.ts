import type { ValidateFunction } from 'ajv'
import { compileSchema } from '../p2p/index.js'
import type { ModelFile, NodeResources } from './resources/index.js'
import type { Deployment } from './deployments.js'
import { TRANSFER_ROWS_SCHEMA, type TransferRow } from './transfers.js'

/** A model as peers see it in a snapshot. */
export interface ModelSummary {
  name: string
  sizeBytes: number
  architecture: string | null
  quantization: string | null
  parameterCount: number | null
  contextLength: number | null
  fingerprint: string
  /** `loaded` when an engine holds it in memory, else `on_disk`. */
  state: 'loaded' | 'on_disk' | 'loading'
  /** Loaded for a deployment (a replica), not on demand. */
  pinned?: boolean
  /** The peer this node pulled the file from, and when (absent for files it had itself). */
  source?: { peer: string, at: string, fingerprint: string }
  /** A split replica this node heads (issue 16): each node's layers, the head first. */
  shards?: Array<{ nodeId: string, layers: [number, number] | null }>
}

/**
 * The content of a gossiped snapshot (membership message `snap`, field `data`), version 1.
 * Extra fields are allowed so newer nodes can add to it without older ones dropping it.
 */
export interface NodeSnapshot {
  version: string
  resources: NodeResources
  models: ModelSummary[]
  api: { port: number } | null
  labels?: Record<string, string>
  /** False when the node serves its own clients only (allowRemote off): peers do not route to it. */
  servesPeers?: boolean
  /** Every deployment this node knows (replicated by gossip, last writer wins). */
  deployments?: Deployment[]
  /** Peer ids this node sees run as two processes (a copied data dir): so the owner of one learns it. */
  duplicateIds?: string[]
  /** This node's model pulls and loads in progress, and those finished in the last minute (transfers.ts). */
  transfers?: TransferRow[]
}

const num = { type: 'number' }
const str = { type: 'string', maxLength: 512 }
const nullableStr = { type: ['string', 'null'], maxLength: 512 }
const nullableNum = { type: ['number', 'null'] }

const schema = {
  type: 'object',
  required: ['version', 'resources', 'models'],
  properties: {
    version: str,
    api: { type: ['object', 'null'], properties: { port: { type: 'integer', minimum: 0, maximum: 65535 } } },
    resources: {
      type: 'object',
      required: ['cpu', 'memory', 'disk', 'gpus', 'llamacpp'],
      properties: {
        uptimeSec: num,
        platform: str,
        arch: str,
        cpu: { type: 'object', required: ['cores'], properties: { model: str, cores: num, physicalCores: num, usagePercent: num, speedGHz: num, loadAvg: { type: 'array', maxItems: 3, items: num } } },
        memory: { type: 'object', required: ['totalBytes'], properties: { totalBytes: num, usedBytes: num, availableBytes: num, modelBudgetBytes: num, rpcServerBytes: num } },
        disk: { type: 'object', properties: { totalBytes: num, availableBytes: num } },
        gpus: {
          type: 'array',
          maxItems: 64,
          items: { type: 'object', required: ['index', 'name', 'vendor', 'totalMemoryBytes'], properties: { index: num, name: str, vendor: str, totalMemoryBytes: num, usedMemoryBytes: num } }
        },
        llamacpp: { type: 'array', maxItems: 32, items: { type: 'object', required: ['path', 'backend'], properties: { path: str, backend: str, version: str } } }
      }
    },
    servesPeers: { type: 'boolean' },
    labels: { type: 'object', maxProperties: 64, additionalProperties: { type: 'string', maxLength: 128 } },
    duplicateIds: { type: 'array', maxItems: 64, items: { type: 'string', maxLength: 128 } },
    transfers: TRANSFER_ROWS_SCHEMA,
    deployments: {
      type: 'array',
      maxItems: 1024,
      items: {
        type: 'object',
        required: ['model', 'replicas', 'group', 'updatedAt', 'origin', 'deleted'],
        properties: {
          model: { type: 'string', minLength: 1, maxLength: 256 },
          replicas: { type: 'integer', minimum: 1, maximum: 1024 },
          group: { type: 'string', minLength: 1, maxLength: 64 },
          strategy: { type: 'string', maxLength: 32 },
          constraints: { type: 'object' },
          fingerprint: { type: 'string', pattern: '^[0-9a-f]{64}$' },
          updatedAt: { type: 'integer', minimum: 0 },
          origin: { type: 'string', maxLength: 128 },
          deleted: { type: 'boolean' },
          /** The origin's signature (deployment-record.ts); checked when merged, refused and audited when missing. */
          sig: { type: 'string', maxLength: 256 }
        }
      }
    },
    models: {
      type: 'array',
      maxItems: 1024,
      items: {
        type: 'object',
        required: ['name', 'sizeBytes', 'fingerprint'],
        properties: {
          name: { type: 'string', minLength: 1, maxLength: 256 },
          sizeBytes: num,
          architecture: nullableStr,
          quantization: nullableStr,
          parameterCount: nullableNum,
          contextLength: nullableNum,
          fingerprint: str,
          state: { enum: ['loaded', 'on_disk', 'loading'] },
          pinned: { type: 'boolean' },
          source: { type: 'object', required: ['peer', 'at', 'fingerprint'], properties: { peer: str, at: str, fingerprint: str } },
          shards: {
            type: 'array',
            maxItems: 16,
            items: {
              type: 'object',
              required: ['nodeId', 'layers'],
              properties: { nodeId: { type: 'string', maxLength: 128 }, layers: { anyOf: [{ type: 'null' }, { type: 'array', minItems: 2, maxItems: 2, items: { type: 'integer', minimum: 0, maximum: 100000 } }] } }
            }
          }
        }
      }
    }
  }
}

let validator: ValidateFunction<NodeSnapshot> | undefined

/** Validates a peer's snapshot content at the boundary; compiled once. */
export function isNodeSnapshot (data: unknown): data is NodeSnapshot {
  validator ??= compileSchema<NodeSnapshot>(schema)
  return validator(data)
}

export function summarizeModel (m: ModelFile, state: ModelSummary['state'] = 'on_disk', pinned = false): ModelSummary {
  return {
    ...(pinned ? { pinned } : {}),
    name: m.name,
    sizeBytes: m.sizeBytes,
    architecture: m.architecture,
    quantization: m.quantization,
    parameterCount: m.parameterCount,
    contextLength: m.contextLength,
    fingerprint: m.fingerprint,
    ...(m.source != null ? { source: m.source } : {}),
    state
  }
}
