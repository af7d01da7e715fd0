/** JSON schemas of the inspection API. Response schemas also make serialization fast. */
const obj = { type: 'object', additionalProperties: true } as const

export const peerSchema = {
  $id: 'Peer',
  type: 'object',
  required: ['id', 'name', 'status', 'lastSeen', 'rttMs', 'addresses', 'groups', 'resources', 'models'],
  properties: {
    id: { type: 'string' },
    name: { type: 'string' },
    status: { type: 'string', enum: ['alive', 'suspect', 'dead', 'left', 'pending'] },
    lastSeen: { type: ['string', 'null'] },
    rttMs: { type: ['number', 'null'] },
    addresses: { type: 'array', items: { type: 'string' } },
    groups: { type: 'array', items: { type: 'string' } },
    connected: { type: 'boolean' },
    version: { type: ['string', 'null'] },
    snapshotAt: { type: ['string', 'null'] },
    load: { type: ['object', 'null'], properties: { active: { type: 'integer' }, queued: { type: 'integer' } } },
    labels: { type: 'object', additionalProperties: { type: 'string' } },
    trust: { type: 'string', enum: ['member', 'pending', 'denied', 'none'] },
    servesPeers: { type: 'boolean' },
    /** Set on `/api/node` and `/api/peers/:id` when two processes run as this peer id (a copied data dir). */
    duplicateIdentity: {
      type: ['object', 'null'],
      properties: {
        peer: { type: 'string' },
        incarnations: { type: 'array', items: { type: 'number' } },
        self: { type: 'boolean' },
        evidence: { type: 'array', items: { type: 'string' } },
        reportedBy: { type: 'array', items: { type: 'string' } },
        since: { type: 'number' },
        lastEvidenceAt: { type: 'number' }
      }
    },
    resources: {
      type: ['object', 'null'],
      additionalProperties: true,
      properties: {
        cpu: obj,
        memory: obj,
        disk: obj,
        gpus: { type: 'array', items: obj },
        llamacpp: { type: 'array', items: obj },
        uptimeSec: { type: 'number' },
        platform: { type: 'string' },
        arch: { type: 'string' }
      }
    },
    models: {
      type: 'array',
      items: {
        type: 'object',
        properties: {
          name: { type: 'string' },
          sizeBytes: { type: 'number' },
          architecture: { type: ['string', 'null'] },
          quantization: { type: ['string', 'null'] },
          parameterCount: { type: ['number', 'null'] },
          contextLength: { type: ['number', 'null'] },
          fingerprint: { type: 'string' },
          state: { type: 'string' }
        }
      }
    }
  }
} as const

export const peerIdParams = {
  type: 'object',
  required: ['id'],
  properties: { id: { type: 'string', minLength: 1, maxLength: 128, pattern: '^[A-Za-z0-9]+$' } }
} as const
