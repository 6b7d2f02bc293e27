#!/usr/bin/env node
// Explain an image with a model written by `onnx-gradcam export`, in Node.js:
//
//   node explain.mjs explain.onnx photo.jpg -o overlay.png [--target K] [--alpha 0.5]
//   node explain.mjs explain.onnx --tensor input.npy --cam-npy cam.npy   (a preprocessed batch)
//
// The image is decoded in pure JavaScript (pngjs, jpeg-js), resized and normalised as the
// model's metadata says, and the heatmap is drawn over the original image.
import { readFileSync, writeFileSync } from 'node:fs';
import { extname } from 'node:path';
import { parseArgs } from 'node:util';

import jpeg from 'jpeg-js';
import * as ort from 'onnxruntime-node';
import { PNG } from 'pngjs';

import { exportInfo, explain, labelOf, overlay, preprocess, readMetadata, topClass } from '../common/onnx-gradcam.mjs';

const USAGE = 'usage: node explain.mjs MODEL.onnx (IMAGE [-o overlay.png] | --tensor input.npy) ' +
  '[--target K] [--alpha A] [--cam-npy cam.npy] [--json]';

function decodeImage(path) {
  const bytes = readFileSync(path);
  const ext = extname(path).toLowerCase();
  if (ext === '.png') {
    const png = PNG.sync.read(bytes);
    return { rgba: png.data, width: png.width, height: png.height };
  }
  if (ext === '.jpg' || ext === '.jpeg') {
    const img = jpeg.decode(bytes, { useTArray: true, formatAsRGBA: true });
    return { rgba: img.data, width: img.width, height: img.height };
  }
  throw new Error(`${path}: only .png and .jpg/.jpeg are decoded here`);
}

function encodePng(path, rgba, width, height) {
  const png = new PNG({ width, height });
  png.data = Buffer.from(rgba.buffer, rgba.byteOffset, rgba.byteLength);
  writeFileSync(path, PNG.sync.write(png));
}

/** A little-endian float32 .npy file → { data, dims }. */
function readNpy(path) {
  const buf = readFileSync(path);
  if (buf.toString('latin1', 1, 6) !== 'NUMPY') throw new Error(`${path}: not a .npy file`);
  const major = buf[6];
  const headerLength = major === 1 ? buf.readUInt16LE(8) : buf.readUInt32LE(8);
  const start = major === 1 ? 10 : 12;
  const header = buf.toString('latin1', start, start + headerLength);
  if (!header.includes("'descr': '<f4'") || header.includes("'fortran_order': True")) {
    throw new Error(`${path}: expected a C-ordered float32 array`);
  }
  const dims = header.match(/'shape': \(([^)]*)\)/)[1].split(',').filter((s) => s.trim()).map(Number);
  const body = buf.subarray(start + headerLength);
  const data = new Float32Array(body.buffer.slice(body.byteOffset, body.byteOffset + body.byteLength));
  return { data, dims };
}

function writeNpy(path, data, dims) {
  let header = `{'descr': '<f4', 'fortran_order': False, 'shape': (${dims.join(', ')}${dims.length === 1 ? ',' : ''}), }`;
  header += ' '.repeat(63 - ((10 + header.length) % 64)) + '\n';
  const prefix = Buffer.alloc(10);
  prefix.write('\x93NUMPY', 0, 'latin1');
  prefix[6] = 1; prefix[7] = 0;
  prefix.writeUInt16LE(header.length, 8);
  writeFileSync(path, Buffer.concat([prefix, Buffer.from(header, 'latin1'),
    Buffer.from(data.buffer, data.byteOffset, data.byteLength)]));
}

async function main() {
  const { values, positionals } = parseArgs({
    allowPositionals: true,
    options: {
      output: { type: 'string', short: 'o' }, tensor: { type: 'string' },
      target: { type: 'string' }, alpha: { type: 'string', default: '0.5' },
      'cam-npy': { type: 'string' }, json: { type: 'boolean', default: false },
      help: { type: 'boolean', short: 'h', default: false },
    },
  });
  const [modelPath, imagePath] = positionals;
  if (values.help || !modelPath || (!imagePath && !values.tensor)) {
    console.log(USAGE);
    process.exit(values.help ? 0 : 2);
  }
  const bytes = readFileSync(modelPath);
  const info = exportInfo(readMetadata(bytes));
  // logSeverityLevel 3: onnxruntime warns that the optional `target` (an initializer) is an input
  const session = await ort.InferenceSession.create(bytes, { logSeverityLevel: 3 });
  const target = values.target === undefined ? -1 : Number.parseInt(values.target, 10);

  let input, image = null;
  if (values.tensor) {
    input = readNpy(values.tensor);
  } else {
    image = decodeImage(imagePath);
    input = preprocess(image.rgba, image.width, image.height, info.preprocessing);
  }
  const result = await explain(ort, session, input.data, input.dims, target, info.scoreOutput);
  const classes = result.scores.length / input.dims[0];
  const top = topClass(result.scores.subarray(0, classes), info);
  if (values['cam-npy']) writeNpy(values['cam-npy'], result.cam, result.camDims);
  if (image && values.output) {
    const [, camH, camW] = result.camDims;
    const pixels = overlay(image.rgba, image.width, image.height, result.cam.subarray(0, camH * camW),
                           camW, camH, Number(values.alpha));
    encodePng(values.output, pixels, image.width, image.height);
  }
  const summary = { top: top.index, label: top.label, score: top.score, target: result.target,
                    targetLabel: labelOf(result.target, info), method: info.method,
                    cam: result.camDims, overlay: values.output ?? null };
  if (values.json) {
    console.log(JSON.stringify(summary));
  } else {
    console.log(`top class ${top.index} (${top.label}), score ${top.score.toFixed(4)}; ` +
                `${info.method} map of class ${result.target} (${summary.targetLabel})` +
                (image && values.output ? `; wrote ${values.output}` : ''));
  }
}

main().catch((err) => {
  console.error(`error: ${err.message}`);
  process.exit(1);
});
