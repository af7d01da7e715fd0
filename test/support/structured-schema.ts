import { Ajv } from 'ajv'

/**
 * The structured-output tests' schema, in OpenAI's strict-mode shape: every property required,
 * no others. Strings and arrays are bounded so the grammar closes the JSON within a known number
 * of tokens, even on a random-weight model.
 */
export const SCHEMA = {
  type: 'object',
  properties: {
    color: { type: 'string', enum: ['red', 'green', 'blue'] },
    count: { type: 'integer' },
    tags: { type: 'array', items: { type: 'string', maxLength: 12 }, maxItems: 3 }
  },
  required: ['color', 'count', 'tags'],
  additionalProperties: false
} as const

export const validate = new Ajv({ strict: true }).compile(SCHEMA)
