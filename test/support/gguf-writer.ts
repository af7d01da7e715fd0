/** The GGUF writer lives in src (the GPU self-test writes a model); tests import it from here. */
export * from '../../src/node/resources/gguf-writer.js'
