/** The tiny test model lives in src (the GPU self-test uses it); tests import it from here. */
export * from '../../src/node/engines/tiny-model.js'
